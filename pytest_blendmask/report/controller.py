"""The report controller: a plugin object that gathers every test's outcome and writes the reports.

It is an object registered at session start rather than module-level hooks in
``plugin.py`` because ``pytest_runtest_logreport`` receives only the report: the gathered
state has to live on an object (as pytest-html's ``Report`` and xdist's ``DSession`` do).
It is registered in the controller process only; xdist workers forward their reports to
it. ``pytest_sessionfinish`` runs after an interrupted run too (pytest passes
``ExitCode.INTERRUPTED``), so the reports are written whatever happened.

What it knows of the session beyond the reports is handed to it once, as plain values
(``ReportContext``): the report reads no settings, targets or model of its own.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pytest_blendmask.report.collect import Collector, TestOutcome, failure_message
from pytest_blendmask.report.final import build_final_report, write_final_report
from pytest_blendmask.report.ladder import write_ladder
from pytest_blendmask.results import FAMILIES

final_report_key = pytest.StashKey[dict[str, Any]]()
CONTROLLER_NAME = "blendmask-report"
HTML_HOOKS_NAME = "blendmask-html"


@dataclass(frozen=True)
class ReportContext:
    """The session as the reports describe it, captured when it starts."""

    report_dir: Path
    required: tuple[str, ...]  # the --bm-require tags
    environment: Mapping[str, Any]  # FINAL_REPORT's environment block
    perf_context: Mapping[str, Any]  # perf_ladder.json's context: the grid's name and the host's conditions
    # The environment's parts known only at the end (which reference results the cache gave).
    environment_at_end: Callable[[], Mapping[str, Any]] = dict


class ReportController:
    """Gathers outcomes from ``pytest_runtest_logreport``; writes FINAL_REPORT (and the perf ladder) at session end."""

    def __init__(self, config: pytest.Config, context: ReportContext) -> None:
        self.config = config
        self.context = context
        self.collector = Collector()
        self.collect_errors: list[TestOutcome] = []
        self.started = datetime.now(timezone.utc)
        self.written: list[Path] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(TestOutcome(report.nodeid, "error", reason=failure_message(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collector.add(report)

    def build(self, exitstatus: int) -> dict[str, Any]:
        """The final report of the run so far, given pytest's exit status."""
        finished = datetime.now(timezone.utc)
        run = {
            "started": self.started.isoformat(),
            "finished": finished.isoformat(),
            "duration_s": (finished - self.started).total_seconds(),
            "args": list(self.config.invocation_params.args),
        }
        return build_final_report(
            list(self.collector.tests.values()),
            self.collect_errors,
            exitstatus=exitstatus,
            required=self.context.required,
            environment={**self.context.environment, **self.context.environment_at_end()},
            run=run,
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        report = self.build(exitstatus)
        self.config.stash[final_report_key] = report
        self.written = write_final_report(self.context.report_dir, report)
        if report["verdict"] == "fail" and exitstatus == pytest.ExitCode.OK:
            # A gate failed without a failing test (a --bm-require skip, a bare record).
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        write_ladder(self.context.report_dir, self.collector.tests.values(), self.context.perf_context)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        report = self.config.stash.get(final_report_key, None)
        if report is None:
            return
        passed = report["verdict"] == "pass"
        line = report["scorecard"]["verdict_line"]  # names the levels judged and those not
        terminalreporter.write_sep("=", f"blendmask verdict: {line}", green=passed, red=not passed, bold=True)
        for reason in report["reasons"]:
            terminalreporter.write_line(f"  {reason}")
        tally = []
        for family in FAMILIES:
            records = report["records"][family]
            failed = sum(not r["passed"] for r in records)
            tally.append(f"{family} {len(records)}" + (f" ({failed} failed)" if failed else ""))
        terminalreporter.write_line(f"records: {', '.join(tally)}")
        terminalreporter.write_line(f"reports: {', '.join(map(str, self.written))}")


def register_controller(config: pytest.Config, context: ReportContext) -> None:
    """Register the controller; in the controller process only (xdist workers forward their reports)."""
    config.pluginmanager.register(ReportController(config, context), CONTROLLER_NAME)


def register_html_hooks(config: pytest.Config) -> None:
    """With ``--html``, register the pytest-html hooks (in every process: workers build the per-test extras)."""
    if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", None):
        from pytest_blendmask.report.html import HtmlHooks  # imports pytest_html and matplotlib

        config.pluginmanager.register(HtmlHooks(final_report_key), HTML_HOOKS_NAME)
