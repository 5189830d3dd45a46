"""The one-pass C reduction behind stats dumps: its numbers, the tensors it takes, and the fallback to torch."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pytest_blendmask.precision import dump as dump_module
from pytest_blendmask.precision.c_kernels import compiler, library_path
from pytest_blendmask.precision.dump import DumpCollector
from pytest_blendmask.precision.stats_kernel import FLAGS, SOURCE_NAME, kernel_status, one_pass_sums

needs_compiler = pytest.mark.skipif(compiler() is None, reason="no C compiler on this machine ($CC, cc, gcc, clang): stats dumps use torch's reductions")


def exact(t: torch.Tensor) -> tuple[float, float, float, float]:
    wide = t.double()
    return wide.max().item(), wide.min().item(), wide.sum().item(), (wide * wide).sum().item()


@needs_compiler
def test_the_kernel_builds_and_is_used_here():
    assert kernel_status().startswith("one pass in C"), kernel_status()


@needs_compiler
@pytest.mark.parametrize("count", [1, 15, 16, 17, 4096, 3 * 4096 + 5, 100_003])
def test_max_and_min_are_exact_and_the_sums_as_close_as_float64s(count):
    t = torch.randn(count, generator=torch.Generator().manual_seed(count)) * 40 + 3
    high, low, total, squares = one_pass_sums(t)
    expected = exact(t)
    assert (high, low) == expected[:2]
    # torch's float32 sum and dot are off by up to ~1e-5 here; the kernel adds its block sums in double.
    assert total == pytest.approx(expected[2], rel=1e-6, abs=1e-3) and squares == pytest.approx(expected[3], rel=1e-6)


@needs_compiler
def test_any_dense_layout_is_read_and_a_strided_view_is_left_to_torch():
    x = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(0))
    for dense in (x.contiguous(memory_format=torch.channels_last), x.transpose(0, 3), x[1:], x[0, 3]):
        got, expected = one_pass_sums(dense), exact(dense)
        assert got is not None and got[:2] == expected[:2] and got[2:] == pytest.approx(expected[2:], rel=1e-6, abs=1e-4)
    for strided in (x[:, ::2], x[..., 1:], x[:, :, 2:3], torch.randn(1, 4).expand(3, 4)):
        assert one_pass_sums(strided) is None


@needs_compiler
@pytest.mark.parametrize("t", [
    torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([1.0, float("inf")]), torch.tensor([-float("inf"), float("inf")]),
    torch.tensor([3e19, 1.0]), torch.ones(3, dtype=torch.float16), torch.ones(3, dtype=torch.bfloat16),
    torch.ones(3, dtype=torch.float64), torch.ones(0), torch.ones(3)._neg_view(),
], ids=["nan", "inf", "both-infinities", "square-overflows", "float16", "bfloat16", "float64", "empty", "negative-view"])
def test_nan_infinity_other_dtypes_and_odd_views_are_left_to_torch(t):
    assert one_pass_sums(t) is None


class Doubling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 2


def stats_of(model: nn.Module, x: torch.Tensor) -> list[tuple[float, float, float, float]]:
    collector = DumpCollector(model, mode="stats", include_root=True)
    with collector, torch.no_grad():
        model(x)
    return [(e.stats.max, e.stats.min, e.stats.mean, e.stats.norm) for e in collector.dump]


@needs_compiler
def test_a_stats_dump_reduces_cpu_float32_outputs_without_torchs_three_passes(monkeypatch):
    model, x = Doubling().eval(), torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    calls = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: calls.append(1) or aminmax(*a, **k))
    with_kernel = stats_of(model, x)
    assert calls == []
    monkeypatch.setattr(dump_module, "one_pass_sums", lambda t: None)
    with_torch = stats_of(model, x)
    assert len(calls) == 2
    for a, b in zip(with_kernel, with_torch):
        assert a[:2] == b[:2] and a[2:] == pytest.approx(b[2:], rel=1e-5)


def test_a_nan_output_keeps_torchs_nan_statistics():
    model = Doubling().eval()
    with torch.no_grad():
        model.conv.bias[0] = float("nan")
    stats = stats_of(model, torch.ones(1, 3, 5, 5))
    assert all(math.isnan(value) for entry in stats for value in entry)


def test_without_a_compiler_the_dump_uses_torch_and_says_why(fresh_kernels, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(fresh_kernels))
    assert compiler() is None
    assert kernel_status() == "torch reductions: no C compiler (set $CC, or install cc/gcc/clang)"
    assert one_pass_sums(torch.ones(4)) is None
    assert stats_of(Doubling().eval(), torch.ones(1, 3, 5, 5))  # the dump still works


def test_a_failed_build_names_the_compiler_and_its_error(fresh_kernels, monkeypatch):
    monkeypatch.setenv("CC", f"{fresh_kernels}/no-such-cc -O2")
    assert kernel_status().startswith(f"torch reductions: building tensor_stats.c with {fresh_kernels}/no-such-cc failed:")
    assert one_pass_sums(torch.ones(4)) is None
    assert not list((fresh_kernels / "kernels").glob("*.so"))  # no half-written library is left to load


@needs_compiler
def test_a_damaged_library_is_reported_with_its_path(fresh_kernels):
    library = library_path(SOURCE_NAME, compiler(), FLAGS)
    library.parent.mkdir(parents=True)
    library.write_bytes(b"not a shared library")
    assert kernel_status().startswith(f"torch reductions: loading {library} failed")
    assert kernel_status().endswith("delete it to rebuild")
