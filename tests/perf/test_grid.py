"""The perf grid (batch size x input size x dtype x norm x serial/streams) and the floors checked on it.

One test per grid point times the session's model and weights (``perf_model``: the trained
norm layout, or one refitted to it) alone and end to end (``pytest_blendmask.perf``);
everything measured, with the detections of each timed image and the rounds' coefficient
of variation, lands in ``benchmark.extra_info`` (so in ``--benchmark-json``), in a record
for the report and in ``perf_points``, which the floors read. A point whose rounds vary by
more than ``timing.NOISY_COV`` is flagged noisy in both, not failed. The point travels in
its record's ``perf_point`` extra (a skipped point under ``PERF_POINT_KEY``), from which the
report controller writes the ladder JSON at session end. The gate tests come after the grid
in this module, so pytest runs them once every point has been measured.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from pytest_blendmask.fixtures import perf_grid_points
from pytest_blendmask.gates import PERF_FLOOR_GATES, THROUGHPUT_FLOOR, BestPoints, judge_all
from pytest_blendmask.model import CONFIG_NAMES
from pytest_blendmask.perf.grid import GridPoint, GridSpec, skip_reason
from pytest_blendmask.perf.ladder import PerfPoint, gate_points
from pytest_blendmask.perf.timing import host_conditions, measure
from pytest_blendmask.perf.workload import TimedModel, build_workload, detections_per_image, synthetic_jpegs
from pytest_blendmask.precision.thresholds import Thresholds
from pytest_blendmask.results import PERF_POINT_KEY
from pytest_blendmask.settings import Settings

pytestmark = pytest.mark.perf


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    points = perf_grid_points(metafunc.config)
    if "grid_point" in metafunc.fixturenames:
        metafunc.parametrize("grid_point", points, ids=[p.id for p in points])
    if "gate_target" in metafunc.fixturenames:
        metafunc.parametrize("gate_target", list(dict.fromkeys(p.target.id for p in points)))


def test_grid_point(
    grid_point: GridPoint,
    benchmark: Any,
    perf_grid: GridSpec,
    perf_points: list[PerfPoint],
    perf_model: Callable[[str, str], TimedModel],
    bm_settings: Settings,
    bm_worker_device: str | None,
    bm_record: Callable[..., Any],
    request: pytest.FixtureRequest,
) -> None:
    model_name = bm_settings.model
    reason = skip_reason(grid_point)
    if reason is None and model_name not in CONFIG_NAMES:
        reason = f"the norm axis needs a named config; {model_name} is a module:factory model"
    if reason is not None:
        skipped = PerfPoint(model_name, grid_point, skip_reason=reason)
        perf_points.append(skipped)
        # A skip stores no record: the point rides in user_properties, which its report carries.
        request.node.user_properties.append((PERF_POINT_KEY, skipped.as_dict()))
        pytest.skip(reason)

    target = grid_point.target.pinned(bm_worker_device)
    device = torch.device(target.device)
    timed = perf_model(grid_point.norm, target.device)
    encoded = synthetic_jpegs(grid_point.batch_size, grid_point.input_size)
    work = build_workload(
        timed.model, encoded, grid_point.input_size, device, grid_point.dtype, grid_point.mode == "streams"
    )
    measured = measure(
        benchmark, work.model_only, work.end_to_end, device, batch_size=grid_point.batch_size,
        warmup_rounds=perf_grid.warmup_rounds, rounds=perf_grid.rounds, e2e_rounds=perf_grid.e2e_rounds,
    )
    if measured is None:
        pytest.skip("pytest-benchmark is disabled (--benchmark-disable, or xdist): nothing was timed")
    # The images and weights are fixed, so every timed end-to-end round had these (0 with random init).
    detections = detections_per_image(work.end_to_end())

    h, w = grid_point.input_size
    benchmark.group = f"{target.id} {h}x{w} bs{grid_point.batch_size}"
    context = {
        "model": model_name, "target": target.id, "device": target.device, "dtype": grid_point.dtype,
        "norm": grid_point.norm, "mode": grid_point.mode, "input_size": [h, w], "grid": perf_grid.name,
        "weights": timed.weights, "norm_layers": timed.norm_layers, "detections_per_image": detections,
    }
    benchmark.extra_info.update(context, **measured.extra_info(), **host_conditions())
    point = PerfPoint(
        model_name, grid_point, throughput_ips=measured.throughput_ips,
        throughput_p50_ips=measured.throughput_p50_ips, latency_p50_ms=measured.model.p50_ms,
        latency_p99_ms=measured.model.p99_ms, e2e_throughput_ips=measured.e2e_throughput_ips,
    )
    perf_points.append(point)
    # Informational (no limit): one point of the report's latency-against-batch plot per
    # configuration, and the ladder's point (perf.ladder.POINT_EXTRA).
    bm_record(
        "perf", target.id, f"latency_p50 {grid_point.norm} {grid_point.mode} {h}x{w}", measured.model.p50_ms, None,
        "ms", True, detail=f"detections per image {detections}; {measured.variation()}",
        batch_size=grid_point.batch_size, throughput_ips=measured.throughput_ips,
        e2e_throughput_ips=measured.e2e_throughput_ips, first_inference_s=measured.first_inference_s,
        detections_per_image=detections, cov_model_only=measured.model.cov, cov_end_to_end=measured.end_to_end.cov,
        noisy=measured.noisy, perf_point=point.as_dict(),
    )


def test_perf_floors(
    gate_target: str,
    perf_points: list[PerfPoint],
    thresholds: Thresholds,
    bm_settings: Settings,
    bm_record: Callable[..., Any],
) -> None:
    """The best measured configuration of each target against its [perf] floors and ceilings."""
    best = gate_points(perf_points, gate_target)
    if best.throughput is None:
        pytest.skip(f"no grid point of {gate_target} was measured (all skipped, deselected or not benchmarked)")
    # The latency ceilings are held to the best batch-1 point, when the grid has one.
    gates = PERF_FLOOR_GATES if best.latency is not None else (THROUGHPUT_FLOOR,)
    floors = thresholds.perf_for(gate_target, bm_settings.model)
    judge_all(bm_record, gates, gate_target, BestPoints(best, thresholds.path.name), floors)
