"""The report's tables as plain rows of text, rendered by both the Markdown and the HTML writers.

Building the cells once keeps FINAL_REPORT.md and the pytest-html summary showing the same
numbers formatted the same way.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_blendmask.results import FAMILIES

FAMILY_TITLES = {"precision": "Precision", "perf": "Performance", "atc": "ATC / compiled model"}
RECORD_HEADERS = ("Test", "Target", "Metric", "Value", "Limit", "Unit", "Result", "Detail")
OPERATOR_HEADERS = ("Operator", "Inputs", "Runs in", "Metric", "Value", "Standard", "Result")
_OP_GLYPHS = {"<=": "≤", ">=": "≥"}
NONE_TEXT = "—"
SKIPPED_TITLE = "Skipped"
ALL_PASSED = "Every gate that ran passed."  # the verdict line says which levels that leaves unjudged
SCORECARD_TITLE = "Scorecard"
_NOT_SLUG = re.compile(r"[^\w\- ]")


def heading_slug(title: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens;
    the HTML summary gives its headings the same, prefixed ``bm-``."""
    return _NOT_SLUG.sub("", title.lower()).replace(" ", "-")


@dataclass(frozen=True)
class Anchor:
    """Where a cell links: the table ``section`` (its heading, the Markdown link) and, in the
    HTML summary, the element ``row`` inside it (a record's row, a plot); "" for the heading."""

    section: str
    row: str = ""


@dataclass(frozen=True)
class Table:
    """A titled table; ``empty`` is shown instead when there are no rows; ``note`` under the title.
    ``links``: per cell, where it links (None for nowhere), shaped like ``rows`` when given;
    ``row_ids``: the HTML id of each row when given."""

    title: str
    headers: tuple[str, ...]
    rows: list[list[str]]
    empty: str
    note: str = ""
    links: list[list[Anchor | None]] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)


def format_number(value: Any) -> str:
    """4 significant digits for floats, as-is for ints and the NaN/Infinity strings, a dash for None."""
    if value is None:
        return NONE_TEXT
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_limit(record: Mapping[str, Any]) -> str:
    """The limit with its direction, e.g. ``≤ 0.1``."""
    if record["limit"] is None:
        return NONE_TEXT
    glyph = _OP_GLYPHS.get(record["op"] or "", "")
    return f"{glyph} {format_number(record['limit'])}".strip()


def short_test_id(nodeid: str) -> str:
    """The test's name with its parameters, without the file path (the JSON keeps the full id)."""
    return nodeid.rsplit("::", 1)[-1]


def is_operator_record(record: Mapping[str, Any]) -> bool:
    """A level-0 record (``tests/precision/test_ops.py``): it names the operator it judged."""
    return "operator" in record["extra"]


def record_id(family: str, index: int) -> str:
    """The HTML id of the row of ``report["records"][family][index]``."""
    return f"bm-record-{family}-{index}"


def record_anchor(report: Mapping[str, Any], ref: Mapping[str, Any]) -> Anchor:
    """Where a record (``{family, index}``) is shown: its row in its family's or its target's operators table."""
    record = report["records"][ref["family"]][ref["index"]]
    title = f"Operators: {record['target']}" if is_operator_record(record) else FAMILY_TITLES[ref["family"]]
    return Anchor(title, record_id(ref["family"], ref["index"]))


def verdict_text(record: Mapping[str, Any]) -> str:
    return "pass" if record["passed"] else "FAIL"


def operator_tables(precision_records: list[Mapping[str, Any]]) -> list[Table]:
    """One table per target of its operator checks; the note says which deformable convolution it runs."""
    tables = []
    by_target: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for i, r in enumerate(precision_records):
        if is_operator_record(r):
            by_target.setdefault(r["target"], []).append((i, r))
    for target, records in by_target.items():
        checks = [(i, r) for i, r in records if r["op"] is not None]
        rows = [[r["extra"]["operator"], r["extra"]["inputs"], r["extra"]["runs_in"],
                 r["metric"].removeprefix(f"{r['extra']['operator']}."), format_number(r["value"]),
                 format_limit(r), verdict_text(r)] for _, r in checks]
        notes = [r["detail"] for _, r in records if r["op"] is None]
        tables.append(Table(f"Operators: {target}", OPERATOR_HEADERS, rows, "No operator checks ran.", " ".join(notes),
                            row_ids=[record_id("precision", i) for i, _ in checks]))
    return tables


