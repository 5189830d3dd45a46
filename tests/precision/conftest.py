"""Shared per-target comparisons for the precision gates (each computed once per session)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_blendmask.precision.compare import ComparisonResult, compare
from pytest_blendmask.precision.dump import dump_from_outputs
from pytest_blendmask.precision.match import DetectionMetrics, detection_metrics
from pytest_blendmask.precision.thresholds import Thresholds
from pytest_blendmask.runners import precision_of
from pytest_blendmask.targets import TargetSpec


@pytest.fixture(scope="session")
def tensor_comparison(target_run, reference_target, thresholds: Thresholds) -> Callable[[TargetSpec], ComparisonResult]:
    """``tensor_comparison(spec)``: layer-by-layer comparison with the reference (graph outputs for compiled targets)."""
    cache: dict[str, ComparisonResult] = {}

    def get(spec: TargetSpec) -> ComparisonResult:
        if spec.id not in cache:
            ref, dut = target_run(reference_target), target_run(spec)
            ref_dump = ref.dump if spec.kind == "eager" else dump_from_outputs(ref.raw)
            cache[spec.id] = compare(ref_dump, dut.dump, thresholds.tensor[precision_of(spec)])
        return cache[spec.id]

    return get


@pytest.fixture(scope="session")
def detection_comparison(target_run, reference_target, thresholds: Thresholds) -> Callable[[TargetSpec], list[DetectionMetrics]]:
    """``detection_comparison(spec)``: per-image detection metrics against the reference."""

    def get(spec: TargetSpec) -> list[DetectionMetrics]:
        ref, dut = target_run(reference_target), target_run(spec)
        iou = thresholds.detection[precision_of(spec)].match_iou
        return [detection_metrics(r, d, iou) for r, d in zip(ref.detections, dut.detections)]

    return get
