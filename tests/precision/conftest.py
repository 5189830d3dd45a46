"""Shared per-target comparisons for the precision gates (each computed once per session)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_blendmask.precision.compare import ComparisonResult, compare
from pytest_blendmask.precision.match import DetectionMetrics, detection_metrics
from pytest_blendmask.precision.thresholds import Thresholds
from pytest_blendmask.targets import Target


@pytest.fixture(scope="session")
def tensor_comparison(target_run, reference_target, thresholds: Thresholds) -> Callable[[Target], ComparisonResult]:
    """``tensor_comparison(spec)``: layer-by-layer comparison with the reference (graph outputs for compiled targets)."""
    cache: dict[str, ComparisonResult] = {}

    def get(spec: Target) -> ComparisonResult:
        if spec.id not in cache:
            ref, dut = target_run(reference_target), target_run(spec)
            cache[spec.id] = compare(spec.reference_dump(ref), dut.dump, thresholds.tensor[spec.precision])
        return cache[spec.id]

    return get


@pytest.fixture(scope="session")
def detection_comparison(target_run, reference_target, thresholds: Thresholds) -> Callable[[Target], list[DetectionMetrics]]:
    """``detection_comparison(spec)``: per-image detection metrics against the reference."""

    def get(spec: Target) -> list[DetectionMetrics]:
        ref, dut = target_run(reference_target), target_run(spec)
        iou = thresholds.detection[spec.precision].match_iou
        return [detection_metrics(r, d, iou) for r, d in zip(ref.detections, dut.detections)]

    return get
