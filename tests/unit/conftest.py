"""Shared set-up of the unit tests."""
# pytester's in-process runs drop every module first imported inside them, and torch,
# torchvision and onnxruntime crash when their C extensions are imported a second time:
# importing them here, before any run, keeps one copy shared by all runs.
import onnxruntime  # noqa: F401
import torch  # noqa: F401
import torchvision  # noqa: F401
