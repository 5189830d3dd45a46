"""The reviewer's first screen: one row per target, one verdict per acceptance level, and the verdict line.

Built from the test outcomes and their records only (the report's rule), at session end,
into FINAL_REPORT.json's ``scorecard``; FINAL_REPORT.md, the HTML summary and the terminal
render it.

Levels. Every test is placed at collection (``placement.item_level``) in one level, the
column it fills, by its ``bm_level`` marker or else its family:

============  =================================================================================
operators     ``tests/precision/test_ops.py``: level 0, operators one by one against float64.
              A column only when such a test was collected.
tensor        ``tests/precision/test_tensors.py`` (layer-by-layer gates) and
              ``tests/precision/test_floor.py`` (local error and the noise floor, which
              localise a divergence as LOCAL or ACCUMULATED): both judge level 1, the tensors.
detection     ``tests/precision/test_detections.py``: level 2, detections matched.
AP            ``tests/precision/test_accuracy.py``: level 3, COCO AP drop.
perf          every ``perf`` test (grid points, floors, profiles, benchmarks).
ATC           every ``atc`` test (ONNX export, ONNX Runtime and ``.om`` parity, AIPP, size).
============  =================================================================================

A ``precision`` test without a ``bm_level`` marker (a user's own) fills a ``precision``
column of its own, after these.

Rows. A test's row is the target it runs (its ``dut_target``, perf grid point or
``gate_target``); a test without one (ONNX export, ATC compile, host benchmarks, whose
records name what they judged) is in the ``(no target)`` row.

Cells. ``fail`` when a test of the level failed or errored or one of its records failed;
``pass`` when at least one ran and none failed; ``not run`` when every one was skipped (or
interrupted), with their reasons; ``n/a`` when the level has tests in this run but none for
this row; ``not selected`` when no test of the level was collected at all (``-m``, ``-k``,
the paths given). A cell names the record that decides it: the first failing one, else the
one nearest its limit (``limit_used``); so does a row, over its levels in column order.

The verdict line says, after PASS or FAIL, which levels were judged (on every row that has
tests of the level, else which rows it was not run on), which were not run, and which were
not selected: ``PASS (judged: tensor; not run: detection, AP; not selected: perf, ATC)``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_blendmask.report.collect import TestOutcome
from pytest_blendmask.report.tables import (
    NONE_TEXT,
    SCORECARD_TITLE,
    SKIPPED_TITLE,
    Anchor,
    Table,
    format_limit,
    format_number,
    record_anchor,
)
from pytest_blendmask.results import FAMILIES, LEVELS

NO_TARGET = "(no target)"
OPTIONAL_LEVELS = ("operators",)  # a column only when one of its tests was collected
TENSOR_LEVEL = "tensor"  # where the first divergent layer is looked for
RAN = ("passed", "failed", "error", "xfailed", "xpassed")
FAILED = ("failed", "error")
_NOT_RUN_REASON = {"incomplete": "interrupted before it finished"}


def limit_used(value: Any, op: str | None, limit: Any) -> float | None:
    """How much of its allowance a measured value uses: 1 at the limit, above 1 past it.

    Upper limit: ``value / limit``. Lower limit on a score whose ideal is 1 (a limit ≤ 1:
    cosine, IoU, agreement): ``(1 - value) / (1 - limit)``, the shortfall from 1 against the
    shortfall allowed, so a cosine of 0.9999 against 0.99 uses 1 %, not 99 %. Other lower
    limits (throughput): ``limit / value``. A zero allowance (an upper limit ≤ 0, a lower
    limit of 1) counts 0 when met. NaN, and any other value past its limit, counts infinity.
    None for an informational record (no value, op or limit).
    """
    if not (isinstance(value, (int, float)) and isinstance(limit, (int, float))) or op not in ("<=", ">="):
        return None  # None, or the "NaN" strings of a written report
    if math.isnan(value) or (value > limit if op == "<=" else value < limit):
        return math.inf
    if op == "<=":
        return value / limit if limit > 0 else 0.0
    if limit <= 1 and value <= 1:
        return (1 - value) / (1 - limit) if limit < 1 else 0.0
    return limit / value if value > 0 else 0.0


def _ref(index: Mapping[int, tuple[str, int]], record: Mapping[str, Any]) -> dict[str, Any]:
    family, position = index[id(record)]
    return {"family": family, "index": position}


def _reasons(tests: Sequence[TestOutcome]) -> list[str]:
    """The distinct reasons tests did not run, each with how many gave it."""
    counts: dict[str, int] = {}
    for test in tests:
        if test.outcome == "skipped" or test.outcome in _NOT_RUN_REASON:
            reason = test.reason if test.outcome == "skipped" else _NOT_RUN_REASON[test.outcome]
            counts[reason] = counts.get(reason, 0) + 1
    return [reason + (f" ({n} tests)" if n > 1 else "") for reason, n in counts.items()]


def _deciding(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first failing record, else the held one nearest its limit; None when none was held."""
    failing = next((r for r in records if not r["passed"]), None)
    if failing is not None:
        return failing
    held = [(used, r) for r in records if (used := limit_used(r["value"], r["op"], r["limit"])) is not None]
    return max(held, key=lambda pair: pair[0])[1] if held else None


