"""Custom kernels. Each has a pure-PyTorch twin that defines its meaning, runs on CPU and is what ONNX
exports; a Triton version, where one exists, is chosen only on CUDA and tested against the twin."""
