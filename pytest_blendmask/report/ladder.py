"""perf_ladder.json, written by the controller from the perf grid points the tests' reports carried.

The points come from the reports rather than from a fixture's list, so that a distributed
run writes every point its workers measured or skipped; the tables are ``perf.ladder``'s.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_blendmask.perf.ladder import PERF_REPORT_FILE, POINT_EXTRA, PerfPoint, write_perf_report
from pytest_blendmask.report.collect import TestOutcome
from pytest_blendmask.results import Record


def ladder_points(tests: Iterable[TestOutcome]) -> list[PerfPoint]:
    """The grid points in the order their tests were reported: measured ones from their records, skipped ones as left."""
    points = []
    for test in tests:
        extras = (Record.from_dict(entry).extra for entry in test.records)
        points += [PerfPoint.from_dict(extra[POINT_EXTRA]) for extra in extras if POINT_EXTRA in extra]
        if test.perf_point is not None:
            points.append(PerfPoint.from_dict(test.perf_point))
    return points


def write_ladder(report_dir: Path, tests: Iterable[TestOutcome], context: Mapping[str, Any]) -> Path | None:
    """Write ``<report_dir>/perf_ladder.json`` when a grid point was measured; its path, else None."""
    points = ladder_points(tests)
    if not any(point.measured for point in points):
        return None  # no perf grid ran here (or nothing was timed): keep the last real ladder
    return write_perf_report(report_dir / PERF_REPORT_FILE, points, dict(context))
