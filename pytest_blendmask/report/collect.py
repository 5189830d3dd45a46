"""The controller's view of the run: one outcome per test, gathered from its reports.

Fed by ``pytest_runtest_logreport``, which on an xdist controller receives every worker's
reports, so a distributed run and a serial one gather the same outcomes. Each phase's
report carries a copy of the item's ``user_properties`` as they were at that moment: later
phases hold a superset, so the latest report's records replace the earlier ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_blendmask.results import LEVEL_KEY, PERF_POINT_KEY, TAGS_KEY, TARGET_KEY, records_in

# "incomplete": set up but never reported a call (the run was interrupted inside it).
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "incomplete")
_SKIPPED_PREFIX = "Skipped: "
_ERROR_LINE_RE = re.compile(r"^E\s+")


@dataclass
class TestOutcome:
    """Everything the final report needs about one test."""

    __test__ = False  # not a pytest test class, despite the name

    nodeid: str
    outcome: str = "incomplete"
    tags: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""  # why it skipped, or the failure's one-line message
    perf_point: dict[str, Any] | None = None  # the perf grid point it skipped (PERF_POINT_KEY)
    level: str | None = None  # the acceptance level it judges (LEVEL_KEY); None for neither
    target: str | None = None  # the id of the target it runs (TARGET_KEY); None for none


def skip_reason(report: pytest.TestReport) -> str:
    """The reason given to ``pytest.skip`` (or a skip marker), without pytest's prefix."""
    longrepr = report.longrepr
    # A skip's longrepr is (path, lineno, "Skipped: reason"); xdist may turn it into a list.
    text = str(longrepr[2]) if isinstance(longrepr, (tuple, list)) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix(_SKIPPED_PREFIX)


def failure_message(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The one-line message of a failure: the crash line when pytest has one, else the last line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).splitlines()[0] if crash.message else ""
    # Import errors while collecting come as text whose last line is "E   <exception>".
    lines = report.longreprtext.strip().splitlines()
    return _ERROR_LINE_RE.sub("", lines[-1]) if lines else ""


def _phase_outcome(report: pytest.TestReport) -> str | None:
    """What this phase says about the test; None when it leaves the outcome to a later phase."""
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if xfail:
            return "xfailed" if report.skipped else "xpassed"
        return report.outcome
    if report.failed:
        return "error"
    if report.skipped:
        return "xfailed" if xfail else "skipped"
    return None  # a passing setup or teardown


class Collector:
    """Test outcomes by node id, in the order the tests were first reported."""

    def __init__(self) -> None:
        self.tests: dict[str, TestOutcome] = {}

    def add(self, report: pytest.TestReport) -> None:
        test = self.tests.setdefault(report.nodeid, TestOutcome(report.nodeid))
        test.records = records_in(report.user_properties)
        test.tags = next((list(v) for k, v in report.user_properties if k == TAGS_KEY), test.tags)
        test.perf_point = next((dict(v) for k, v in report.user_properties if k == PERF_POINT_KEY), test.perf_point)
        properties = dict(report.user_properties)  # LEVEL_KEY and TARGET_KEY are added once, at collection
        test.level = properties.get(LEVEL_KEY, test.level)
        test.target = properties.get(TARGET_KEY, test.target)
        outcome = _phase_outcome(report)
        if outcome is None or test.outcome in ("failed", "error"):
            return  # a passing phase changes nothing; a failure is never overwritten
        test.outcome = outcome
        if outcome in ("skipped", "xfailed"):
            test.reason = skip_reason(report) if outcome == "skipped" else str(report.wasxfail)
        elif outcome in ("failed", "error"):
            test.reason = failure_message(report)
