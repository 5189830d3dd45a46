"""Operator standards against hand-computed values: the absolute-threshold rule, ULPs, binary
consistency and NMS consistency with ties."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pytest_blendmask.precision.op_standards import (
    absolute_threshold,
    binary_consistency,
    nms_consistency,
    ulp_errors,
    ulp_share,
)
from pytest_blendmask.precision.thresholds import load_thresholds

STANDARDS = load_thresholds().operator
FP16 = STANDARDS["fp16"]  # rtol 1e-3, small_value 1e-3, atol 1e-5


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    "dut, ref, value, worst",
    [
        # relative error 5e-4 of an allowed 1e-3 at element 1
        pytest.param(t(1.0, 2.001), t(1.0, 2.0), 0.5, (1,), id="relative-half-of-rtol"),
        pytest.param(t(1.0, 2.004), t(1.0, 2.0), 2.0, (1,), id="relative-twice-rtol"),
        # |ref| 5e-4 < small_value: judged by |d - r| = 8e-6 against atol 1e-5
        pytest.param(t(5.08e-4), t(5e-4), 0.8, (0,), id="small-value-by-atol"),
        # the same 8e-6 as a relative error would be 1.6 %: the atol is what lets it pass
        pytest.param(t(5.08e-4, 1.0), t(5e-4, 1.0), 0.8, (0,), id="small-value-not-relative"),
        pytest.param(t(5.2e-4), t(5e-4), 2.0, (0,), id="small-value-over-atol"),
        pytest.param(t(0.0, 3.0), t(0.0, 3.0), 0.0, (0,), id="exact"),
    ],
)
def test_absolute_threshold_is_the_worst_error_over_its_allowance(dut, ref, value, worst):
    verdict = absolute_threshold(dut, ref, FP16)
    assert verdict.value == pytest.approx(value, rel=1e-6)
    assert verdict.passed is (value <= 1) and verdict.limit == 1.0
    assert verdict.worst_index == worst


def test_a_value_at_its_allowance_passes():
    assert absolute_threshold(t(2.002), t(2.0), FP16).passed


def test_magnitude_replaces_ref_for_cancelling_terms():
    # r = 1.0 - 0.998 = 0.002: an error of 4e-6 is 2e-3 relative to r but 2e-6 relative to
    # the terms' magnitude 1.998.
    dut, ref = t(0.002 + 4e-6), t(0.002)
    assert not absolute_threshold(dut, ref, FP16).passed
    verdict = absolute_threshold(dut, ref, FP16, magnitude=t(1.998))
    assert verdict.passed and verdict.value == pytest.approx(4e-6 / (1e-3 * 1.998))


def test_position_slack_is_added_to_the_allowance():
    dut, ref = t(1.003), t(1.0)
    assert not absolute_threshold(dut, ref, FP16).passed
    verdict = absolute_threshold(dut, ref, FP16, position_slack=t(0.002))
    assert verdict.value == pytest.approx(0.003 / 0.003) and verdict.passed
    assert verdict.measures["max_relative_error"] == pytest.approx(0.001)


@pytest.mark.parametrize(
    "dut, ref, passed",
    [
        pytest.param(t(math.nan, 1.0), t(math.nan, 1.0), True, id="matched-nan-left-out"),
        pytest.param(t(math.inf, 1.0), t(math.inf, 1.0), True, id="matched-inf-left-out"),
        pytest.param(t(math.nan, 1.0), t(0.0, 1.0), False, id="nan-where-ref-finite"),
        pytest.param(t(math.inf), t(-math.inf), False, id="opposite-infinities"),
        pytest.param(t(1.0), t(math.nan), False, id="finite-where-ref-nan"),
    ],
)
def test_nonfinite_positions_must_match(dut, ref, passed):
    for verdict in (absolute_threshold(dut, ref, FP16), ulp_share(dut, ref, FP16, torch.float16), binary_consistency(dut, ref)):
        assert verdict.passed is passed
        assert passed or verdict.value == math.inf


def test_a_shape_mismatch_fails_every_rule_with_the_shapes_in_the_detail():
    for verdict in (absolute_threshold(t(1.0), t(1.0, 2.0), FP16), binary_consistency(t(1.0), t(1.0, 2.0))):
        assert not verdict.passed and "shape [1] on the device, [2] in the reference" in verdict.detail


def test_empty_outputs_of_equal_shape_pass():
    empty = torch.zeros(0, 4, 56, 56, dtype=torch.float64)
    assert absolute_threshold(empty, empty, FP16).passed and ulp_share(empty, empty, FP16, torch.float16).value == 0


@pytest.mark.parametrize(
    "dut, ref, dtype, ulps",
    [
        # fp16 spacing at 1.0 is 2**-10; at 3.0 (binade [2, 4)) 2**-9
        pytest.param(1.0 + 2**-10, 1.0, torch.float16, 1.0, id="fp16-one-ulp"),
        pytest.param(3.0 + 2**-9, 3.0, torch.float16, 1.0, id="fp16-binade-above"),
        pytest.param(1.0 + 2**-7, 1.0, torch.bfloat16, 1.0, id="bf16-one-ulp"),
        pytest.param(1.0 + 2**-20, 1.0, torch.float32, 8.0, id="fp32-eight-ulps"),
        # below the smallest normal fp16 (2**-14) the spacing is fixed at 2**-24
        pytest.param(2**-24, 0.0, torch.float16, 1.0, id="fp16-subnormal-spacing"),
    ],
)
def test_ulp_error_is_in_units_of_the_dtype_spacing_at_the_reference(dut, ref, dtype, ulps):
    assert float(ulp_errors(t(dut), t(ref), dtype)[0]) == pytest.approx(ulps)


def test_ulp_share_counts_elements_above_the_threshold():
    ref = torch.ones(1000, dtype=torch.float64)
    dut = ref.clone()
    dut[:2] += 2 * 2**-10  # 2 ULP of fp16 at 1.0: above the 1-ULP threshold
    verdict = ulp_share(dut, ref, FP16, torch.float16)
    assert verdict.value == pytest.approx(0.002) and not verdict.passed and verdict.worst_index == (0,)
    dut[1] = 1.0
    assert ulp_share(dut, ref, FP16, torch.float16).passed  # 0.001: equal to the limit


def test_binary_consistency_counts_differences():
    verdict = binary_consistency(t(1.0, 2.0, 3.5), t(1.0, 2.0, 3.0))
    assert verdict.value == 1 and not verdict.passed and verdict.worst_index == (2,)
    assert binary_consistency(t(1.0, 2.0), t(1.0, 2.0)).passed


# Boxes for NMS at IoU 0.5: A and B overlap by 0.6, C is apart, D overlaps C by 0.6.
A, B, C, D = (0, 0, 10, 10), (0, 4, 10, 10), (20, 20, 30, 30), (20, 24, 30, 30)


def nms(keep, boxes, scores, classes=None, threshold=0.5, tolerance=1e-6):
    standard = dataclasses.replace(FP16, nms_iou_tie_tolerance=tolerance)
    classes = torch.zeros(len(boxes), dtype=torch.long) if classes is None else torch.tensor(classes)
    return nms_consistency(torch.tensor(keep, dtype=torch.long), torch.tensor(boxes, dtype=torch.float64),
                           torch.tensor(scores, dtype=torch.float64), classes, threshold, standard)


@pytest.mark.parametrize(
    "keep, scores, classes, unjustified",
    [
        pytest.param([0, 2], [0.9, 0.8, 0.7, 0.6], None, 0, id="greedy"),
        pytest.param([0, 1, 2], [0.9, 0.8, 0.7, 0.6], None, 1, id="kept-though-suppressed"),
        pytest.param([0], [0.9, 0.8, 0.7, 0.6], None, 2, id="dropped-without-suppressor"),
        pytest.param([2, 0], [0.9, 0.8, 0.7, 0.6], None, 1, id="out-of-score-order"),
        pytest.param([0, 0, 2], [0.9, 0.8, 0.7, 0.6], None, 1, id="duplicate-index"),
        pytest.param([0, 2, 9], [0.9, 0.8, 0.7, 0.6], None, 1, id="index-out-of-range"),
        # A and B tie: either may be the one kept
        pytest.param([1, 2], [0.9, 0.9, 0.7, 0.6], None, 0, id="tie-keeps-the-other"),
        pytest.param([0, 2], [0.9, 0.9, 0.7, 0.6], None, 0, id="tie-keeps-the-first"),
        # ...but not the box with the lower score
        pytest.param([1, 2], [0.9, 0.8, 0.7, 0.6], None, 1, id="no-tie-no-swap"),
        # class-aware: B in another class is never suppressed by A
        pytest.param([0, 1, 2], [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 0], 0, id="other-class-kept"),
        pytest.param([0, 2], [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 0], 1, id="other-class-dropped"),
    ],
)
def test_nms_consistency_accepts_exactly_the_greedy_results_under_some_tie_order(keep, scores, classes, unjustified):
    verdict = nms(keep, [A, B, C, D], scores, classes)
    assert verdict.value == unjustified and verdict.passed is (unjustified == 0)


def test_an_iou_at_the_threshold_may_go_either_way_within_the_tolerance():
    # IoU(A, B) is exactly 0.6: strict NMS keeps both, a kernel computing 0.6000001 drops B.
    boxes, scores = [A, B], [0.9, 0.8]
    assert nms([0, 1], boxes, scores, threshold=0.6, tolerance=0).passed
    assert not nms([0], boxes, scores, threshold=0.6, tolerance=0).passed
    assert nms([0], boxes, scores, threshold=0.6, tolerance=1e-6).passed
    assert not nms([0], boxes, scores, threshold=0.6 + 1e-3, tolerance=1e-6).passed


def test_zero_area_boxes_suppress_nothing():
    point = (5, 5, 5, 5)
    assert nms([0, 1], [point, point], [0.9, 0.8]).passed
    assert not nms([0], [point, point], [0.9, 0.8]).passed


def test_no_boxes_keep_nothing():
    verdict = nms([], torch.zeros(0, 4).tolist(), [])
    assert verdict.passed and verdict.measures["boxes"] == 0
