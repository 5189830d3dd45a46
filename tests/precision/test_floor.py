"""Level 1 against the noise floor: what each module adds by itself, and what rounding explains.

Each module of the device under test is recomputed on the reference's own inputs (its
*local* error: replayed by an eager target, the part of the graph behind the module's tensor
for an ONNX Runtime target) and held, with its accumulated error, to the floor: the same
module run by the reference model in the target's precision emulated on the CPU
(``precision/local.py``). One
test per gate of ``pytest_blendmask.gates.FLOOR_GATES``, judged against
``[precision.local.<precision>]``; a failure names the module, LOCAL or ACCUMULATED.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_blendmask.gates import ACCUMULATED_FLOOR_RATIO, LOCAL_ERROR, LOCAL_FLOOR_RATIO, LOCAL_GAIN, Gate, judge

pytestmark = [pytest.mark.precision, pytest.mark.bm_level("tensor")]  # the floor gates judge level 1 too


@pytest.fixture
def judge_floor_gate(dut_target, floor_comparison, thresholds, bm_record) -> Callable[[Gate], object]:
    """``judge_floor_gate(gate)``: the gate on the target's ``LocalComparison``, against its local section."""
    comparison = floor_comparison(dut_target)
    if comparison is None:
        pytest.skip(
            f"{dut_target.id} cannot recompute its modules one by one (an .om runs whole; eager and ONNX Runtime "
            "targets can), so it has no local error and no floor here; the tensor gates judge its graph outputs"
        )
    return lambda gate: judge(bm_record, gate, dut_target.id, comparison, thresholds.local[dut_target.precision])


def test_local_error_within_the_floor(judge_floor_gate):
    judge_floor_gate(LOCAL_FLOOR_RATIO)


def test_local_gain_within_the_floor(judge_floor_gate):
    judge_floor_gate(LOCAL_GAIN)


def test_local_error_within_the_standard(judge_floor_gate):
    judge_floor_gate(LOCAL_ERROR)


def test_accumulated_error_within_the_floor(judge_floor_gate):
    judge_floor_gate(ACCUMULATED_FLOOR_RATIO)
