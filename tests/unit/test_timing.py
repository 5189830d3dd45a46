"""Synchronised timing: percentiles, where the device synchronisations fall, memory readings.

A fake device module stands in for ``torch.cuda``: ``devices`` reaches accelerators only
through ``torch.get_device_module``, so patching that routes every synchronisation of a
``cuda:0`` device here, where it is logged next to the clock reads and the timed calls.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from pytest_blendmask.perf import timing
from pytest_blendmask.perf.timing import LatencyStats, PeakMemory, percentile

CUDA = torch.device("cuda:0")


class FakeDeviceModule:
    """The parts of ``torch.cuda`` that ``devices`` calls, logging into a shared event list."""

    def __init__(self, events: list[str], peak: int = 12345) -> None:
        self.events = events
        self.peak = peak

    def synchronize(self, device: torch.device) -> None:
        self.events.append("sync")

    def reset_peak_memory_stats(self, device: torch.device) -> None:
        self.events.append("reset")

    def max_memory_allocated(self, device: torch.device) -> int:
        return self.peak


class FakeClock:
    """A clock that logs each read and advances by the next of the given steps."""

    def __init__(self, events: list[str], steps: list[float]) -> None:
        self.events, self.steps, self.now = events, list(steps), 0.0

    def __call__(self) -> float:
        self.events.append("clock")
        value = self.now
        if self.steps:
            self.now += self.steps.pop(0)
        return value


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The event log of a fake cuda device module patched into torch."""
    log: list[str] = []
    fake = FakeDeviceModule(log)
    real = torch.get_device_module
    monkeypatch.setattr(torch, "get_device_module", lambda kind=None: fake if str(kind) == "cuda" else real(kind))
    return log


def call(events: list[str]) -> Callable[[], str]:
    def fn() -> str:
        events.append("fn")
        return "result"

    return fn


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),  # h = 3 * 0.9 = 2.7: 3 + 0.7 * (4 - 3)
        ([1.0, 2.0, 3.0, 4.0], 99, 3.97),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),  # unsorted input
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        ([7.0], 99, 7.0),
        ([10.0] * 9 + [100.0], 99, 91.9),  # one slow round of ten dominates p99
    ],
)
def test_percentile_on_known_samples(samples: list[float], q: float, expected: float) -> None:
    assert percentile(samples, q) == pytest.approx(expected)


def test_percentile_matches_numpy_linear() -> None:
    samples = list(np.random.default_rng(0).exponential(5.0, size=37))
    for q in (1, 50, 90, 99):
        assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)))


@pytest.mark.parametrize(("samples", "q", "message"), [([], 50, "no samples"), ([1.0], 101, r"\[0, 100\]")])
def test_percentile_rejects(samples: list[float], q: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(samples, q)


def test_latency_stats_from_seconds_and_throughput() -> None:
    stats = LatencyStats.from_seconds([0.010, 0.020, 0.030, 0.040])
    assert (stats.rounds, stats.mean_ms, stats.min_ms, stats.max_ms) == (4, pytest.approx(25.0), pytest.approx(10.0),
                                                                        40.0)
    assert (stats.p50_ms, stats.p90_ms, stats.p99_ms) == (pytest.approx(25.0), pytest.approx(37.0), pytest.approx(39.7))
    assert stats.throughput(8) == pytest.approx(320.0)  # 8 images per 25 ms
    assert stats.median_throughput(8) == pytest.approx(320.0)
    slow_round = LatencyStats.from_seconds([0.010, 0.010, 0.010, 0.370])
    assert (slow_round.throughput(1), slow_round.median_throughput(1)) == (pytest.approx(10.0), pytest.approx(100.0))


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([5.0], 0.0),  # one round: no spread measured
        ([9.0, 11.0], 0.1),  # sigma 1 (population), mean 10
        ([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 0.4),  # the textbook sigma 2, mean 5
        ([0.0, 0.0], math.inf),
    ],
)
def test_coefficient_of_variation_is_population_sigma_over_mean(samples: list[float], expected: float) -> None:
    assert timing.coefficient_of_variation(samples) == pytest.approx(expected)
    if math.isfinite(expected) and len(samples) > 1:
        assert expected == pytest.approx(np.std(samples) / np.mean(samples))


def test_coefficient_of_variation_of_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        timing.coefficient_of_variation([])


@pytest.mark.parametrize(("spread", "noisy"), [(0.049, False), (0.05, False), (0.051, True)])
def test_a_loop_is_noisy_only_above_five_percent(spread: float, noisy: bool) -> None:
    assert timing.NOISY_COV == 0.05
    stats = LatencyStats.from_seconds([1.0 - spread, 1.0 + spread])  # CoV = spread exactly
    assert stats.cov == pytest.approx(spread) and stats.noisy is noisy


