"""FINAL_REPORT.json and FINAL_REPORT.md: built from the gathered outcomes, written atomically.

The JSON follows ``report_schema.json`` (shipped with the package). Non-finite floats are
written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` so the file stays
strict JSON. Each file is written to a temporary file in the same directory and renamed
over the old one (``os.replace`` is atomic on POSIX and Windows): a reader sees the old
report or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_blendmask.report.collect import OUTCOMES, TestOutcome
from pytest_blendmask.report.scorecard import build_scorecard, scorecard_table
from pytest_blendmask.report.tables import ALL_PASSED, Anchor, Table, heading_slug, report_tables, short_test_id
from pytest_blendmask.results import FAMILIES

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("report_schema.json")
JSON_NAME = "FINAL_REPORT.json"
MD_NAME = "FINAL_REPORT.md"
RAN = ("passed", "failed", "error", "xfailed", "xpassed")
_LISTED = 3  # tests named per reason before "and N more"
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _listing(items: Sequence[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return "; ".join(items[:_LISTED]) + more


def required_violations(tests: Iterable[TestOutcome], required: Sequence[str]) -> list[str]:
    """Why each ``--bm-require`` tag is not satisfied: a skip among its tests, or none ran."""
    tests = list(tests)
    violations = []
    for tag in required:
        tagged = [t for t in tests if tag in t.tags]
        skipped = [f"{short_test_id(t.nodeid)} ({t.reason})" for t in tagged if t.outcome == "skipped"]
        if skipped:
            violations.append(f"required {tag}: {len(skipped)} test(s) skipped: {_listing(skipped)}")
        elif not any(t.outcome in RAN for t in tagged):
            violations.append(f"required {tag}: no {tag} test ran" + ("" if tagged else " (none selected)"))
    return violations


def exit_status_name(status: int) -> str:
    try:
        return pytest.ExitCode(status).name
    except ValueError:  # a plugin's own exit code
        return "UNKNOWN"


def verdict_reasons(
    tests: Sequence[TestOutcome], collect_errors: Sequence[TestOutcome], exitstatus: int, violations: Sequence[str]
) -> list[str]:
    """Every reason the gate fails; an empty list means it passes."""
    reasons = []
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        reasons.append("interrupted (Ctrl-C, --maxfail/-x or collection errors): not every selected test ran")
    failed = [t.nodeid for t in [*collect_errors, *tests] if t.outcome in ("failed", "error")]
    if failed:
        reasons.append(f"{len(failed)} test(s) failed: {_listing(failed)}")
    gates = [f"{r['family']} {r['metric']} on {r['target']} ({short_test_id(r['test'])})"
             for t in tests for r in t.records if not r["passed"]]
    if gates:
        reasons.append(f"{len(gates)} gate(s) failed: {_listing(gates)}")
    if not any(t.outcome in RAN for t in tests):
        reasons.append("no test ran")
    reasons.extend(violations)
    known = (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED,
             pytest.ExitCode.NO_TESTS_COLLECTED)
    if exitstatus not in known or (exitstatus == pytest.ExitCode.TESTS_FAILED and not reasons):
        reasons.append(f"pytest exit status {int(exitstatus)} ({exit_status_name(exitstatus)})")
    return reasons


def build_final_report(
    tests: Sequence[TestOutcome],
    collect_errors: Sequence[TestOutcome],
    *,
    exitstatus: int,
    required: Sequence[str],
    environment: Mapping[str, Any],
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """The report as a dict of builtin types (see report_schema.json); records sorted by test."""
    ordered = sorted(tests, key=lambda t: t.nodeid)  # xdist finishes tests in any order
    violations = required_violations(ordered, required)
    reasons = verdict_reasons(ordered, collect_errors, exitstatus, violations)
    counts = dict.fromkeys(OUTCOMES, 0)
    for test in ordered:
        counts[test.outcome] += 1
    verdict = "fail" if reasons else "pass"
    records = {f: [r for t in ordered for r in t.records if r["family"] == f] for f in FAMILIES}
    return {
        "schema_version": SCHEMA_VERSION,
        "verdict": verdict,
        "reasons": reasons,
        "scorecard": build_scorecard(ordered, environment["targets"], records, verdict),
        "run": {**run, "exit_status": int(exitstatus), "exit_status_name": exit_status_name(exitstatus),
                "interrupted": exitstatus == pytest.ExitCode.INTERRUPTED},
        "required": {"tags": list(required), "violations": violations},
        "counts": counts,
        "environment": dict(environment),
        "records": records,
        "skips": [{"test": t.nodeid, "tags": t.tags, "reason": t.reason} for t in ordered if t.outcome == "skipped"],
        "failures": [{"test": t.nodeid, "outcome": t.outcome, "message": t.reason}
                     for t in [*collect_errors, *ordered] if t.outcome in ("failed", "error")],
    }


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by strings, so ``allow_nan=False`` holds."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(strict_json(report), indent=2, allow_nan=False) + "\n"


def _md_cell(text: str, link: Anchor | None = None) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    # A Markdown link reaches a heading only: the table the detail is in.
    return f"[{text.replace('[', '(').replace(']', ')')}](#{heading_slug(link.section)})" if link else text


def render_table_md(table: Table) -> str:
    head = f"## {table.title}\n\n" + (f"{table.note}\n\n" if table.note else "")
    if not table.rows:
        return f"{head}_{table.empty}_\n"
    lines = [head.rstrip("\n"), "", "| " + " | ".join(table.headers) + " |",
             "|" + "---|" * len(table.headers)]
    links = table.links or [[None] * len(row) for row in table.rows]
    lines += ["| " + " | ".join(_md_cell(c, link) for c, link in zip(row, row_links)) + " |"
              for row, row_links in zip(table.rows, links)]
    return "\n".join(lines) + "\n"


def render_markdown(report: Mapping[str, Any]) -> str:
    """FINAL_REPORT.md: the verdict line and its reasons, the scorecard, then the tables of ``report_tables``."""
    run, counts = report["run"], report["counts"]
    head = [f"# BlendMask acceptance: {report['scorecard']['verdict_line']}", ""]
    head += [f"- {reason}" for reason in report["reasons"]] or [ALL_PASSED]
    tally = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
    head += ["", f"Run {run['started']} to {run['finished']} ({run['duration_s']:.1f} s), "
             f"exit status {run['exit_status']} ({run['exit_status_name']}); tests: {tally or 'none'}.",
             f"Required: {', '.join(report['required']['tags']) or 'nothing'}.", ""]
    tables = [scorecard_table(report), *report_tables(report)]
    return "\n".join(head) + "\n" + "\n".join(render_table_md(t) for t in tables)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename; on any error the old file stays and no temp remains."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def write_final_report(report_dir: Path, report: Mapping[str, Any]) -> list[Path]:
    """Write FINAL_REPORT.json and .md into ``report_dir``; both are rendered before either is written."""
    texts = {JSON_NAME: render_json(report), MD_NAME: render_markdown(report)}
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        write_atomic(report_dir / name, text)
        paths.append(report_dir / name)
    return paths
