"""torch/numpy StudentNet weights -> self-describing ONNX files in every weight format of
`edge.core.weight_formats` (`edge.export.exporter`; each format family implemented in `edge.export.formats`)."""
