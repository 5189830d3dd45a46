"""Level 1: every layer of the device under test against the CPU fp32 reference.

One test per tensor gate (``pytest_blendmask.gates.TENSOR_GATES``), each judged against
``[precision.tensor.<precision>]`` of the thresholds file.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_blendmask.gates import (
    MAX_LAYER_KL,
    MEAN_LAYER_ERROR,
    MIN_LAYER_COSINE,
    NONFINITE_MISMATCH,
    WORST_LAYER_ERROR,
    Gate,
    judge,
)

pytestmark = [pytest.mark.precision, pytest.mark.bm_level("tensor")]


@pytest.fixture
def judge_tensor_gate(dut_target, tensor_comparison, thresholds, bm_record) -> Callable[[Gate], object]:
    """``judge_tensor_gate(gate)``: the gate on the target's layer-by-layer comparison, against its tensor section."""
    return lambda gate: judge(
        bm_record, gate, dut_target.id, tensor_comparison(dut_target), thresholds.tensor[dut_target.precision]
    )


def test_mean_layer_error(judge_tensor_gate):
    judge_tensor_gate(MEAN_LAYER_ERROR)


def test_worst_layer_error(judge_tensor_gate):
    judge_tensor_gate(WORST_LAYER_ERROR)


def test_cosine_similarity(judge_tensor_gate):
    judge_tensor_gate(MIN_LAYER_COSINE)


def test_kl_divergence(judge_tensor_gate):
    judge_tensor_gate(MAX_LAYER_KL)


def test_no_nan_or_inf_where_the_reference_has_none(judge_tensor_gate):
    judge_tensor_gate(NONFINITE_MISMATCH)