def _cell(level: str, tests: Sequence[TestOutcome], index: Mapping[int, tuple[str, int]], status: str,
          reason: str) -> dict[str, Any]:
    records = [r for t in tests for r in t.records]
    ran = [t for t in tests if t.outcome in RAN]
    failed = [t for t in tests if t.outcome in FAILED]
    skipped = [t for t in tests if t.outcome not in RAN]
    if tests:
        status = "fail" if failed or not all(r["passed"] for r in records) else "pass" if ran else "not run"
    deciding = _deciding(records)
    return {
        "level": level,
        "status": status,
        "counts": {"ran": len(ran), "failed": len(failed), "skipped": len(skipped)},
        "reasons": _reasons(skipped) if tests else [reason],
        "record": _ref(index, deciding) if deciding is not None else None,
    }


def _first_divergent(records: Sequence[Mapping[str, Any]], index: Mapping[int, tuple[str, int]]) -> dict[str, Any] | None:
    """Where the target's tensors first left their limits: a floor record's localisation (LOCAL or
    ACCUMULATED), else a tensor record's first divergent layer; None when none diverged."""
    for r in records:
        where = r["extra"].get("localisation") or {}
        if where.get("kind"):
            return {"layer": where.get("entry") or where.get("module"), "module": where.get("module"),
                    "kind": where["kind"], "record": _ref(index, r)}
    for r in records:
        layer = (r["extra"].get("per_layer") or {}).get("first_divergent")
        if layer:
            return {"layer": layer, "module": None, "kind": None, "record": _ref(index, r)}
    return None


