"""Tensor metrics against hand-computed values, and the NaN/Inf/zero policy: each test runs
on both passes, the C loop (``compare_kernel.py``) and the numpy chunks it replaces where
it cannot be built."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pytest_blendmask.precision import metrics
from pytest_blendmask.precision.compare_kernel import kernel_status
from pytest_blendmask.precision.metrics import tensor_metrics

NAN, INF = math.nan, math.inf


@pytest.fixture(autouse=True, params=["C", "numpy"])
def comparison_pass(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(metrics, "pair_sums", lambda d, r, params: None)
    elif not kernel_status().startswith("one pass in C"):
        pytest.skip(f"the C comparison pass is not built here: {kernel_status()}")
    return request.param


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# d = [1, 2, 3] against r = [1, 2, 4]: one element off by 1.
# KL by hand: min-max weights p~ = [eps, 1/2, 1], q~ = [eps, 1/3, 1], sums 3/2 and 4/3, so
# KL = (1/3) log((1/3)/(1/4)) + (2/3) log((2/3)/(3/4)) (the eps terms are ~1e-7 * 0.1).
ONE_OFF = {
    "cosine_similarity": 17 / math.sqrt(14 * 21),
    "max_abs_error": 1.0,
    "mean_abs_error": 1 / 3,
    "rmse": math.sqrt(1 / 3),
    "relative_l2_error": 1 / math.sqrt(21),
    "max_relative_error": 0.25,
    "mean_relative_error": 0.25 / 3,
    "one_thousandth_error_ratio": 2 / 3,
    "five_thousandths_error_ratio": 2 / 3,
    "kl_divergence": math.log(4 / 3) / 3 + 2 / 3 * math.log(8 / 9),
}

# A BatchNorm whose running_var is 25x too large divides its centred output by 5: a
# uniform scale that cosine (and KL, being scale-invariant) cannot see.
BN_VAR_X25 = {
    "cosine_similarity": 1.0,
    "relative_l2_error": 0.8,
    "max_relative_error": 0.8,
    "mean_relative_error": 0.8,
    "one_thousandth_error_ratio": 0.0,
    "kl_divergence": 0.0,
}

# The reference has a zero: it is left out of the element-wise relative metrics only.
# |d - r| = [1, 0, 1]; relative errors over r != 0: [0, 1/4].
REF_ZERO = {
    "max_abs_error": 1.0,
    "mean_abs_error": 2 / 3,
    "relative_l2_error": math.sqrt(2 / 20),
    "max_relative_error": 0.25,
    "mean_relative_error": 0.125,
    "one_thousandth_error_ratio": 0.5,
    "five_thousandths_error_ratio": 0.5,
}

IDENTICAL = {
    "cosine_similarity": 1.0,
    "max_abs_error": 0.0,
    "mean_abs_error": 0.0,
    "rmse": 0.0,
    "relative_l2_error": 0.0,
    "max_relative_error": 0.0,
    "one_thousandth_error_ratio": 1.0,
    "kl_divergence": 0.0,
}

CASES = [
    pytest.param(t(1, 2, 3), t(1, 2, 4), ONE_OFF, id="one-element-off"),
    pytest.param(t(1, -2, 3, 4) / 5, t(1, -2, 3, 4), BN_VAR_X25, id="uniform-scale-bn-running-var-x25"),
    pytest.param(t(1, 2, 5), t(0, 2, 4), REF_ZERO, id="zero-in-reference"),
    pytest.param(t(0, 0), t(0, 0), IDENTICAL, id="both-all-zero"),
    pytest.param(torch.tensor([1, 2, 3], dtype=torch.float16), t(1, 2, 3), IDENTICAL, id="fp16-vs-fp32-dtype-is-not-an-error"),
    pytest.param(torch.tensor([1, 2, 3], dtype=torch.bfloat16), t(1, 2, 3), IDENTICAL, id="bf16-vs-fp32"),
    pytest.param(t(NAN, 1, 2), t(NAN, 1, 2), IDENTICAL, id="matched-nan-left-out"),
    pytest.param(t(INF, -INF, 3), t(INF, -INF, 3), IDENTICAL, id="matched-inf-left-out"),
    pytest.param(t(7, 7, 7), t(7, 7, 7), IDENTICAL, id="constant-tensor-kl-uniform"),
    pytest.param(t(), t(), IDENTICAL, id="empty-compares-equal"),
    pytest.param(
        t(0, 1), t(0, 0), {"cosine_similarity": NAN, "relative_l2_error": INF, "max_relative_error": 0.0, "one_thousandth_error_ratio": 1.0},
        id="reference-all-zero-dut-not",
    ),
    pytest.param(t(2, 4, 6), t(1, 2, 3), {"kl_divergence": 0.0, "cosine_similarity": 1.0, "relative_l2_error": 1.0}, id="kl-is-scale-invariant"),
]


@pytest.mark.parametrize("dut, ref, expected", CASES)
def test_metric_values_match_hand_computation(dut, ref, expected):
    computed = tensor_metrics(dut, ref)
    for name, value in expected.items():
        assert getattr(computed, name) == pytest.approx(value, rel=1e-6, abs=1e-12, nan_ok=True), name
        # Each single-metric function is the same number.
        assert getattr(metrics, name)(dut, ref) == pytest.approx(value, rel=1e-6, abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize(
    "dut, ref, unmatched",
    [
        pytest.param(t(NAN, 2), t(1, 2), 1, id="nan-where-reference-finite"),
        pytest.param(t(1, INF, INF), t(1, 2, 3), 2, id="inf-where-reference-finite"),
        pytest.param(t(1, 2), t(NAN, 2), 1, id="finite-where-reference-nan"),
        pytest.param(t(INF, 2), t(-INF, 2), 1, id="opposite-infinities"),
        pytest.param(t(NAN, 2), t(INF, 2), 1, id="nan-against-inf"),
    ],
)
def test_unmatched_nonfinite_positions_make_every_metric_nan(dut, ref, unmatched):
    computed = tensor_metrics(dut, ref)
    assert computed.nonfinite_mismatch == unmatched
    assert metrics.nonfinite_mismatch(dut, ref) == unmatched
    for name in ONE_OFF:
        assert math.isnan(getattr(computed, name)), name


def test_matched_nonfinite_positions_are_left_out_of_the_counts():
    computed = tensor_metrics(t(NAN, INF, 1, 2), t(NAN, INF, 1, 4))
    assert (computed.numel, computed.relative_numel, computed.nonfinite_mismatch) == (2, 2, 0)
    assert computed.max_relative_error == pytest.approx(0.5)


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"shapes differ: device under test \(2,\), reference \(3,\)"):
        tensor_metrics(t(1, 2), t(1, 2, 3))


def test_numpy_arrays_and_tensors_give_the_same_metrics():
    ref = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)
    dut = ref * 1.01
    assert tensor_metrics(dut, ref) == tensor_metrics(torch.from_numpy(dut), torch.from_numpy(ref))


@pytest.mark.parametrize("segment", [None, 2 * metrics._CHUNK + 7], ids=["one-segment", "segments-across-threads"])
def test_chunked_pass_agrees_with_direct_float64_formulas(monkeypatch, segment):
    # Several chunks, a ragged tail, ReLU zeros in both tensors (the exclusion path) and a
    # wide dynamic range; the expectations are written out directly in float64. Split into
    # segments (not on chunk boundaries) on two threads, the sums merge to the same numbers.
    if segment is not None:
        monkeypatch.setattr(metrics, "_SEGMENT", segment)
    generator = torch.Generator().manual_seed(0)
    n = 3 * metrics._CHUNK + 123
    ref = (torch.randn(n, generator=generator) * torch.logspace(-3, 3, n)).relu()
    dut = (ref + 1e-3 * torch.randn(n, generator=generator) * ref.abs().clamp(min=1e-3)).relu()
    d, r = dut.double().numpy(), ref.double().numpy()
    e = d - r
    keep = r != 0
    rel = np.abs(e[keep]) / np.abs(r[keep])

    def weights(x):
        w = np.maximum((x - x.min()) / (x.max() - x.min()), metrics.FLOAT32_EPS)
        return w / w.sum()

    p, q = weights(d), weights(r)
    expected = {
        "cosine_similarity": d @ r / math.sqrt((d @ d) * (r @ r)),
        "max_abs_error": np.abs(e).max(),
        "mean_abs_error": np.abs(e).mean(),
        "rmse": math.sqrt((e @ e) / n),
        "relative_l2_error": math.sqrt((e @ e) / (r @ r)),
        "max_relative_error": rel.max(),
        "mean_relative_error": rel.mean(),
        "one_thousandth_error_ratio": np.mean(rel < 0.001),
        "five_thousandths_error_ratio": np.mean(rel < 0.005),
        "kl_divergence": float(np.sum(p * np.log(p / q))),
    }
    computed, again = metrics.metrics_of_pairs([(dut, ref), (dut, ref)], workers=2)
    assert computed == again
    assert computed.relative_numel == int(keep.sum())
    for name, value in expected.items():
        assert getattr(computed, name) == pytest.approx(value, rel=1e-9, abs=1e-15), name


def test_comparing_leaves_torchs_thread_count_as_it_was():
    """The comparison runs torch on one intra-op thread while its own threads work, and gives
    the caller's setting back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        metrics.metrics_of_pairs([(torch.ones(10), torch.ones(10))], workers=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
