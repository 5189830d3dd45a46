"""Level 1: every layer of the device under test against the CPU fp32 reference."""
from __future__ import annotations

import math

import pytest

from pytest_blendmask.precision.compare import describe
from pytest_blendmask.report import layer_series
from pytest_blendmask.runners import precision_of

pytestmark = pytest.mark.precision


def _series(result):
    layers = [layer for layer in result.layers if layer.metrics is not None]
    first = result.first_divergent.name if result.first_divergent is not None and result.first_divergent.metrics else None
    return layer_series([l.name for l in layers], [l.metrics.relative_l2_error for l in layers], first)


def test_mean_layer_error(dut_target, tensor_comparison, thresholds, bm_record):
    result = tensor_comparison(dut_target)
    limit = thresholds.tensor[precision_of(dut_target)].max_mean_relative_l2_error
    value = result.mean_relative_l2_error
    bm_record("precision", dut_target.id, "mean_layer_relative_l2_error", value, limit, "", value <= limit,
              op="<=", detail=describe(result), per_layer=_series(result), layers=len(result.layers))


def test_worst_layer_error(dut_target, tensor_comparison, thresholds, bm_record):
    result = tensor_comparison(dut_target)
    limits = thresholds.tensor[precision_of(dut_target)]
    gated = [l for l in result.layers if l.gated and l.metrics is not None]
    worst = max(gated, key=lambda l: l.metrics.relative_l2_error)
    value = worst.metrics.relative_l2_error
    passed = result.first_divergent is None and not result.missing_in_dut
    bm_record("precision", dut_target.id, "worst_layer_relative_l2_error", value, limits.max_relative_l2_error, "", passed,
              detail=describe(result), per_layer=_series(result), worst_layer=worst.name)


def test_cosine_similarity(dut_target, tensor_comparison, thresholds, bm_record):
    result = tensor_comparison(dut_target)
    limit = thresholds.tensor[precision_of(dut_target)].min_cosine_similarity
    gated = [l for l in result.layers if l.gated and l.metrics is not None]
    lowest = min(gated, key=lambda l: l.metrics.cosine_similarity)
    value = lowest.metrics.cosine_similarity
    bm_record("precision", dut_target.id, "min_layer_cosine_similarity", value, limit, "", value >= limit,
              op=">=", detail=f"lowest cosine at {lowest.name}\n{describe(result)}")


def test_no_nan_or_inf_where_the_reference_has_none(dut_target, tensor_comparison, bm_record):
    result = tensor_comparison(dut_target)
    bad = [l.name for l in result.layers if l.metrics is not None and l.metrics.nonfinite_mismatch]
    value = float(sum(l.metrics.nonfinite_mismatch for l in result.layers if l.metrics is not None))
    assert not math.isnan(value)
    bm_record("precision", dut_target.id, "nonfinite_mismatch_elements", value, 0.0, "elements", value <= 0,
              op="<=", detail=f"NaN/Inf positions differ from the reference in: {', '.join(bad[:5]) or 'none'}")