def _measurement(model_s: list[float], e2e_s: list[float]) -> timing.Measurement:
    return timing.Measurement(1, 0.1, 1, LatencyStats.from_seconds(model_s), LatencyStats.from_seconds(e2e_s),
                              PeakMemory(0, "none"))


def test_a_point_is_noisy_when_either_loop_is_and_says_so() -> None:
    steady = _measurement([0.010, 0.010], [0.030, 0.030])
    assert not steady.noisy and steady.variation() == "CoV model-only 0.0 %, end-to-end 0.0 %"
    assert steady.extra_info()["noisy"] is False
    shaky_e2e = _measurement([0.010, 0.010], [0.020, 0.030])  # 25 +- 5 ms: CoV 20 %
    assert shaky_e2e.noisy and shaky_e2e.extra_info()["noisy"] is True
    assert shaky_e2e.variation() == "CoV model-only 0.0 %, end-to-end 20.0 %: noisy (> 5 %)"
    assert _measurement([0.009, 0.011], [0.030, 0.030]).noisy  # model-only 10 %


def test_cpu_synchronisation_never_reaches_a_device_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_device_module", lambda kind=None: pytest.fail("the CPU has nothing to synchronise"))
    log: list[str] = []
    assert timing.synchronized(call(log), torch.device("cpu"))() == "result"
    assert log == ["fn"]


def test_synchronized_waits_after_the_call(events: list[str]) -> None:
    assert timing.synchronized(call(events), CUDA)() == "result"
    assert events == ["fn", "sync"]


def test_first_call_is_synchronised_inside_the_timed_region(events: list[str]) -> None:
    clock = FakeClock(events, [2.5])
    assert timing.time_first_call(call(events), CUDA, clock=clock) == 2.5
    assert events == ["sync", "clock", "fn", "sync", "clock"]


def test_time_rounds_excludes_warmup_and_syncs_around_every_round(events: list[str]) -> None:
    clock = FakeClock(events, [0.1, 0.0, 0.3, 0.0])
    samples = timing.time_rounds(call(events), CUDA, rounds=2, warmup_rounds=1, clock=clock)
    assert samples == pytest.approx([0.1, 0.3])
    warmup, timed = events[:2], events[2:]
    assert warmup == ["fn", "sync"]  # no clock read: warm-up is not timed
    assert timed == ["sync", "clock", "fn", "sync", "clock"] * 2


@pytest.mark.parametrize(("rounds", "warmup"), [(0, 1), (1, -1)])
def test_time_rounds_rejects_bad_counts(rounds: int, warmup: int) -> None:
    with pytest.raises(ValueError, match="rounds >= 1"):
        timing.time_rounds(lambda: None, torch.device("cpu"), rounds=rounds, warmup_rounds=warmup)


def test_paired_speedup_alternates_and_takes_the_median_ratio(events: list[str]) -> None:
    # Rounds: warm-up pair, then ratios 3.0, 2.0, 4.0 -> median 3.0.
    steps = [9.0, 0.0, 1.0, 0.0, 0.3, 0.0, 0.1, 0.0, 0.2, 0.0, 0.1, 0.0, 0.4, 0.0, 0.1, 0.0]
    clock = FakeClock(events, steps)
    slow, fast = (lambda: events.append("slow")), (lambda: events.append("fast"))
    result = timing.paired_speedup(slow, fast, CUDA, rounds=3, warmup_rounds=1, clock=clock)
    assert result.ratio == pytest.approx(3.0)
    assert (result.baseline.rounds, result.candidate.rounds) == (3, 3)
    assert [e for e in events if e in ("slow", "fast")] == ["slow", "fast"] * 4


def test_torch_threads_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with timing.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_peak_memory_reads_the_allocator_on_accelerators(events: list[str]) -> None:
    peak = PeakMemory.read(CUDA)
    assert peak == PeakMemory(12345, "cuda allocator peak since reset (max_memory_allocated)")


def test_peak_memory_on_the_cpu_is_the_process_rss() -> None:
    peak = PeakMemory.read(torch.device("cpu"))
    assert peak.bytes > 10 * 2**20  # a Python process with torch loaded
    assert peak.scope == "process peak RSS since start (cannot be reset)"


