"""Run one target on a batch: raw tensors, a dump to compare, and host-side detections.

This is ``Target.run`` of DESIGN.md: every kind of target (eager device, ONNX Runtime,
ATC .om) ends in the same ``TargetRun``, so the precision gates never ask which kind ran.
Eager targets are dumped layer by layer; compiled targets expose their graph outputs only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .precision.dump import Dump, DumpCollector, dump_from_outputs
from .targets import TargetSpec, forward_on_target, to_device

RawRunner = Callable[[Tensor], "dict[str, Tensor]"]

# The precision a target computes in, which picks its thresholds section: an .om built
# with allow_fp32_to_fp16 computes convolutions in fp16.
_OM_PRECISION = "fp16"


@dataclass(frozen=True)
class TargetRun:
    """What one target produced for one batch (all tensors on the CPU, float32)."""

    spec: TargetSpec
    raw: dict[str, Tensor]
    dump: Dump
    detections: list[dict[str, Tensor]]


def precision_of(spec: TargetSpec) -> str:
    """The thresholds section for a target: fp32, fp16, bf16 or int8."""
    return _OM_PRECISION if spec.kind == "om" else spec.dtype


def compiled_runner(spec: TargetSpec, model: nn.Module, input_hw: tuple[int, int], soc_version: str, cache_dir: Path | None = None) -> RawRunner:
    """A batch -> raw tensors callable for an ``ort*`` or ``om`` target, exporting once (cached)."""
    from .atc.export import export_onnx

    exported = export_onnx(model, input_hw, opset=11, dynamic_batch=spec.kind == "ort", cache_dir=cache_dir)
    if spec.kind == "ort":
        from .atc.ort import build_ort_runner

        provider = spec.provider or "CPUExecutionProvider"
        return build_ort_runner(exported, precision=spec.dtype, provider=provider, model=model)
    from .atc.atc import AtcOptions, compile_om
    from .atc.om import OmRunner

    om = compile_om(exported.path, exported.path.with_suffix(""), input_hw, AtcOptions(soc_version, precision_mode="allow_fp32_to_fp16"))
    om.raise_for_failure()
    return OmRunner(str(om.om_path), exported.output_names)


def run_target(
    spec: TargetSpec,
    model: nn.Module,
    batch: Tensor,
    image_sizes: list[tuple[int, int]],
    compiled: RawRunner | None = None,
    dump_mode: str = "full",
) -> TargetRun:
    """Run ``spec`` on ``batch`` and post-process on the host with the reference's code.

    Eager targets run a device copy of ``model`` under a ``DumpCollector``; compiled targets
    need ``compiled`` (from ``compiled_runner``) and are dumped at their graph outputs.
    """
    if spec.kind == "eager":
        device_model = to_device(model, spec)
        with DumpCollector(device_model, mode=dump_mode) as collector:
            raw = forward_on_target(device_model, batch, spec)
        dump = collector.dump
    else:
        if compiled is None:
            raise ValueError(f"{spec.id}: a compiled target needs its runner (compiled_runner)")
        raw = compiled(batch)
        dump = dump_from_outputs(raw)
    with torch.inference_mode():
        detections = model.postprocess(raw, image_sizes)
    return TargetRun(spec, raw, dump, detections)
