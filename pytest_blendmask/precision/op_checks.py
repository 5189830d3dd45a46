"""Operator checks: one BlendMask operator on a device in a dtype, against float64 on the CPU.

``OPERATORS`` says, per operator, how BlendMask calls it, in which dtype it runs and which
rules of ``op_standards`` judge it; ``check`` is the one driver:

1. the case's inputs are rounded to the target's dtype (what the device holds), then cast
   to the dtype the operator runs in: the target's for the network's operators, float32
   for the host post-processing, which ``BlendMask.postprocess`` runs in float32 whatever
   the device produced (``runs_in``);
2. the operator runs on the device under the target's autocast (``impl`` replaces it, to
   check another implementation or to inject a fault);
3. the reference is torchvision's / PyTorch's operator in float64 on the CPU, fed the very
   same rounded inputs, so that only the operator's own error is measured;
4. the operator's rules judge the output with the standard of the dtype it ran in.

Which rule for which operator:

| operator | rule |
|---|---|
| deform_conv2d | absolute threshold, magnitude and position slack; + ULP share in fp16/bf16 |
| roi_align | absolute threshold, magnitude and position slack |
| basis / attention bilinear resize | absolute threshold, magnitude |
| FPN nearest resize | binary consistency (it moves values, it computes nothing) |
| batched_nms | NMS consistency (ties in score and IoU may go either way) |

Running the host operators in half precision is not what the model does, and would fail
for reasons a port never meets: torchvision's ``batched_nms`` given bfloat16 boxes adds
its class offsets (class x (max + 1)) in bfloat16, which rounds coordinates to 4-16 px
and keeps boxes a float64 NMS of the same boxes suppresses. Change ``runs_in`` to
``"target"`` to gate a port that moves post-processing onto the device.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms, deform_conv2d, roi_align

from ..dtypes import autocast
from ..model.layers import resize_to
from .op_inputs import ATTENTION_RESIZE, BASIS_RESIZE, BATCHED_NMS, DEFORM_CONV, FPN_RESIZE, ROI_ALIGN, OpCase
from .op_standards import (
    OpVerdict,
    absolute_threshold,
    binary_consistency,
    dtype_of,
    nms_consistency,
    ulp_share,
)
from .thresholds import OperatorThresholds

Judge = Callable[[Tensor, dict[str, Any], OperatorThresholds, torch.dtype], list[OpVerdict]]


@dataclass(frozen=True)
class Operator:
    """One operator: ``call(**inputs)`` as BlendMask calls it, where it runs, how it is judged."""

    name: str
    call: Callable[..., Tensor]
    runs_in: Literal["target", "fp32"]
    judge: Judge
    site: str  # where BlendMask calls it, for the report


def _abs(inputs: dict[str, Any], *names: str) -> dict[str, Any]:
    """``inputs`` with the named tensors replaced by their absolute values (None stays None)."""
    return {k: v.abs() if k in names and isinstance(v, Tensor) else v for k, v in inputs.items()}


def _judge_resize(out: Tensor, inputs: dict[str, Any], standard: OperatorThresholds, dtype: torch.dtype) -> list[OpVerdict]:
    # Bilinear weights are non-negative: resizing |x| gives the magnitude of each output's terms.
    return [absolute_threshold(out, resize_to(**inputs), standard, resize_to(**_abs(inputs, "x")))]


def _judge_nearest(out: Tensor, inputs: dict[str, Any], standard: OperatorThresholds, dtype: torch.dtype) -> list[OpVerdict]:
    return [binary_consistency(out, resize_to(**inputs))]


def _judge_roi_align(out: Tensor, inputs: dict[str, Any], standard: OperatorThresholds, dtype: torch.dtype) -> list[OpVerdict]:
    ref = roi_align(**inputs)
    shift = standard.max_position_error / inputs["spatial_scale"]  # map pixels -> box coordinates
    slack = torch.zeros_like(ref)
    for columns in ((1, 3), (2, 4)):
        moved = inputs["boxes"].clone()
        moved[:, list(columns)] += shift
        slack += (roi_align(**{**inputs, "boxes": moved}) - ref).abs()
    return [absolute_threshold(out, ref, standard, roi_align(**_abs(inputs, "input")), slack)]


def _judge_deform_conv(out: Tensor, inputs: dict[str, Any], standard: OperatorThresholds, dtype: torch.dtype) -> list[OpVerdict]:
    ref = deform_conv2d(**inputs)
    slack = torch.zeros_like(ref)
    for axis in (0, 1):  # every dy, then every dx
        moved = inputs["offset"].clone()
        moved[:, axis::2] += standard.max_position_error
        slack += (deform_conv2d(**{**inputs, "offset": moved}) - ref).abs()
    magnitude = deform_conv2d(**_abs(inputs, "input", "weight", "mask"))
    verdicts = [absolute_threshold(out, ref, standard, magnitude, slack)]
    if dtype != torch.float32:
        verdicts.append(ulp_share(out, ref, standard, dtype))
    return verdicts


def _judge_nms(keep: Tensor, inputs: dict[str, Any], standard: OperatorThresholds, dtype: torch.dtype) -> list[OpVerdict]:
    return [nms_consistency(keep, inputs["boxes"], inputs["scores"], inputs["idxs"], inputs["iou_threshold"], standard)]


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator(DEFORM_CONV, deform_conv2d, "target", _judge_deform_conv, "backbone.bottom_up res3-res5 conv2 (R_101_dcni3)"),
        Operator(FPN_RESIZE, resize_to, "target", _judge_nearest, "backbone top-down path (model/fpn.py)"),
        Operator(BASIS_RESIZE, resize_to, "target", _judge_resize, "basis_module refine sum and x2 upsample"),
        Operator(ROI_ALIGN, roi_align, "fp32", _judge_roi_align, "blender pooler (host post-processing)"),
        Operator(ATTENTION_RESIZE, resize_to, "fp32", _judge_resize, "blender attention 14 -> 56 (host post-processing)"),
        Operator(BATCHED_NMS, batched_nms, "fp32", _judge_nms, "decode class-aware NMS (host post-processing)"),
    )
}


def _cast(value: Any, dtype: torch.dtype) -> Any:
    return value.to(dtype) if isinstance(value, Tensor) and value.is_floating_point() else value


def run_precision(operator: Operator, precision: str) -> str:
    """The precision ``operator`` runs in on a target of ``precision``."""
    return precision if operator.runs_in == "target" else "fp32"


def check(case: OpCase, device: str, precision: str, standards: Mapping[str, OperatorThresholds],
          impl: Callable[..., Tensor] | None = None) -> list[OpVerdict]:
    """Run ``case`` on ``device`` for a target of ``precision`` and judge it (module docstring).

    Args:
        case: the operator and its inputs (CPU tensors).
        device: a torch device string (cpu, cuda:N, npu:N).
        precision: the target's precision, fp32, fp16 or bf16.
        standards: ``Thresholds.operator``, by precision.
        impl: called instead of the operator, with the same keyword arguments.
    """
    operator = OPERATORS[case.operator]
    runs = run_precision(operator, precision)
    held = {k: _cast(_cast(v, dtype_of(precision)), dtype_of(runs)) for k, v in case.inputs.items()}
    on_device = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in held.items()}
    with torch.inference_mode():
        with autocast(torch.device(device).type, runs):
            out = (impl or operator.call)(**on_device)
        return operator.judge(out.cpu(), {k: _cast(v, torch.float64) for k, v in held.items()}, standards[runs],
                              dtype_of(runs))


def record(recorder: Callable[..., Any], target: str, case: OpCase, precision: str, verdicts: list[OpVerdict],
           **extra: Any) -> list[str]:
    """Record every verdict of ``case`` (``bm_record``, with ``extra`` context); returns the
    failures' messages instead of raising, so that every case is recorded."""
    operator = OPERATORS[case.operator]
    failures = []
    for verdict in verdicts:
        try:
            recorder("precision", target, f"{case.operator}.{verdict.metric}", verdict.value, verdict.limit, "",
                     verdict.passed, op="<=", detail=f"{case.operator} {case.name}: {verdict.detail}",
                     operator=case.operator, inputs=case.describe(), site=operator.site,
                     runs_in=run_precision(operator, precision), worst_index=list(verdict.worst_index or []),
                     measures=verdict.measures, **extra)
        except AssertionError as exc:
            failures.append(str(exc))
    return failures
