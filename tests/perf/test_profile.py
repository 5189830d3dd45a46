"""A profile of each eager target: top-10 operators by self time, post-processing operators, host and AI CPU fallbacks, trace on disk.

The profiled call is a forward and the device-side postprocess at batch 1, at the grid's
first input size, in the target's dtype, with the session's weights in their trained
layout (``perf_model``), so that the postprocess has detections to work on: seed 001's
fallbacks (``torchvision::nms``, ``roi_align``) live there. Their times are recorded
whether or not they reach the top 10. Fallbacks are recorded for the report, not failed:
whether a fallback is acceptable is the porting engineer's call, and the list says where to look.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

from pytest_blendmask.model import CONFIG_NAMES
from pytest_blendmask.perf.grid import GridSpec
from pytest_blendmask.perf.profile import profile_callable, write_summary
from pytest_blendmask.perf.workload import TimedModel, build_workload, detections_per_image, synthetic_jpegs
from pytest_blendmask.settings import Settings
from pytest_blendmask.targets import Target

pytestmark = pytest.mark.perf

ITERATIONS = 2  # the CPU fp16 target runs ~3 s per lite forward (emulated half precision)


def test_profile(
    dut_target: Target,
    perf_grid: GridSpec,
    blendmask_model: Any,
    perf_model: Callable[[str, str], TimedModel],
    bm_settings: Settings,
    bm_record: Callable[..., Any],
) -> None:
    if dut_target.timed_device is None:
        pytest.skip(f"{dut_target.id}: profiles cover eager PyTorch targets; ONNX Runtime and .om have their own")
    if bm_settings.model not in CONFIG_NAMES:
        pytest.skip(f"the profile times a named BlendMask config's preprocessing, forward and postprocess; "
                    f"{bm_settings.model} is a module:factory model")
    device = torch.device(dut_target.timed_device)
    size = perf_grid.input_sizes[0]
    model = perf_model(blendmask_model.cfg.norm, dut_target.timed_device).model
    work = build_workload(model, synthetic_jpegs(1, size), size, device, dut_target.dtype, streams=False)

    def forward_and_postprocess() -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            return model.postprocess(work.model_only(), [size], [size])

    out_dir = bm_settings.report_dir / "profiles" / re.sub(r"[^\w.-]", "_", dut_target.id)
    summary = profile_callable(forward_and_postprocess, device, iterations=ITERATIONS, out_dir=out_dir)
    write_summary(summary, out_dir)
    assert summary.top, f"the profile of {dut_target.id} holds no operator"

    h, w = size
    where = f"{dut_target.id}, {bm_settings.model} {h}x{w} bs1"
    detections = detections_per_image(forward_and_postprocess())
    bm_record(
        "perf", dut_target.id, "postprocess_ops_ms", summary.postprocess_ms(), None, "ms", True,
        detail=f"{where}, {detections[0]} detections, {summary.top_by} self time per iteration: "
               f"{summary.postprocess_text()}",
        postprocess_ops=summary.postprocess_table, detections_per_image=detections,
    )
    fallbacks = summary.host_fallbacks
    bm_record(
        "perf", dut_target.id, "host_fallback_ops", None if fallbacks is None else len(fallbacks), None, "ops", True,
        detail=(f"{where}: the CPU is the host; nothing falls back" if fallbacks is None
                else f"{where}: " + (", ".join(op.name for op in fallbacks) or "none")),
        top_ops=summary.table, trace=summary.trace,
    )
    if summary.ai_cpu is not None:
        bm_record(
            "perf", dut_target.id, "ai_cpu_kernels", len(summary.ai_cpu), None, "kernel types", True,
            detail=f"{where}: " + (", ".join(f"{k.op_type} x{k.calls}" for k in summary.ai_cpu) or "none"),
        )
