"""ONNX Runtime's execution providers by their short names, and the package that brings each.

Plain data, no onnxruntime import: the targets read it to explain a missing provider
while the plugin starts.
"""
from __future__ import annotations

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cann": "CANNExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
ORT_PROVIDER_PACKAGES = {
    "CANNExecutionProvider": "onnxruntime-cann",
    "CUDAExecutionProvider": "onnxruntime-gpu",
}
