"""dhsa-export: Dynamic Hierarchical Sparse Attention for Gemma, exported to ONNX / TensorRT."""

__version__ = "0.3.0"
