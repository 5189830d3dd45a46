"""Which deformable convolution a target runs, and switching a model's layers to it.

A port needs the fallback where the device has no kernel, as seed 003's DCNv3 port did,
and also where the kernel exists but computes its sampling positions in half precision:
torchvision's CPU kernel runs float16 inputs in float16 throughout (its CPU build has no
autocast wrapper that widens them), which at x = 100 resolves 1/16 of a pixel. Both are
found by running the kernel, not from a table of devices: ``kernel_problem`` samples a ramp
at x = 100.3 and reads the position back from the value.

An eager target chooses once, when it loads its model copy (``apply_deform_conv``), and
keeps the choice and its reason for the report; ``--bm-deform-conv torchvision|fallback``
forces one, ``auto`` (the default) lets ``select_deform_conv`` decide.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from ..dtypes import Dtype, autocast
from ..model.backbone import ModulatedDeformConvNorm
from ..precision.op_standards import dtype_of
from .deform_conv import deform_conv2d as fallback_deform_conv2d

PROBE_X = 100.3  # a position a float16 coordinate cannot hold (it becomes 100.3125)
# Worse than this and the kernel moves sampling points by more than a float32 position
# error at thousands of pixels; a float16 kernel is off by 0.0125 px here, a bfloat16 one by 0.2.
MAX_PROBE_ERROR_PX = 1e-3

DeformConv = Callable[..., Tensor]


@dataclass(frozen=True)
class DeformConvChoice:
    """The deformable convolution a target runs: ``name`` (torchvision or fallback), the op, and why."""

    name: str
    op: DeformConv
    reason: str


def kernel_problem(device: str, dtype: Dtype) -> str | None:
    """Why torchvision's ``deform_conv2d`` should not run on ``device`` in ``dtype``, or None.

    Runs it under the target's autocast on a 1x128 ramp ``x[w] = w - 100`` sampled by a 1x1
    kernel at ``w + 0.3``: output column 100 must read 0.3, and any difference is the
    sampling position's error in pixels.
    """
    dt = dtype_of(dtype)
    ramp = (torch.arange(128, dtype=torch.float32) - 100).reshape(1, 1, 1, 128)
    offset = torch.zeros(1, 2, 1, 128)
    offset[:, 1] = PROBE_X - 100
    weight = torch.ones(1, 1, 1, 1)
    try:
        with torch.inference_mode(), autocast(torch.device(device).type, dtype):
            out = torchvision_deform_conv2d(*(t.to(device, dt) for t in (ramp, offset, weight)))
    except (RuntimeError, NotImplementedError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"torchvision has no {device} deform_conv2d kernel for {dtype}: {first_line}"
    error = abs(float(out[0, 0, 0, 100]) - (PROBE_X - 100))
    if error > MAX_PROBE_ERROR_PX:
        return (f"torchvision's {device} deform_conv2d in {dtype} puts a sampling point at x={PROBE_X} "
                f"{error:.3g} px off (it computes positions in {dtype})")
    return None


def select_deform_conv(device: str, dtype: Dtype) -> DeformConvChoice:
    """torchvision's kernel unless ``kernel_problem`` finds one; then the float32-coordinate fallback."""
    problem = kernel_problem(device, dtype)
    if problem is None:
        return DeformConvChoice("torchvision", torchvision_deform_conv2d, f"torchvision's {device} kernel samples exactly in {dtype}")
    return DeformConvChoice("fallback", fallback_deform_conv2d, problem)


def choose_deform_conv(device: str, dtype: Dtype, mode: str = "auto") -> DeformConvChoice:
    """``select_deform_conv`` for ``auto``; the named implementation for ``torchvision`` or ``fallback``."""
    if mode == "auto":
        return select_deform_conv(device, dtype)
    forced = {"torchvision": torchvision_deform_conv2d, "fallback": fallback_deform_conv2d}
    if mode not in forced:
        raise ValueError(f"deform-conv mode must be auto, torchvision or fallback; got {mode!r}")
    return DeformConvChoice(mode, forced[mode], f"forced by deform-conv mode {mode!r}")


def apply_deform_conv(model: nn.Module, device: str, dtype: Dtype, mode: str = "auto") -> DeformConvChoice | None:
    """Make ``model``'s deformable layers call the chosen implementation; None when it has none (nothing probed)."""
    if not any(isinstance(module, ModulatedDeformConvNorm) for module in model.modules()):
        return None
    choice = choose_deform_conv(device, dtype, mode)
    use_deform_conv(model, choice.op)
    return choice


def use_deform_conv(model: nn.Module, op: DeformConv) -> int:
    """Make every deformable layer of ``model`` call ``op``; returns how many layers there are."""
    layers = [module for module in model.modules() if isinstance(module, ModulatedDeformConvNorm)]
    for layer in layers:
        layer.deform_conv = op
    return len(layers)
