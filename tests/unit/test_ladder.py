"""The ladder and serial-vs-streams tables, computed from given points.

The points carry seed 000's published NPU throughputs (bs 8, 640x640), so the expected
speed-ups are the seed's own: +4.8 % (BN), +32.1 % (fp16), +55.7 % (BN + fp16), +103 % (streams).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_blendmask.perf.ladder import (
    GatePoints,
    GridDtype,
    Mode,
    PerfPoint,
    PointConfig,
    build_ladder,
    build_ladders,
    build_streams_tables,
    gate_points,
    write_perf_report,
)

SIZE = (640, 640)
STREAMS_REASON = "stream-parallel FPN heads need a cuda or npu device; cpu has no streams"


def point(batch: int, dtype: GridDtype, norm: str, mode: Mode, ips: float | None, *, device: str = "npu:0",
          size: tuple[int, int] = SIZE, p50: float | None = None, reason: str | None = None) -> PerfPoint:
    grid_point = PointConfig(device, batch, size, dtype, norm, mode)
    if ips is None:
        return PerfPoint("lite", grid_point, skip_reason=reason)
    latency = p50 if p50 is not None else batch * 1e3 / ips
    return PerfPoint("lite", grid_point, throughput_ips=ips * 0.9, throughput_p50_ips=ips, latency_p50_ms=latency,
                     latency_p99_ms=latency * 1.2, e2e_throughput_ips=ips / 2)


SEED_LADDER = [
    point(8, "fp32", "gn", "serial", 241.27),
    point(8, "fp32", "bn", "serial", 252.95),
    point(8, "fp16", "gn", "serial", 318.73),
    point(8, "fp16", "bn", "serial", 375.59),
    point(8, "fp16", "bn", "streams", 490.55),
]
# Seed 000's serial-vs-streams table (BN + fp16, 640x640).
SEED_STREAMS = {
    1: (121.87, 101.50), 2: (215.47, 234.45), 4: (315.92, 396.91), 8: (375.36, 490.55), 16: (420.79, 503.59),
}


def test_ladder_reproduces_the_seed_speedups() -> None:
    ladder = build_ladder(SEED_LADDER, model="lite", device="npu:0", batch_size=8, input_size=SIZE, half="fp16")
    rows = ladder["rows"]
    assert [r["step"] for r in rows] == ["baseline", "bn", "half", "bn_half", "streams"]
    assert [r["change"] for r in rows] == [
        "GN fp32 (baseline)", "GN -> BN", "fp32 -> fp16", "BN + fp16", "BN + fp16 + stream-parallel FPN heads",
    ]
    assert [round(r["speedup"], 3) for r in rows] == [1.0, 1.048, 1.321, 1.557, 2.033]
    assert [round(r["gain_pct"], 1) for r in rows] == [0.0, 4.8, 32.1, 55.7, 103.3]
    # The tables use the throughput at the median latency, not ais_bench's mean-based one.
    assert rows[-1]["throughput_ips"] == 490.55 and rows[-1]["note"] == ""
    assert (ladder["batch_size"], ladder["input_size"], ladder["half"]) == (8, [640, 640], "fp16")


def test_ladder_keeps_skipped_and_missing_rungs_with_the_reason() -> None:
    points = [
        point(1, "fp32", "gn", "serial", 10.0, device="cpu"),
        point(1, "bf16", "bn", "serial", 25.0, device="cpu"),
        point(1, "bf16", "bn", "streams", None, device="cpu", reason=STREAMS_REASON),
    ]
    rows = build_ladder(points, model="lite", device="cpu", batch_size=1, input_size=SIZE, half="bf16")["rows"]
    by_step = {r["step"]: r for r in rows}
    assert by_step["bn_half"]["speedup"] == pytest.approx(2.5)
    assert (by_step["bn"]["throughput_ips"], by_step["bn"]["note"]) == (None, "not in the grid")
    assert (by_step["streams"]["speedup"], by_step["streams"]["note"]) == (None, STREAMS_REASON)


def test_ladder_without_a_baseline_has_no_speedups() -> None:
    ladder = build_ladder(SEED_LADDER[1:], model="lite", device="npu:0", batch_size=8, input_size=SIZE, half="fp16")
    assert all(r["speedup"] is None for r in ladder["rows"])


def test_build_ladders_one_per_configuration_with_a_measured_baseline() -> None:
    cpu = [
        point(b, d, n, "serial", 5.0 * b, device="cpu") for b in (1, 2) for d in ("fp32", "bf16") for n in ("gn", "bn")
    ]
    no_baseline = [point(4, "fp16", "bn", "serial", 9.0)]
    ladders = build_ladders(SEED_LADDER + cpu + no_baseline)
    assert [(ladder["device"], ladder["batch_size"], ladder["half"]) for ladder in ladders] == [
        ("npu:0", 8, "fp16"), ("cpu", 1, "bf16"), ("cpu", 2, "bf16"),
    ]


def test_streams_table_reproduces_the_seed_table() -> None:
    points = [
        point(b, "fp16", "bn", mode, ips)
        for b, pair in SEED_STREAMS.items()
        for mode, ips in zip(("serial", "streams"), pair)
    ]
    [table] = build_streams_tables(points)
    assert (table["device"], table["dtype"], table["norm"]) == ("npu:0", "fp16", "bn")
    rows = table["rows"]
    assert [r["batch_size"] for r in rows] == [1, 2, 4, 8, 16]
    assert [round(r["speedup"], 2) for r in rows] == [0.83, 1.09, 1.26, 1.31, 1.20]
    assert [r["best"] for r in rows] == ["serial", "streams", "streams", "streams", "streams"]


def test_streams_table_on_the_cpu_says_why_streams_are_empty() -> None:
    points = [point(1, "fp32", "gn", "serial", 3.0, device="cpu"),
              point(1, "fp32", "gn", "streams", None, device="cpu", reason=STREAMS_REASON)]
    [table] = build_streams_tables(points)
    assert table["rows"] == [
        {"batch_size": 1, "serial_ips": 3.0, "streams_ips": None, "speedup": None, "best": "serial",
         "note": STREAMS_REASON},
    ]


def test_gate_points_take_the_best_throughput_and_batch1_latency_at_the_largest_size() -> None:
    points = [
        point(1, "fp32", "gn", "serial", 50.0, device="cpu", size=(256, 256)),  # smaller size: ignored
        point(1, "fp32", "gn", "serial", 8.0, device="cpu", p50=125.0),
        point(1, "fp32", "bn", "serial", 9.0, device="cpu", p50=111.0),
        point(2, "fp32", "bn", "serial", 12.0, device="cpu"),
        point(2, "bf16", "bn", "serial", 30.0, device="cpu"),  # another target (cpu:bf16)
    ]
    best = gate_points(points, "cpu")
    assert best.throughput is not None and best.throughput.point.id == "cpu-bs2-640x640-fp32-bn-serial"
    assert best.latency is not None and best.latency.latency_p50_ms == 111.0
    assert gate_points(points, "npu:0") == GatePoints(None, None)


def test_points_round_trip_through_json_and_the_report(tmp_path: Path) -> None:
    points = SEED_LADDER + [point(8, "fp16", "gn", "streams", None, reason="skipped for a reason")]
    for p in points:
        assert PerfPoint.from_dict(json.loads(json.dumps(p.as_dict()))) == p
    path = write_perf_report(tmp_path / "out" / "perf_ladder.json", points, {"grid": "quick"})
    report = json.loads(path.read_text())
    assert (report["schema"], report["grid"], len(report["points"])) == (1, "quick", 6)
    assert report["points"][0] == {
        "device": "npu:0", "batch_size": 8, "input_size": [640, 640], "dtype": "fp32", "norm": "gn", "mode": "serial",
        "model": "lite", "throughput_ips": pytest.approx(0.9 * 241.27), "throughput_p50_ips": 241.27,
        "latency_p50_ms": pytest.approx(8e3 / 241.27),
        "latency_p99_ms": pytest.approx(1.2 * 8e3 / 241.27), "e2e_throughput_ips": 120.635, "skip_reason": None,
    }
    assert report["ladders"] == build_ladders(points) and len(report["ladders"]) == 1
    assert report["streams"] == build_streams_tables(points)


LADDER_PROJECT = '''
import pytest
from pytest_blendmask.perf.ladder import PerfPoint, PointConfig
from pytest_blendmask.results import PERF_POINT_KEY

def grid_point(mode, **numbers):
    return PerfPoint("lite", PointConfig("cpu", 1, (64, 64), "fp32", "gn", mode), **numbers)

@pytest.mark.perf
def test_measured(bm_record):
    point = grid_point("serial", throughput_ips=9.0, throughput_p50_ips=10.0, latency_p50_ms=100.0,
                       latency_p99_ms=120.0, e2e_throughput_ips=5.0)
    bm_record("perf", "cpu", "latency_p50", 100.0, None, "ms", True, perf_point=point.as_dict())

@pytest.mark.perf
def test_skipped(request):
    request.node.user_properties.append((PERF_POINT_KEY, grid_point("streams", skip_reason="no streams").as_dict()))
    pytest.skip("no streams")
'''


def test_the_controller_writes_the_ladder_from_the_reports_of_every_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LADDER_PROJECT)
    result = pytester.runpytest_subprocess("--bm-target=cpu", "-p", "no:cacheprovider", "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=1, skipped=1)
    report = json.loads((pytester.path / "reports" / "perf_ladder.json").read_text())
    points = sorted(report["points"], key=lambda p: p["mode"])
    assert [(p["mode"], p["throughput_p50_ips"], p["skip_reason"]) for p in points] == [
        ("serial", 10.0, None), ("streams", None, "no streams"),
    ]
    [table] = report["streams"]
    assert [(r["serial_ips"], r["streams_ips"], r["note"]) for r in table["rows"]] == [(10.0, None, "no streams")]
    assert report["grid"] == "quick" and set(report["host"]) == {"torch_threads", "cpu_count", "load_avg_1min"}
