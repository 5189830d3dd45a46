"""The comparison's C pass: the same sums as the numpy chunks, the arrays it takes, and the fallback."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pytest_blendmask.precision import compare_kernel, metrics
from pytest_blendmask.precision.compare_kernel import kernel_status, pair_sums

built_here = pytest.mark.skipif(
    not kernel_status().startswith("one pass in C"), reason=f"the C comparison pass is not built here: {kernel_status()}"
)
COUNTS = ("rel_n", "within_1", "within_5")


def both_passes(dut: torch.Tensor, ref: torch.Tensor) -> tuple[metrics._Sums, metrics._Sums]:
    pair = metrics._prepare(dut, ref)
    return metrics._accumulate(pair, 0, pair.size), metrics._accumulate_in_numpy(pair, 0, pair.size)


def pairs() -> list:
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(300_001, generator=g) * torch.logspace(-4, 4, 300_001)
    relu = torch.randn(70_000, generator=g).relu()
    return [
        pytest.param(wide + 1e-3 * torch.randn(300_001, generator=g), wide, id="wide-range-near-equal"),
        pytest.param((relu + 1e-2 * torch.randn(70_000, generator=g)).relu(), relu, id="relu-zeros-in-both"),
        pytest.param(relu.to(torch.bfloat16).float(), relu, id="bf16-rounded"),
        pytest.param(torch.full((1000,), 3.0), torch.randn(1000, generator=g), id="constant-device-tensor"),
        pytest.param(torch.randn(1000, generator=g), torch.full((1000,), -2.0), id="constant-reference"),
        pytest.param(torch.zeros(17), torch.zeros(17), id="all-zero"),
        pytest.param(5 * relu[:999], relu[:999], id="five-times"),
        *(pytest.param(torch.randn(n, generator=g), torch.randn(n, generator=g), id=f"{n}-elements") for n in (1, 2, 3, 5, 7, 9)),
    ]


@built_here
def test_the_kernel_builds_and_is_used_here():
    assert kernel_status().startswith("one pass in C"), kernel_status()
    assert pair_sums(np.ones(8, np.float32), np.ones(8, np.float32), (0, 1, 0, 1, 0.001, 0.005)) is not None


@built_here
@pytest.mark.parametrize("dut, ref", pairs())
def test_the_c_pass_gives_the_numpy_chunks_sums(dut, ref):
    # The counts are exact; maxima are the same doubles; sums differ only in the order of additions.
    c, numpy = both_passes(dut, ref)
    for field in dataclasses.fields(metrics._Sums):
        got, expected = getattr(c, field.name), getattr(numpy, field.name)
        if field.name in COUNTS or field.name.endswith("_max"):
            assert got == expected, field.name
        else:
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-300), field.name


@built_here
def test_metrics_of_a_large_pair_across_segments_and_threads_match_numpy(monkeypatch):
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(3_000_017, generator=g).relu()
    dut = ref + 1e-4 * torch.randn(3_000_017, generator=g)
    with_c = metrics.metrics_of_pairs([(dut, ref)], workers=2)[0]
    monkeypatch.setattr(metrics, "pair_sums", lambda d, r, params: None)
    with_numpy = metrics.metrics_of_pairs([(dut, ref)], workers=2)[0]
    for field in dataclasses.fields(metrics.TensorMetrics):
        assert getattr(with_c, field.name) == pytest.approx(getattr(with_numpy, field.name), rel=1e-10, abs=1e-18), field.name


@built_here
@pytest.mark.parametrize("d, r", [
    (np.ones(4, np.float64), np.ones(4, np.float64)),
    (np.ones(4, np.float32), np.ones(4, np.float64)),
    (np.ones(8, np.float32)[::2], np.ones(4, np.float32)),
], ids=["float64", "mixed", "strided"])
def test_other_dtypes_and_strided_arrays_are_left_to_numpy(d, r):
    assert pair_sums(d, r, (0, 1, 0, 1, 0.001, 0.005)) is None


@built_here
def test_mismatched_arrays_are_refused_with_what_was_given():
    with pytest.raises(ValueError, match=r"got \(4,\), \(3,\), 6"):
        pair_sums(np.ones(4, np.float32), np.ones(3, np.float32), (0, 1, 0, 1, 0.001, 0.005))


def test_a_float32_comparison_runs_the_c_pass_only_where_it_is_built(monkeypatch):
    calls = []
    numpy_pass = metrics._accumulate_in_numpy
    monkeypatch.setattr(metrics, "_accumulate_in_numpy", lambda *a: calls.append(a) or numpy_pass(*a))
    metrics.tensor_metrics(torch.ones(5), torch.ones(5))
    assert len(calls) == (0 if kernel_status().startswith("one pass in C") else 1)
    metrics.tensor_metrics(torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    assert len(calls) == (1 if kernel_status().startswith("one pass in C") else 2)


def test_without_the_vector_log_library_the_comparison_uses_numpy_and_says_why(fresh_kernels, monkeypatch):
    # A C library without libmvec (musl, macOS) fails to link: the comparison must still give its metrics.
    monkeypatch.setattr(compare_kernel, "LIBRARIES", ("-lno_such_vector_math",))
    assert kernel_status().startswith("numpy float64 chunks: building tensor_compare.c with ")
    assert not list((fresh_kernels / "kernels").glob("tensor_compare*.so"))
    computed = metrics.tensor_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
    assert computed.max_relative_error == pytest.approx(0.25) and computed.one_thousandth_error_ratio == pytest.approx(2 / 3)


def test_without_a_compiler_the_comparison_uses_numpy_and_says_why(fresh_kernels, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(fresh_kernels))
    assert kernel_status() == "numpy float64 chunks: no C compiler (set $CC, or install cc/gcc/clang)"
    assert pair_sums(np.ones(4, np.float32), np.ones(4, np.float32), (0, 1, 0, 1, 0.001, 0.005)) is None
    assert metrics.tensor_metrics(torch.ones(4), torch.ones(4) * 2).relative_l2_error == pytest.approx(0.5)
