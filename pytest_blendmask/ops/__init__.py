"""Operators a port may need in plain PyTorch, and what decides which one runs.

- ``deform_conv``: ``deform_conv2d``, torchvision's deformable convolution (v1 and modulated
  v2) from bilinear sampling and a matmul, for devices without a usable kernel;
- ``offset_layouts``: converters between torchvision's offset layout and seed 003's DCNv3
  layout or the Ascend NPU operator's;
- ``selection``: probing a device's kernel, choosing the implementation, and switching a
  model's deformable layers to it.
"""
