"""pytest-html content: the summary section (verdict and tables) and per-test plots.

Only imported, and its hooks only registered, when pytest-html is active with ``--html``
(``register_html_hooks``): ``pytest_html_results_summary`` exists only as pytest-html's
hookspec. The functions building the content are pure so the tests check what is handed
to pytest-html, not the rendered page.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pytest_html import extras

from pytest_blendmask.report import plots
from pytest_blendmask.report.tables import FAMILY_TITLES, Table, report_tables
from pytest_blendmask.results import records_in

_STYLE = """<style>
.bm-verdict {padding: 8px 12px; margin: 8px 0; border-radius: 4px; font-size: 14px; color: #222;}
.bm-verdict ul {margin: 4px 0 0 18px; padding: 0;}
.bm-pass {background: #e6f4ea; border: 1px solid #34a853;}
.bm-fail {background: #fce8e6; border: 1px solid #d93025;}
.bm-section {color: #222;}
.bm-section h3 {margin: 14px 0 4px; font-size: 15px;}
table.bm-table {border-collapse: collapse; font-size: 12px; margin-bottom: 6px;}
table.bm-table th, table.bm-table td {border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top;}
table.bm-table th {background: #f2f2f2;}
table.bm-table td.bm-result-pass {color: #188038;}
table.bm-table td.bm-result-FAIL {color: #d93025; font-weight: bold;}
.bm-empty {color: #666; font-style: italic; margin: 2px 0 8px;}
</style>"""
_RESULT_COLUMN = "Result"


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def verdict_html(report: Mapping[str, Any]) -> str:
    """The coloured verdict banner with one bullet per reason."""
    verdict = report["verdict"]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report["reasons"])
    body = f"<ul>{reasons}</ul>" if reasons else " All gates passed."
    return f'<div class="bm-verdict bm-{verdict}"><strong>BlendMask acceptance: {verdict.upper()}</strong>{body}</div>'


def table_html(table: Table) -> str:
    """One ``<table class="bm-table">`` under an ``<h3>``; every cell escaped."""
    title = f"<h3>{html.escape(table.title)}</h3>" + (f"<p>{html.escape(table.note)}</p>" if table.note else "")
    if not table.rows:
        return f'{title}<p class="bm-empty">{html.escape(table.empty)}</p>'
    result = table.headers.index(_RESULT_COLUMN) if _RESULT_COLUMN in table.headers else None
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    rows = "".join(
        "<tr>" + "".join(
            f'<td class="bm-result-{html.escape(cell)}">{html.escape(cell)}</td>' if i == result
            else f"<td>{html.escape(cell)}</td>"
            for i, cell in enumerate(row)
        ) + "</tr>"
        for row in table.rows
    )
    return f'{title}<table class="bm-table"><tr>{head}</tr>{rows}</table>'


def latency_points(perf_records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[Any]]]:
    """Perf records in milliseconds that name a ``batch_size``, as one series per target and metric."""
    series: dict[str, tuple[list[int], list[Any]]] = {}
    for r in perf_records:
        if r["unit"] == "ms" and "batch_size" in r["extra"]:
            batches, values = series.setdefault(f"{r['target']} {r['metric']}", ([], []))
            batches.append(r["extra"]["batch_size"])
            values.append(r["value"])
    return series


def summary_fragments(report: Mapping[str, Any]) -> dict[str, list[str]]:
    """What goes into pytest-html's ``prefix`` (the verdict) and ``summary`` (tables, plot) lists."""
    series = latency_points(report["records"]["perf"])
    sections = []
    for table in report_tables(report):
        sections.append(table_html(table))
        if table.title == FAMILY_TITLES["perf"] and series:
            png = plots.latency_plot(series, title="Latency against batch size")
            sections.append(f'<h3>Latency against batch size</h3><img src="data:image/png;base64,{_b64(png)}" alt="latency against batch size">')
    return {"prefix": [_STYLE + verdict_html(report)], "summary": [f'<div class="bm-section">{"".join(sections)}</div>']}


def record_extras(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pytest-html PNG extras for the records that carry a per-layer or per-batch series."""
    found = []
    for r in records:
        where = f"{r['metric']} on {r['target']}"
        if layers := r["extra"].get("per_layer"):
            png = plots.layer_error_plot(
                layers["layers"], layers["values"], limit=r["limit"], first_divergent=layers["first_divergent"],
                title=f"{where}: per layer", ylabel=f"{r['metric']} {r['unit']}".strip() if "lines" not in layers
                else "accumulated relative L2 error", lines=layers.get("lines"), kind=layers.get("kind"),
            )
            found.append(extras.png(_b64(png), name=f"{where} per layer"))
        if sweep := r["extra"].get("per_batch"):
            png = plots.latency_plot({where: (sweep["batch_sizes"], sweep["latency_ms"])}, title=f"{where}: latency")
            found.append(extras.png(_b64(png), name=f"{where} latency"))
    return found


class HtmlHooks:
    """The pytest-html hook implementations; reads the final report from the controller's stash."""

    def __init__(self, final_report: pytest.StashKey[dict[str, Any]]) -> None:
        self._final_report = final_report

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if report.when == "call":
            report.extras = [*getattr(report, "extras", []), *record_extras(records_in(report.user_properties))]
        return report

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], session: pytest.Session) -> None:
        final = session.config.stash.get(self._final_report, None)
        if final is None:  # --collect-only: no report was built
            return
        fragments = summary_fragments(final)
        prefix.extend(fragments["prefix"])
        summary.extend(fragments["summary"])
