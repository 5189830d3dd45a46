"""Level 0: the operators BlendMask depends on and ports break, one at a time, against float64.

Each operator runs on the target's device with the inputs a CPU reference forward of the
model handed it on the sample batch (``precision/op_inputs.py``) and with edge cases,
and is judged by ``[precision.operator.<precision>]`` (``precision/op_checks.py`` has the
driver and which rule judges which operator). Every case of an operator is recorded before
the test fails, so the report shows them all.
"""
from __future__ import annotations

import pytest

from pytest_blendmask.model import BlendMask
from pytest_blendmask.ops.deform_conv import deform_conv2d as fallback_deform_conv2d
from pytest_blendmask.ops.selection import choose_deform_conv
from pytest_blendmask.precision.op_checks import check, record
from pytest_blendmask.precision.op_inputs import (
    ATTENTION_RESIZE,
    BASIS_RESIZE,
    BATCHED_NMS,
    DEFORM_CONV,
    FPN_RESIZE,
    ROI_ALIGN,
    captured_cases,
    edge_cases,
)

pytestmark = [pytest.mark.precision, pytest.mark.bm_level("operators")]


@pytest.fixture(scope="module")
def op_cases(blendmask_model, sample_batch):
    """Every operator call of one CPU forward of the model on the sample batch, then the edge cases."""
    if not isinstance(blendmask_model, BlendMask):
        pytest.skip(f"operator capture follows BlendMask's modules; {type(blendmask_model).__name__} has others")
    captured = captured_cases(blendmask_model, sample_batch.tensor, sample_batch.image_sizes)
    return captured + edge_cases(captured)


@pytest.fixture
def eager_device(dut_target) -> str:
    """The torch device of an eager target; skips compiled targets, which run whole graphs."""
    if dut_target.timed_device is None:
        pytest.skip(f"{dut_target.id} runs a compiled graph (ONNX Runtime / .om), not PyTorch operators one by one")
    return dut_target.timed_device


def run_and_record(operator, op_cases, dut_target, device, thresholds, bm_record, impl=None, **extra):
    cases = [case for case in op_cases if case.operator == operator]
    assert cases, f"the forward made no {operator} call to check"
    failures = []
    for case in cases:
        verdicts = check(case, device, dut_target.precision, thresholds.operator, impl)
        failures += record(bm_record, dut_target.id, case, dut_target.precision, verdicts, **extra)
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.mark.parametrize("operator", [ROI_ALIGN, BATCHED_NMS, BASIS_RESIZE, ATTENTION_RESIZE, FPN_RESIZE])
def test_operator(operator, op_cases, dut_target, eager_device, thresholds, bm_record):
    run_and_record(operator, op_cases, dut_target, eager_device, thresholds, bm_record)


def selection_note(dut_target, runner, choice) -> str:
    """Which deformable convolution the target runs, and why, for the operators table."""
    if runner.deform_conv is None:
        return (f"{DEFORM_CONV}: the model has no deformable layers; on {dut_target.id} one would run "
                f"{choice.name} ({choice.reason}).")
    return f"{DEFORM_CONV}: the model's deformable layers run {choice.name} on {dut_target.id} ({choice.reason})."


@pytest.mark.parametrize("implementation", ["torchvision", "fallback"])
def test_deform_conv2d(implementation, op_cases, dut_target, eager_device, compiled_target, bm_settings, thresholds,
                       bm_record):
    """The implementation the target selects (``ops.selection``, ``--bm-deform-conv``) and the fallback on every target."""
    choice = choose_deform_conv(eager_device, dut_target.precision, bm_settings.deform_conv)
    if implementation == "torchvision" and choice.name != "torchvision":
        pytest.skip(f"{dut_target.id} runs the fallback (checked by test_deform_conv2d[fallback]): {choice.reason}")
    if implementation == choice.name:
        runner = compiled_target(dut_target)
        assert runner.deform_conv is None or runner.deform_conv.name == choice.name, (
            f"{dut_target.id} loaded {runner.deform_conv.name}, the selection says {choice.name}")
        bm_record("precision", dut_target.id, f"{DEFORM_CONV}.selection", None, None, "", True,
                  detail=selection_note(dut_target, runner, choice), operator=DEFORM_CONV, selection=choice.name)
    op = choice.op if implementation == "torchvision" else fallback_deform_conv2d
    run_and_record(DEFORM_CONV, op_cases, dut_target, eager_device, thresholds, bm_record, op, implementation=implementation)
