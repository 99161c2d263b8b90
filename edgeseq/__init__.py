"""edgeseq: PyTorch encoder-decoders to ONNX bundles, and a light runtime to run them."""

__version__ = "0.1.0"
