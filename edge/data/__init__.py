"""Layer 2, data: dataset folders and label files (`folders`), image decoding exactly as a model card says
(`preprocess`; numpy + Pillow), and training sets decoded into tensors with augmentation (`datasets`)."""
