"""Seed 000's optimisation ladder and serial-vs-streams table, rebuilt from measured grid points.

Everything here is a pure function of ``PerfPoint`` records (measured or skipped), so the
tables can be recomputed from the JSON written at session end, and tested with given points.

The ladder (seed 000, "优化历程") takes one (model, device, batch size, input size) and walks

===========  ===================================  =====  =====  =======
step         change                               norm   dtype  mode
===========  ===================================  =====  =====  =======
baseline     GN fp32                              gn     fp32   serial
bn           GN -> BN                             bn     fp32   serial
half         fp32 -> half (fp16 or bf16)          gn     half   serial
bn_half      BN + half                            bn     half   serial
streams      + stream-parallel FPN heads          bn     half   streams
===========  ===================================  =====  =====  =======

with each step's model-only throughput, its speed-up over the baseline (throughput /
baseline throughput) and the gain in percent ((speed-up - 1) x 100). The serial-vs-streams
table takes one (model, device, dtype, norm, input size) and gives, per batch size, both
throughputs, streams / serial and the better mode.

Both tables compare configurations timed minutes apart, so they use the throughput at the
median latency (``throughput_p50_ips``): on a shared machine a few rounds slowed by other
processes would otherwise decide the comparison. On a quiet machine it equals ais_bench's
batch / mean, which the points also carry (``throughput_ips``) and the floors are checked on.

A point reaches the report controller inside the test's report, so that a distributed run
loses none: a measured point in its perf record's ``perf_point`` extra, a skipped one under
``results.PERF_POINT_KEY`` in the test's ``user_properties``. This module imports nothing of
the package, so that the report may use it: the grid's ``GridPoint`` is a ``PointConfig``
with its target added.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

PERF_REPORT_FILE = "perf_ladder.json"
SCHEMA_VERSION = 1
POINT_EXTRA = "perf_point"  # the extra of a grid point's perf record that carries the point

GridDtype = Literal["fp32", "fp16", "bf16"]
Mode = Literal["serial", "streams"]
MODES: tuple[Mode, ...] = ("serial", "streams")


@dataclass(frozen=True)
class PointConfig:
    """One configuration to time, as plain values."""

    device: str  # cpu, cuda:N, npu:N
    batch_size: int
    input_size: tuple[int, int]  # (H, W) of the network input
    dtype: GridDtype  # fp32, or fp16/bf16 under autocast
    norm: str  # gn or bn: every normalisation slot of the model
    mode: Mode  # FPN heads one after another, or each level on its own stream

    @property
    def id(self) -> str:
        """The test id, e.g. ``cpu-bs1-256x256-bf16-bn-serial``."""
        h, w = self.input_size
        return f"{self.device}-bs{self.batch_size}-{h}x{w}-{self.dtype}-{self.norm}-{self.mode}"

    @property
    def target_id(self) -> str:
        """The spec of the eager target this runs on, e.g. ``cpu:bf16`` (it keys the ``[perf."<target>"]`` thresholds)."""
        return self.device if self.dtype == "fp32" else f"{self.device}:{self.dtype}"


@dataclass(frozen=True)
class PerfPoint:
    """A grid point of one model and what was measured there; the numbers are None when it was skipped."""

    model: str
    point: PointConfig
    throughput_ips: float | None = None  # model-only, batch / mean latency (ais_bench)
    throughput_p50_ips: float | None = None  # model-only, batch / median latency
    latency_p50_ms: float | None = None  # model-only, per batch
    latency_p99_ms: float | None = None
    e2e_throughput_ips: float | None = None
    skip_reason: str | None = None

    @property
    def measured(self) -> bool:
        return self.throughput_ips is not None

    def as_dict(self) -> dict[str, Any]:
        """Builtin types only (JSON, xdist): the grid point's fields inline."""
        data = asdict(self)
        point = data.pop("point")
        point["input_size"] = list(point["input_size"])
        return {**point, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerfPoint:
        fields = dict(data)
        height, width = fields.pop("input_size")
        point = PointConfig(
            fields.pop("device"), fields.pop("batch_size"), (height, width),
            fields.pop("dtype"), fields.pop("norm"), fields.pop("mode"),
        )
        return cls(point=point, **fields)


@dataclass(frozen=True)
class LadderStep:
    """One rung: the configuration it measures, relative to the half type of the ladder."""

    key: str
    change: str  # {half} is replaced by fp16 or bf16
    norm: str
    half: bool
    mode: Mode


LADDER_STEPS = (
    LadderStep("baseline", "GN fp32 (baseline)", "gn", False, "serial"),
    LadderStep("bn", "GN -> BN", "bn", False, "serial"),
    LadderStep("half", "fp32 -> {half}", "gn", True, "serial"),
    LadderStep("bn_half", "BN + {half}", "bn", True, "serial"),
    LadderStep("streams", "BN + {half} + stream-parallel FPN heads", "bn", True, "streams"),
)


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _index(points: Iterable[PerfPoint]) -> dict[tuple[str, str], PerfPoint]:
    # Keyed by the point's id, not the point: a grid's GridPoint and its PointConfig differ in type only.
    return {(p.model, p.point.id): p for p in points}


def build_ladder(
    points: Iterable[PerfPoint], *, model: str, device: str, batch_size: int, input_size: tuple[int, int], half: GridDtype
) -> dict[str, Any]:
    """The five rungs at one (model, device, batch size, input size), half being fp16 or bf16.

    A rung that was skipped or not in the grid keeps None values and says why in ``note``.
    """
    found = _index(points)
    rows = []
    baseline: float | None = None
    for step in LADDER_STEPS:
        dtype: GridDtype = half if step.half else "fp32"
        key = PointConfig(device, batch_size, input_size, dtype, step.norm, step.mode)
        point = found.get((model, key.id))
        throughput = point.throughput_p50_ips if point else None
        note = (point.skip_reason if point else None) or "not in the grid"
        if step.key == "baseline":
            baseline = throughput
        speedup = _ratio(throughput, baseline)
        rows.append({
            "step": step.key,
            "change": step.change.format(half=half),
            "norm": step.norm,
            "dtype": dtype,
            "mode": step.mode,
            "throughput_ips": throughput,
            "latency_p50_ms": point.latency_p50_ms if point else None,
            "speedup": speedup,
            "gain_pct": (speedup - 1) * 100 if speedup is not None else None,
            "note": "" if throughput is not None else note,
        })
    return {
        "model": model, "device": device, "batch_size": batch_size, "input_size": list(input_size), "half": half,
        "rows": rows,
    }


def build_ladders(points: Sequence[PerfPoint]) -> list[dict[str, Any]]:
    """One ladder per (model, device, batch size, input size, half type) whose baseline was measured."""
    keys = dict.fromkeys(
        (p.model, p.point.device, p.point.batch_size, p.point.input_size, p.point.dtype)
        for p in points
        if p.point.dtype != "fp32"
    )
    ladders = [
        build_ladder(points, model=m, device=d, batch_size=b, input_size=s, half=h) for m, d, b, s, h in keys
    ]
    return [ladder for ladder in ladders if ladder["rows"][0]["throughput_ips"] is not None]


def build_streams_table(
    points: Iterable[PerfPoint], *, model: str, device: str, dtype: GridDtype, norm: str, input_size: tuple[int, int]
) -> dict[str, Any]:
    """Serial against stream-parallel throughput per batch size at one configuration."""
    found = _index(points)
    batch_sizes = sorted({
        p.point.batch_size for p in found.values()
        if (p.model, p.point.device, p.point.dtype, p.point.norm, p.point.input_size)
        == (model, device, dtype, norm, input_size)
    })
    rows = []
    for batch in batch_sizes:
        serial, streams = (
            found.get((model, PointConfig(device, batch, input_size, dtype, norm, mode).id)) for mode in MODES
        )
        serial_ips = serial.throughput_p50_ips if serial else None
        streams_ips = streams.throughput_p50_ips if streams else None
        speedup = _ratio(streams_ips, serial_ips)
        measured = {mode: ips for mode, ips in (("serial", serial_ips), ("streams", streams_ips)) if ips is not None}
        rows.append({
            "batch_size": batch,
            "serial_ips": serial_ips,
            "streams_ips": streams_ips,
            "speedup": speedup,
            "best": max(measured, key=measured.__getitem__) if measured else None,
            "note": "" if streams_ips is not None else (streams.skip_reason if streams else None) or "not in the grid",
        })
    return {
        "model": model, "device": device, "dtype": dtype, "norm": norm, "input_size": list(input_size), "rows": rows,
    }


def build_streams_tables(points: Sequence[PerfPoint]) -> list[dict[str, Any]]:
    """One table per (model, device, dtype, norm, input size) with at least one serial point measured."""
    keys = dict.fromkeys(
        (p.model, p.point.device, p.point.dtype, p.point.norm, p.point.input_size)
        for p in points
        if p.point.mode == "serial" and p.measured
    )
    return [build_streams_table(points, model=m, device=d, dtype=t, norm=n, input_size=s) for m, d, t, n, s in keys]


@dataclass(frozen=True)
class GatePoints:
    """What a target's floors are checked against: its best throughput and its best batch-1 latency."""

    throughput: PerfPoint | None
    latency: PerfPoint | None


def gate_points(points: Iterable[PerfPoint], target: str) -> GatePoints:
    """The measured points of ``target`` (e.g. ``cpu:bf16``) at its largest input size:
    the highest model-only throughput over every batch size, norm and mode, and the
    batch-1 point with the lowest p50 latency.

    Floors are about what the port can reach, so the best configuration is gated; the
    largest input size keeps a small quick-grid size from passing a floor set for 640x640.
    """
    mine = [p for p in points if p.measured and p.point.target_id == target]
    if not mine:
        return GatePoints(None, None)
    largest = max(h * w for h, w in (p.point.input_size for p in mine))
    at_size = [p for p in mine if p.point.input_size[0] * p.point.input_size[1] == largest]
    batch1 = [p for p in at_size if p.point.batch_size == 1]
    return GatePoints(
        max(at_size, key=lambda p: p.throughput_ips or 0.0),
        min(batch1, key=lambda p: p.latency_p50_ms or float("inf")) if batch1 else None,
    )


def perf_report(points: Sequence[PerfPoint], context: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: every point, the ladders, the serial-vs-streams tables, and ``context``."""
    return {
        "schema": SCHEMA_VERSION,
        **context,
        "points": [p.as_dict() for p in points],
        "ladders": build_ladders(points),
        "streams": build_streams_tables(points),
    }


def write_perf_report(path: Path, points: Sequence[PerfPoint], context: dict[str, Any]) -> Path:
    """Write ``perf_report`` as JSON (creating the directory) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(perf_report(points, context), indent=2) + "\n", encoding="utf-8")
    return path
