"""Synchronised timing on pytest-benchmark: warm-up, first call, percentiles, throughput, memory.

Accelerators queue kernels and return at once, so a timer stopped right after a call
measures the launch, not the work. Every timed call here is therefore followed by
``devices.synchronize`` *inside* the timed region, and the work left queued by whatever
ran before is drained *before* the timer starts (pytest-benchmark's ``setup`` hook, which
runs outside the timing). The CPU's synchronisation is a no-op, so the same code times all
devices (anchors.md section 5: ``torch.npu.synchronize()`` inside ``fn``).

Timings are split the way ais_bench splits them: the model alone on a device-resident batch
(its ``NPU_compute_time``) and end to end, preprocessing, copies and postprocessing included.
The first call is timed on its own (graph compilation on an NPU: seed 001 measured 36 s)
and never mixed into the percentiles, nor are the warm-up rounds.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import torch

from pytest_blendmask import devices

T = TypeVar("T")
Clock = Callable[[], float]
PERCENTILES = (50, 90, 99)
# A loop whose coefficient of variation exceeds this is flagged noisy: reported, never failed.
# trtexec warns "GPU compute time is unstable" above 1 % (kUNSTABLE_PERF_REPORTING_THRESHOLD,
# TensorRT samples/common/sampleReporting.cpp) on a dedicated GPU; CI times on 2 shared CPU
# cores where a few percent is ordinary, so the flag marks a number worth a rerun instead.
NOISY_COV = 0.05


class BenchmarkLike(Protocol):
    """The part of pytest-benchmark's ``benchmark`` fixture used here (no pytest import needed)."""

    disabled: bool
    stats: Any

    def pedantic(self, target: Callable[..., Any], *, setup: Callable[[], Any] | None, rounds: int,
                 warmup_rounds: int) -> Any: ...


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation between closest ranks (numpy's default).

    With the n samples sorted as x_0 <= ... <= x_{n-1}, h = (n - 1) q / 100 and
    P_q = x_floor(h) + (h - floor(h)) (x_floor(h)+1 - x_floor(h)). With few samples the
    high percentiles approach the maximum: p99 of 10 rounds is 0.09 of the way from the
    9th to the 10th value, which is why the round count is reported next to them.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100]; got {q}")
    ordered = sorted(samples)
    h = (len(ordered) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def coefficient_of_variation(samples: Sequence[float]) -> float:
    """Population standard deviation over mean, sigma / mu with sigma^2 = sum (x_i - mu)^2 / n.

    The population form (divide by n) is trtexec's, and is defined for one sample (0: no
    spread measured). A mean of 0 gives infinity, as in trtexec.
    """
    if not samples:
        raise ValueError("coefficient of variation of no samples")
    mean = statistics.fmean(samples)
    return statistics.pstdev(samples, mean) / mean if mean else math.inf


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency over the timed rounds, in milliseconds (warm-up excluded)."""

    rounds: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cov: float  # coefficient of variation of the rounds, see ``coefficient_of_variation``

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        """Summarise per-round durations given in seconds."""
        ms = [s * 1e3 for s in samples]
        p50, p90, p99 = (percentile(ms, q) for q in PERCENTILES)
        return cls(len(ms), sum(ms) / len(ms), min(ms), max(ms), p50, p90, p99, coefficient_of_variation(ms))

    @property
    def noisy(self) -> bool:
        """Whether the rounds vary by more than ``NOISY_COV`` of their mean."""
        return self.cov > NOISY_COV

    def throughput(self, batch_size: int) -> float:
        """Images per second: batch_size / mean latency (ais_bench's 1000 * batchsize / mean ms)."""
        return batch_size * 1e3 / self.mean_ms

    def median_throughput(self, batch_size: int) -> float:
        """Images per second at the median latency: what a typical round achieves.

        One round slowed tenfold by another process moves the mean, not the median; on a quiet
        machine the two agree.
        """
        return batch_size * 1e3 / self.p50_ms


def synchronized(fn: Callable[[], T], device: torch.device) -> Callable[[], T]:
    """``fn`` followed by a device synchronisation, so a timer around it sees the finished work."""

    def call() -> T:
        result = fn()
        devices.synchronize(device)
        return result

    return call


def time_first_call(fn: Callable[[], Any], device: torch.device, clock: Clock = time.perf_counter) -> float:
    """Seconds taken by one synchronised call: run it before any warm-up to see compilation."""
    devices.synchronize(device)
    start = clock()
    synchronized(fn, device)()
    return clock() - start


def time_rounds(
    fn: Callable[[], Any], device: torch.device, *, rounds: int, warmup_rounds: int, clock: Clock = time.perf_counter
) -> list[float]:
    """Per-round seconds of ``fn`` after ``warmup_rounds`` untimed calls, synchronised like ``benchmark_rounds``.

    For what pytest-benchmark does not time (each test gets one ``benchmark``): the
    end-to-end loop next to the benchmarked model-only loop.
    """
    if rounds < 1 or warmup_rounds < 0:
        raise ValueError(f"need rounds >= 1 and warmup_rounds >= 0; got {rounds} and {warmup_rounds}")
    call = synchronized(fn, device)
    for _ in range(warmup_rounds):
        call()
    samples = []
    for _ in range(rounds):
        devices.synchronize(device)
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


def benchmark_rounds(
    benchmark: BenchmarkLike, fn: Callable[[], Any], device: torch.device, *, rounds: int, warmup_rounds: int
) -> list[float] | None:
    """Time ``fn`` with ``benchmark.pedantic`` (one call per round); per-round seconds, or None if disabled.

    pytest-benchmark keeps every round's duration (``stats.stats.data``), from which the
    percentiles are computed; with ``--benchmark-disable`` (or under xdist, where it
    disables itself) it calls ``fn`` once and times nothing.
    """
    benchmark.pedantic(
        synchronized(fn, device),
        setup=lambda: devices.synchronize(device),
        rounds=rounds,
        warmup_rounds=warmup_rounds,
    )
    if benchmark.disabled or benchmark.stats is None:
        return None
    return list(benchmark.stats.stats.data)


@dataclass(frozen=True)
class Speedup:
    """How many times faster ``candidate`` ran than ``baseline``, from interleaved rounds."""

    ratio: float  # median over rounds of baseline time / candidate time
    baseline: LatencyStats
    candidate: LatencyStats


def paired_speedup(
    baseline: Callable[[], Any],
    candidate: Callable[[], Any],
    device: torch.device,
    *,
    rounds: int,
    warmup_rounds: int,
    clock: Clock = time.perf_counter,
) -> Speedup:
    """Time the two callables alternately, round by round, and take the median of the per-round ratios.

    On a shared machine the load drifts over seconds; alternating puts both sides of each
    ratio under the same load, and the median drops the rounds where it changed between
    them. This is a ratio measured in one run, robust where an absolute time limit flakes.
    """
    if rounds < 1:
        raise ValueError(f"need rounds >= 1; got {rounds}")
    base, cand = [], []
    for _ in range(warmup_rounds + rounds):
        base.append(time_rounds(baseline, device, rounds=1, warmup_rounds=0, clock=clock)[0])
        cand.append(time_rounds(candidate, device, rounds=1, warmup_rounds=0, clock=clock)[0])
    base, cand = base[warmup_rounds:], cand[warmup_rounds:]
    ratio = statistics.median(b / c for b, c in zip(base, cand))
    return Speedup(ratio, LatencyStats.from_seconds(base), LatencyStats.from_seconds(cand))


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, then restore the previous count.

    PIL works one image at a time on one core; comparing it with torch ops on one thread
    compares the work each does, not how many idle cores the machine happens to have.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory and what it covers: the accelerator's allocator since its last reset, or the CPU process's RSS."""

    bytes: int
    scope: str

    @classmethod
    def read(cls, device: torch.device) -> PeakMemory:
        scope = (
            f"{device.type} allocator peak since reset (max_memory_allocated)"
            if devices.is_accelerator(device)
            # The kernel keeps one high-water mark per process; it cannot be reset, so on the
            # CPU this is an upper bound over everything the session has run so far.
            else "process peak RSS since start (cannot be reset)"
        )
        return cls(devices.peak_memory_bytes(device), scope)


def host_conditions() -> dict[str, Any]:
    """What makes CPU timings on a shared machine comparable or not: threads, cores, load."""
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # A load above the core count means other processes took CPU time from this run.
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


@dataclass(frozen=True)
class Measurement:
    """Everything measured for one configuration: model-only and end-to-end, first call, memory."""

    batch_size: int
    first_inference_s: float
    warmup_rounds: int
    model: LatencyStats
    end_to_end: LatencyStats
    peak_memory: PeakMemory

    @property
    def throughput_ips(self) -> float:
        """Model-only images per second (compute on a device-resident batch)."""
        return self.model.throughput(self.batch_size)

    @property
    def throughput_p50_ips(self) -> float:
        """Model-only images per second at the median latency."""
        return self.model.median_throughput(self.batch_size)

    @property
    def e2e_throughput_ips(self) -> float:
        """End-to-end images per second (preprocess + copies + forward + postprocess)."""
        return self.end_to_end.throughput(self.batch_size)

    @property
    def noisy(self) -> bool:
        """Whether the model-only or the end-to-end rounds vary by more than ``NOISY_COV``."""
        return self.model.noisy or self.end_to_end.noisy

    def variation(self) -> str:
        """Both loops' CoV in words, e.g. ``CoV model-only 1.2 %, end-to-end 7.5 %: noisy (> 5 %)``."""
        text = f"CoV model-only {self.model.cov * 100:.1f} %, end-to-end {self.end_to_end.cov * 100:.1f} %"
        return f"{text}: noisy (> {NOISY_COV * 100:g} %)" if self.noisy else text

    def extra_info(self) -> dict[str, Any]:
        """Flat builtin values for ``benchmark.extra_info`` (pytest-benchmark writes them to its JSON)."""
        return {
            "batch_size": self.batch_size,
            "first_inference_s": round(self.first_inference_s, 4),
            "warmup_rounds": self.warmup_rounds,
            "model_only": {k: round(v, 4) for k, v in asdict(self.model).items()},
            "end_to_end": {k: round(v, 4) for k, v in asdict(self.end_to_end).items()},
            "throughput_ips": round(self.throughput_ips, 3),
            "throughput_p50_ips": round(self.throughput_p50_ips, 3),
            "e2e_throughput_ips": round(self.e2e_throughput_ips, 3),
            "noisy": self.noisy,
            "peak_memory_bytes": self.peak_memory.bytes,
            "peak_memory_scope": self.peak_memory.scope,
        }


def measure(
    benchmark: BenchmarkLike,
    model_fn: Callable[[], Any],
    e2e_fn: Callable[[], Any],
    device: torch.device,
    *,
    batch_size: int,
    warmup_rounds: int,
    rounds: int,
    e2e_rounds: int,
) -> Measurement | None:
    """First call, then model-only rounds on pytest-benchmark, then end-to-end rounds; None if benchmarking is off.

    The first call goes before anything else touches the model, so it carries the one-off
    costs (NPU graph compilation, allocator growth, oneDNN primitive creation). Peak memory
    covers the timed rounds of both loops.
    """
    first = time_first_call(model_fn, device)
    devices.reset_peak_memory(device)
    samples = benchmark_rounds(benchmark, model_fn, device, rounds=rounds, warmup_rounds=warmup_rounds)
    if samples is None:
        return None
    e2e = time_rounds(e2e_fn, device, rounds=e2e_rounds, warmup_rounds=1)
    return Measurement(
        batch_size=batch_size,
        first_inference_s=first,
        warmup_rounds=warmup_rounds,
        model=LatencyStats.from_seconds(samples),
        end_to_end=LatencyStats.from_seconds(e2e),
        peak_memory=PeakMemory.read(device),
    )
