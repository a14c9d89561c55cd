"""Model construction on transformers classes, kernels and FLOPs accounting."""
