"""Targets: the ways to run the model, one object each (DESIGN.md "Targets").

A spec string (``cpu``, ``cpu:fp16[:force]``, ``cuda:N[:fp16[:force]|bf16]``, ``npu:N[:fp16[:force]|bf16]``,
``ort[:fp16|int8|cann|cuda]``, ``om``) becomes a ``Target`` in ``registry.parse_target``;
``base.Target`` is the interface the rest of the package uses, and each kind lives in its
own module (``eager``, ``ort``, ``om``). Nothing here imports torch, onnxruntime or
torch_npu at import time: the plugin imports this package for ``pytest --help``.
"""
from .auto import AUTO_ACCELERATORS, auto_targets, describe_targets
from .base import DEFORM_CONV_MODES, LoadContext, Need, Runner, Target, TargetRun
from .eager import parse_device
from .npu import NPU_ENV_KNOBS, NPU_INSTALL_HINT, npu_environment, probe_torch_npu
from .registry import KINDS, TARGET_FORMS, parse_target

__all__ = [
    "AUTO_ACCELERATORS", "DEFORM_CONV_MODES", "KINDS", "NPU_ENV_KNOBS", "NPU_INSTALL_HINT", "TARGET_FORMS", "LoadContext", "Need",
    "Runner", "Target", "TargetRun", "auto_targets", "describe_targets", "npu_environment", "parse_device",
    "parse_target", "probe_torch_npu",
]
