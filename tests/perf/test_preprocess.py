"""The PIL baseline against the batched tensor path: 8 JPEG images to one model-ready batch.

Both paths are benchmarked (pytest-benchmark table and JSON), and the speed-up is measured
as a ratio in one run, with the two paths timed alternately (``paired_speedup``): an
absolute time limit would flake with the machine's load, a same-run ratio does not.
Everything runs on one intra-op thread: PIL uses one core, so the comparison is of the
work each path does, not of how many cores happen to be free.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from pytest_blendmask.data.preprocess import pil_preprocess, tensor_preprocess
from pytest_blendmask.fixtures import chosen_targets
from pytest_blendmask.model import get_config
from pytest_blendmask.perf.grid import eager_devices
from pytest_blendmask.perf.timing import benchmark_rounds, paired_speedup, torch_threads
from pytest_blendmask.perf.workload import synthetic_jpegs

pytestmark = pytest.mark.perf

BATCH = 8
MIN_SPEEDUP = 3.0
ROUNDS = 10
WARMUP_ROUNDS = 2
# Every named config uses detectron2's BGR constants.
PIXEL_MEAN, PIXEL_STD = get_config("lite").pixel_mean, get_config("lite").pixel_std


@dataclass(frozen=True)
class Case:
    """Images of ``source`` (H, W) resized to the network input ``size``; ``gated`` cases must reach MIN_SPEEDUP."""

    source: tuple[int, int]
    size: tuple[int, int]
    gated: bool

    @property
    def id(self) -> str:
        return f"{self.source[0]}x{self.source[1]}-to-{self.size[0]}x{self.size[1]}"


CASES = (
    Case((640, 640), (640, 640), gated=True),  # issue 5's gate: a batch of 8 at 640x640
    Case((480, 640), (640, 640), gated=False),  # VGA frames resized to the network input
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    devices = eager_devices(chosen_targets(metafunc.config))
    if "preprocess_device" in metafunc.fixturenames:
        metafunc.parametrize("preprocess_device", [torch.device(d) for d in devices], ids=devices)
    if "path_on" in metafunc.fixturenames:
        # The PIL baseline runs on the host whatever the targets; the tensor path on each device.
        paths = [("pil", "cpu")] + [("tensor", d) for d in devices]
        metafunc.parametrize("path_on", paths, ids=["pil"] + [f"tensor-{d}" for d in devices])


def _paths(case: Case, device: torch.device) -> dict[str, Callable[[], Any]]:
    """Both paths over the same images, each writing into its own reused output buffer."""
    encoded = synthetic_jpegs(BATCH, case.source)
    pil_out = torch.empty((BATCH, 3, *case.size))
    tensor_out = torch.empty((BATCH, 3, *case.size), device=device)
    return {
        "pil": lambda: pil_preprocess(encoded, case.size, PIXEL_MEAN, PIXEL_STD, out=pil_out),
        "tensor": lambda: tensor_preprocess(encoded, case.size, PIXEL_MEAN, PIXEL_STD, device, out=tensor_out),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_preprocess_benchmark(path_on: tuple[str, str], case: Case, benchmark: Any) -> None:
    path, where = path_on
    device = torch.device(where)
    benchmark.group = f"preprocess {BATCH} x {case.id}"
    with torch_threads(1):
        samples = benchmark_rounds(benchmark, _paths(case, device)[path], device, rounds=ROUNDS,
                                   warmup_rounds=WARMUP_ROUNDS)
    if samples is None:
        pytest.skip("pytest-benchmark is disabled (--benchmark-disable, or xdist): nothing was timed")
    benchmark.extra_info.update(
        path=path, device=where, batch_size=BATCH, source_size=list(case.source), input_size=list(case.size),
        torch_threads=1, throughput_ips=BATCH * len(samples) / sum(samples),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tensor_path_speedup(case: Case, preprocess_device: torch.device, bm_record: Callable[..., Any]) -> None:
    paths = _paths(case, preprocess_device)
    with torch_threads(1):
        result = paired_speedup(paths["pil"], paths["tensor"], preprocess_device, rounds=ROUNDS,
                                warmup_rounds=WARMUP_ROUNDS)
    detail = (
        f"{BATCH} images {case.id}: PIL p50 {result.baseline.p50_ms:.1f} ms, tensor path on {preprocess_device} "
        f"p50 {result.candidate.p50_ms:.1f} ms, median per-round ratio {result.ratio:.2f}x (1 thread)"
    )
    limit = MIN_SPEEDUP if case.gated else None  # the ungated case is recorded for information
    bm_record(
        "perf", str(preprocess_device), f"preprocess_speedup {case.id}", result.ratio, limit, "x",
        limit is None or result.ratio >= limit, op=">=" if case.gated else None, detail=detail,
        pil_p50_ms=result.baseline.p50_ms, tensor_p50_ms=result.candidate.p50_ms, rounds=ROUNDS,
    )