class FakeBenchmark:
    """pytest-benchmark's pedantic contract: setup before every round, warm-up rounds untimed."""

    def __init__(self, events: list[str], disabled: bool = False) -> None:
        self.events, self.disabled, self.stats = events, disabled, None

    def pedantic(self, target: Callable[[], Any], *, setup: Callable[[], Any], rounds: int, warmup_rounds: int) -> Any:
        self.events.append("pedantic")
        if self.disabled:
            setup()
            return target()
        data = []
        for index in range(warmup_rounds + rounds):
            setup()
            target()
            if index >= warmup_rounds:
                data.append(0.002)
        self.stats = type("Metadata", (), {"stats": type("Stats", (), {"data": data})()})()
        return None


def test_measure_orders_first_call_reset_model_rounds_then_end_to_end(events: list[str]) -> None:
    model = lambda: events.append("model")  # noqa: E731
    e2e = lambda: events.append("e2e")  # noqa: E731
    measured = timing.measure(FakeBenchmark(events), model, e2e, CUDA, batch_size=4, warmup_rounds=1, rounds=3,
                              e2e_rounds=2)
    first_model = events.index("model")
    assert events.index("reset") > first_model  # the first call's allocations stay out of the peak window
    assert events.index("pedantic") > events.index("reset")
    assert events.count("model") == 1 + 1 + 3 and events.count("e2e") == 1 + 2
    assert max(i for i, e in enumerate(events) if e == "model") < events.index("e2e")
    assert (measured.model.rounds, measured.end_to_end.rounds) == (3, 2)
    assert measured.throughput_ips == measured.throughput_p50_ips == pytest.approx(4 / 0.002)
    info = measured.extra_info()
    json.dumps(info)  # builtin types only: pytest-benchmark writes it to its JSON
    assert {"first_inference_s", "model_only", "end_to_end", "throughput_ips", "throughput_p50_ips",
            "e2e_throughput_ips", "peak_memory_bytes", "peak_memory_scope", "warmup_rounds"} <= set(info)
    assert set(info["model_only"]) == {"rounds", "mean_ms", "min_ms", "max_ms", "p50_ms", "p90_ms", "p99_ms", "cov"}
    assert info["peak_memory_bytes"] == 12345
    assert info["model_only"]["cov"] == 0.0  # every fake round took 2 ms
    # The end-to-end loop times the real lambdas (sub-microsecond, jittery): noisy follows either loop.
    assert info["noisy"] is (measured.end_to_end.cov > timing.NOISY_COV)


def test_measure_returns_none_when_benchmarking_is_disabled(events: list[str]) -> None:
    assert timing.measure(FakeBenchmark(events, disabled=True), lambda: None, lambda: None, CUDA, batch_size=1,
                          warmup_rounds=1, rounds=3, e2e_rounds=2) is None


BENCHMARK_TEST = """
import json, torch
from pytest_blendmask.perf import timing

def test_timed(benchmark, monkeypatch):
    log = []
    fake = type("Fake", (), {{"synchronize": lambda self, d: log.append("sync")}})()
    real = torch.get_device_module
    monkeypatch.setattr(torch, "get_device_module", lambda k=None: fake if str(k) == "cuda" else real(k))
    samples = timing.benchmark_rounds(benchmark, lambda: log.append("fn"), torch.device("cuda:0"), rounds=3,
                                      warmup_rounds=2)
    with open("result.json", "w") as out:
        json.dump({{"events": log, "samples": samples}}, out)
"""


@pytest.mark.parametrize(("args", "timed"), [((), True), (("--benchmark-disable",), False)])
def test_benchmark_rounds_syncs_before_and_after_every_pedantic_round(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], timed: bool
) -> None:
    # pytest-benchmark disables itself in an xdist worker, which an in-process run inherits from this one's environment.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(BENCHMARK_TEST.format())
    pytester.runpytest_inprocess("-p", "no:cacheprovider", *args).assert_outcomes(passed=1)
    result = json.loads((pytester.path / "result.json").read_text())
    if timed:
        # setup (outside the timer) drains the device, the timed call ends with a sync; 2 warm-up + 3 rounds.
        assert result["events"] == ["sync", "fn", "sync"] * 5
        assert len(result["samples"]) == 3 and all(s > 0 and math.isfinite(s) for s in result["samples"])
    else:
        assert result["events"] == ["sync", "fn", "sync"] and result["samples"] is None


def test_host_conditions_name_threads_cores_and_load() -> None:
    conditions = timing.host_conditions()
    assert conditions["torch_threads"] == torch.get_num_threads()
    assert conditions["cpu_count"] >= 1 and conditions["load_avg_1min"] >= 0
