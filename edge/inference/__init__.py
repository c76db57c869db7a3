"""Layer 5, inference: ONNX Runtime sessions, torch models behind the same interface, predicting a
folder (the Kaggle CSV), and the shipped student. The ONNX path imports no torch."""
