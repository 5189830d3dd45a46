"""Proofs for the operator checks: each injected fault fails the check tests/precision/test_ops.py
runs, on the inputs captured from the shipped lite model, and the clean operator passes."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, deform_conv2d

from pytest_blendmask.data import EVAL_SEED, generate_sample
from pytest_blendmask.model import build_model, load_weights
from pytest_blendmask.ops.deform_conv import deform_conv2d as fallback_deform_conv2d
from pytest_blendmask.ops.selection import select_deform_conv
from pytest_blendmask.precision.op_checks import OPERATORS, check
from pytest_blendmask.precision.op_inputs import (
    BASIS_RESIZE,
    BATCHED_NMS,
    DEFORM_CONV,
    ROI_ALIGN,
    OpCase,
    captured_cases,
    edge_cases,
    smallest_case,
)
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.settings import SEED, packaged_file

STANDARDS = load_thresholds().operator


@pytest.fixture(scope="module")
def captured() -> dict[str, list[OpCase]]:
    """Per operator, its smallest call captured from the lite model's shipped weights on two
    evaluation images (what test_ops.py checks first), and for NMS the pairs around its threshold."""
    model = load_weights(build_model("lite", seed=SEED), packaged_file("weights/lite.safetensors"))
    images = [torch.from_numpy(generate_sample(EVAL_SEED, i, 512, 512).image).permute(2, 0, 1).contiguous() for i in range(2)]
    batch, sizes = model.preprocess(images)
    captured = captured_cases(model, batch, sizes)
    cases = {operator: [smallest_case(captured, operator)] for operator in OPERATORS}
    cases[BATCHED_NMS] += [case for case in edge_cases(captured) if case.operator == BATCHED_NMS and "around" in case.name]
    return cases


def the_op(operator: str, precision: str) -> Callable[..., torch.Tensor]:
    """What a target of ``precision`` runs: the selected deformable convolution, else the operator itself."""
    return select_deform_conv("cpu", precision).op if operator == DEFORM_CONV else OPERATORS[operator].call


def all_pass(cases: list[OpCase], precision: str, impl: Callable[..., torch.Tensor]) -> bool:
    """Whether every verdict on every case passes, as test_ops.py requires."""
    return all(v.passed for case in cases for v in check(case, "cpu", precision, STANDARDS, impl))


def roi_align_unaligned(op):
    return lambda **kw: op(**{**kw, "aligned": False})


def roi_align_sampling_ratio_2(op):
    # Moves the detection level's mask IoU by 0.0014, as much as fp16 rounding does: only here is it plain.
    return lambda **kw: op(**{**kw, "sampling_ratio": 2})


def nms_threshold_off_by(delta):
    def fault(op):
        return lambda boxes, scores, idxs, iou_threshold: op(boxes, scores, idxs, iou_threshold + delta)

    return fault


def swapped_offsets(op):
    def run(input, offset, **kw):
        n, channels, height, width = offset.shape
        return op(input, offset.reshape(n, channels // 2, 2, height, width).flip(2).reshape_as(offset), **kw)

    return run


def nearest_instead_of_bilinear(op):
    return lambda x, size, mode: F.interpolate(x, size=size, mode="nearest")


@pytest.mark.parametrize(
    "operator, fault",
    [
        pytest.param(ROI_ALIGN, roi_align_unaligned, id="roi_align-aligned-false"),
        pytest.param(ROI_ALIGN, roi_align_sampling_ratio_2, id="roi_align-sampling-ratio-2"),
        pytest.param(BATCHED_NMS, nms_threshold_off_by(0.1), id="nms-iou-threshold-plus-0.1"),
        pytest.param(BATCHED_NMS, nms_threshold_off_by(-0.1), id="nms-iou-threshold-minus-0.1"),
        pytest.param(DEFORM_CONV, swapped_offsets, id="deform_conv2d-swapped-dy-dx"),
        pytest.param(BASIS_RESIZE, nearest_instead_of_bilinear, id="basis-nearest-instead-of-bilinear"),
    ],
)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_a_fault_fails_its_operator_check_and_the_clean_operator_passes(captured, operator, fault, precision):
    op = the_op(operator, precision)
    assert all_pass(captured[operator], precision, op)
    assert not all_pass(captured[operator], precision, fault(op))


def test_the_swapped_offsets_are_clearly_wrong_not_marginally(captured):
    verdict = check(captured[DEFORM_CONV][0], "cpu", "fp32", STANDARDS, swapped_offsets(deform_conv2d))[0]
    assert verdict.value > 100 and verdict.measures["violations"] > 0.5 * verdict.measures["elements"]


def test_torchvisions_cpu_kernel_in_fp16_fails_where_the_fallback_passes(captured):
    # Why the selection picks the fallback for cpu:fp16: the kernel samples at float16 positions.
    assert not all_pass(captured[DEFORM_CONV], "fp16", deform_conv2d)
    assert all_pass(captured[DEFORM_CONV], "fp16", fallback_deform_conv2d)


def test_batched_nms_in_bf16_fails_which_is_why_nms_runs_in_fp32(captured):
    # torchvision adds its class offsets (class x (max + 1)) in the boxes' dtype: in bfloat16
    # that rounds coordinates to 4-16 px. BlendMask decodes in float32, so it never meets this.
    def in_bf16(boxes, scores, idxs, iou_threshold):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the nms kernel itself runs in float32
            return batched_nms(boxes.bfloat16(), scores.bfloat16(), idxs, iou_threshold)

    assert all_pass(captured[BATCHED_NMS], "bf16", batched_nms)
    assert not all_pass(captured[BATCHED_NMS], "bf16", in_bf16)