def _plotted(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record whose per-layer series stands for the target: the noise-floor comparison's
    (accumulated, local and floor errors together), else the first other one."""
    series = [r for r in records if "per_layer" in r["extra"]]
    return next((r for r in series if "lines" in r["extra"]["per_layer"]), series[0] if series else None)


def _columns(tests: Sequence[TestOutcome]) -> list[str]:
    present = list(dict.fromkeys(t.level for t in tests if t.level is not None))
    fixed = [level for level in LEVELS if level not in OPTIONAL_LEVELS or level in present]
    return fixed + [level for level in present if level not in LEVELS]


def _rows(tests: Sequence[TestOutcome], targets: Sequence[str]) -> list[str]:
    placed = [t.target or NO_TARGET for t in tests if t.level is not None]
    rows = list(dict.fromkeys([*targets, *(p for p in placed if p != NO_TARGET)]))
    return rows + ([NO_TARGET] if NO_TARGET in placed else [])


def _level_summary(level: str, cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether ``level`` was judged (and where not), not run or not selected, over its row cells."""
    statuses = {c["target"]: c["status"] for c in cells}
    if all(s == "not selected" for s in statuses.values()):
        return {"level": level, "status": "not selected", "not_run_on": []}
    judged = [t for t, s in statuses.items() if s in ("pass", "fail")]
    not_run = [t for t, s in statuses.items() if s == "not run"]
    return {"level": level, "status": "judged" if judged else "not run", "not_run_on": not_run if judged else []}


def verdict_line(verdict: str, levels: Sequence[Mapping[str, Any]]) -> str:
    """``PASS (judged: tensor, operators (not run on ort); not run: detection, AP; not selected: perf)``."""
    judged = [s["level"] + (f" (not run on {', '.join(s['not_run_on'])})" if s["not_run_on"] else "")
              for s in levels if s["status"] == "judged"]
    groups = [f"judged: {', '.join(judged) or 'none'}"]
    for status in ("not run", "not selected"):
        names = [s["level"] for s in levels if s["status"] == status]
        if names:
            groups.append(f"{status}: {', '.join(names)}")
    return f"{verdict.upper()} ({'; '.join(groups)})"


def build_scorecard(tests: Sequence[TestOutcome], targets: Sequence[str], records: Mapping[str, Sequence[Mapping[str, Any]]],
                    verdict: str) -> dict[str, Any]:
    """FINAL_REPORT's ``scorecard``: rows, level summaries and the verdict line (module docstring).

    Args:
        tests: every test's outcome, in report order.
        targets: the session's target ids (the environment's), the first rows in their order.
        records: FINAL_REPORT's records by family; a cell refers to one as ``{family, index}``.
        verdict: ``pass`` or ``fail``, as the report decided it.
    """
    index = {id(r): (family, i) for family in FAMILIES for i, r in enumerate(records[family])}
    columns = _columns(tests)
    collected = {t.level for t in tests}
    rows = []
    for target in _rows(tests, targets):
        mine = [t for t in tests if (t.target or NO_TARGET) == target and t.level is not None]
        cells = []
        for level in columns:
            placed = [t for t in mine if t.level == level]
            absent = ("not selected", "not selected (-m, -k or the paths given)") if level not in collected else (
                "n/a", f"no {level} test for {target}")
            cells.append(_cell(level, placed, index, *absent))
        # In column order: a failure at a lower level is where the fault shows first.
        records_here = [r for level in columns for t in mine if t.level == level for r in t.records]
        deciding = _deciding(records_here)
        plotted = _plotted(records_here)
        rows.append({
            "target": target,
            "cells": cells,
            "worst": {"level": next(t.level for t in mine if any(r is deciding for r in t.records)),
                      "record": _ref(index, deciding)} if deciding is not None else None,
            "first_divergent": _first_divergent([r for t in mine if t.level == TENSOR_LEVEL for r in t.records], index),
            "plot": _ref(index, plotted) if plotted is not None else None,
        })
    levels = [_level_summary(level, [{**row["cells"][i], "target": row["target"]} for row in rows])
              for i, level in enumerate(columns)]
    return {"levels": levels, "rows": rows, "verdict_line": verdict_line(verdict, levels)}


PLOTS_TITLE = "Per-layer error by target"


def plot_id(row: int) -> str:
    """The HTML id of the per-layer plot of the scorecard's ``row``-th target."""
    return f"bm-plot-{row}"


def _cell_text(cell: Mapping[str, Any]) -> str:
    counts, status = cell["counts"], cell["status"]
    if status == "pass":
        return f"PASS: {counts['ran']} ran" + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
    if status == "fail":
        return f"FAIL: {counts['failed']} of {counts['ran']} failed" if counts["failed"] else "FAIL: a record failed"
    if status == "not run":
        return f"not run: {'; '.join(cell['reasons'])}"
    return status  # n/a, not selected: the reason is the column's own


def _worst_text(report: Mapping[str, Any], worst: Mapping[str, Any]) -> str:
    r = report["records"][worst["record"]["family"]][worst["record"]["index"]]
    used = limit_used(r["value"], r["op"], r["limit"])
    share = "past its limit" if used is None or not math.isfinite(used) else f"{used:.0%} of its allowance"
    return f"{worst['level']}: {r['metric']} {format_number(r['value'])} {format_limit(r)} {r['unit']}".rstrip() + f" ({share})"


def _divergent_text(divergent: Mapping[str, Any] | None) -> str:
    if divergent is None:
        return "none"
    if divergent["kind"]:
        module = f" (module {divergent['module']})" if divergent["module"] not in (None, divergent["layer"]) else ""
        return f"{divergent['kind']} at {divergent['layer']}{module}"
    return f"{divergent['layer']} (first over its limit)"


def scorecard_table(report: Mapping[str, Any]) -> Table:
    """The scorecard as a table whose cells link to their details: a level's verdict to the record
    that decided it (or the skips), the worst metric to its record, the first divergent layer to
    the target's per-layer plot (in Markdown, to its record's table)."""
    card = report["scorecard"]
    headers = ("Target", *(s["level"] for s in card["levels"]), "Worst against its limit", "First divergent layer")
    rows, links = [], []
    for i, row in enumerate(card["rows"]):
        texts = [_cell_text(c) for c in row["cells"]]
        cell_links = [record_anchor(report, c["record"]) if c["record"] is not None
                      else Anchor(SKIPPED_TITLE) if c["status"] == "not run" else None for c in row["cells"]]
        worst = row["worst"]
        divergent = row["first_divergent"]
        tensor_ran = any(c["level"] == TENSOR_LEVEL and c["status"] in ("pass", "fail") for c in row["cells"])
        rows.append([row["target"], *texts, _worst_text(report, worst) if worst else NONE_TEXT,
                     _divergent_text(divergent) if tensor_ran or divergent else NONE_TEXT])
        divergent_link = None
        if divergent is not None:
            divergent_link = Anchor(record_anchor(report, divergent["record"]).section, plot_id(i))
        links.append([None, *cell_links, record_anchor(report, worst["record"]) if worst else None, divergent_link])
    # No note: the verdict line heads FINAL_REPORT.md and the HTML banner just above.
    return Table(SCORECARD_TITLE, headers, rows, "No acceptance level was collected.", links=links)