def record_rows(records: list[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            short_test_id(r["test"]),
            r["target"],
            r["metric"],
            format_number(r["value"]),
            format_limit(r),
            r["unit"],
            verdict_text(r),
            r["detail"],
        ]
        for r in records
    ]


def environment_rows(env: Mapping[str, Any]) -> list[list[str]]:
    host, npu, ort, model = env["host"], env["torch_npu"], env["onnxruntime"], env["model"]
    npu_text = f"{npu['version'] or 'not installed'}" + ("" if npu["available"] else f" (unavailable: {npu['reason']})")
    cann = env["cann"]
    size = "x".join(map(str, model["input_size"])) if model["input_size"] else "config default"
    targets = ", ".join(env["targets"]) + (" (auto-selected)" if env["targets_auto"] else "")
    return [
        ["Host", f"{host['name']} ({host['platform']}, {host['cpus']} CPUs)"],
        ["Python / pytest", f"{env['python']} / {env['pytest']}"],
        ["torch", env["torch"] or "not installed"],
        ["torch_npu", npu_text],
        ["CANN", cann["version"] + (f" ({cann['source']})" if cann["source"] else "")],
        ["onnxruntime", f"{ort['version'] or ort['reason']}; providers: {', '.join(ort['providers']) or NONE_TEXT}"],
        ["Targets", targets],
        ["Reference", env["reference"]],
        ["Devices (xdist)", ", ".join(env["devices"]) or NONE_TEXT],
        ["Model", f"{model['name']}, input {size}"],
        ["Weights", model["weights"]],
        ["Weights SHA-256", model["weights_sha256"] or NONE_TEXT],
        ["Thresholds", env["thresholds"] or NONE_TEXT],
        ["Data", env.get("data") or NONE_TEXT],  # absent from reports written before --bm-dataset
        ["Reference cache", reference_cache_text(env.get("reference_cache"))],
    ]


def reference_cache_text(use: Mapping[str, Any] | None) -> str:
    """How many of the reference's results came from the cache and which were computed, in one line."""
    if use is None:  # a report written before the cache, or a session that ran no test
        return NONE_TEXT
    loaded = f"{len(use['loaded'])} loaded" + (f" ({', '.join(use['loaded'])})" if use["loaded"] else "")
    computed = f"{len(use['computed'])} computed" + (f" ({', '.join(use['computed'])})" if use["computed"] else "")
    return f"{use['dir']} ({use['mode']}): {loaded}, {computed}"


def report_tables(report: Mapping[str, Any]) -> list[Table]:
    """Environment, one table per family (the operator checks in their own tables, per target,
    before the precision table), skips and failures, in reading order."""
    tables = [Table("Environment", ("Item", "Value"), environment_rows(report["environment"]), "")]
    for family in FAMILIES:
        indexed = list(enumerate(report["records"][family]))
        if family == "precision":
            tables += operator_tables(report["records"][family])
            indexed = [(i, r) for i, r in indexed if not is_operator_record(r)]
        rows = record_rows([r for _, r in indexed])
        tables.append(Table(FAMILY_TITLES[family], RECORD_HEADERS, rows, f"No {family} records in this run.",
                            row_ids=[record_id(family, i) for i, _ in indexed]))
    skips = [[short_test_id(s["test"]), ", ".join(s["tags"]), s["reason"]] for s in report["skips"]]
    tables.append(Table(SKIPPED_TITLE, ("Test", "Tags", "Reason"), skips, "Nothing skipped."))
    failures = [[short_test_id(f["test"]), f["outcome"], f["message"]] for f in report["failures"]]
    tables.append(Table("Failures", ("Test", "Outcome", "Message"), failures, "No failures."))
    return tables
