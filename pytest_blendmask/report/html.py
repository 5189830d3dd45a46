"""pytest-html content: the summary section (verdict, scorecard, per-target plots and tables) and per-test plots.

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
from pytest_blendmask.report.scorecard import PLOTS_TITLE, plot_id, scorecard_table
from pytest_blendmask.report.tables import ALL_PASSED, FAMILY_TITLES, Anchor, Table, heading_slug, report_tables
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
table.bm-table td.bm-status-pass {background: #e6f4ea;}
table.bm-table td.bm-status-fail {background: #fce8e6; font-weight: bold;}
table.bm-table td.bm-status-not-run {background: #fef7e0;}
table.bm-table td.bm-status-na, table.bm-table td.bm-status-not-selected {color: #666;}
table.bm-table td a {color: inherit;}
.bm-plots img {display: block; max-width: 900px;}
</style>"""
_RESULT_COLUMN = "Result"


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def verdict_html(report: Mapping[str, Any]) -> str:
    """The coloured verdict banner, the verdict line (which levels were judged), one bullet per reason."""
    verdict = report["verdict"]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report["reasons"])
    body = f"<ul>{reasons}</ul>" if reasons else f" {ALL_PASSED}"
    line = html.escape(report["scorecard"]["verdict_line"])
    return f'<div class="bm-verdict bm-{verdict}"><strong>BlendMask acceptance: {line}</strong>{body}</div>'


def _href(anchor: Anchor) -> str:
    return "#" + (anchor.row or f"bm-{heading_slug(anchor.section)}")


def _cell_html(cell: str, link: Anchor | None, css: str) -> str:
    text = html.escape(cell)
    content = f'<a href="{html.escape(_href(link))}">{text}</a>' if link is not None else text
    return f'<td class="{css}">{content}</td>' if css else f"<td>{content}</td>"


def status_classes(report: Mapping[str, Any]) -> list[list[str]]:
    """The CSS class of each scorecard cell, by its status (the target and the last two columns plain)."""
    return [["", *(f"bm-status-{c['status'].replace(' ', '-').replace('/', '')}" for c in row["cells"]), "", ""]
            for row in report["scorecard"]["rows"]]


def table_html(table: Table, *, classes: Sequence[Sequence[str]] = ()) -> str:
    """One ``<table class="bm-table">`` under an ``<h3>`` with the heading's anchor; every cell escaped,
    linked where ``table.links`` says; ``classes``: each cell's CSS class, shaped like the rows."""
    slug = html.escape(f"bm-{heading_slug(table.title)}")
    title = f'<h3 id="{slug}">{html.escape(table.title)}</h3>' + (f"<p>{html.escape(table.note)}</p>" if table.note else "")
    if not table.rows:
        return f'{title}<p class="bm-empty">{html.escape(table.empty)}</p>'
    result = table.headers.index(_RESULT_COLUMN) if _RESULT_COLUMN in table.headers else None
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    links = table.links or [[None] * len(row) for row in table.rows]
    ids = table.row_ids or [""] * len(table.rows)
    css = classes or [[""] * len(row) for row in table.rows]
    rows = "".join(
        (f'<tr id="{html.escape(row_id)}">' if row_id else "<tr>") + "".join(
            _cell_html(cell, link, f"bm-result-{html.escape(cell)}" if i == result else row_css[i])
            for i, (cell, link) in enumerate(zip(row, row_links))
        ) + "</tr>"
        for row, row_links, row_id, row_css in zip(table.rows, links, ids, css)
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


def layer_plot(record: Mapping[str, Any]) -> bytes:
    """The PNG of a record's ``per_layer`` series (with the floor comparison's lines when it has them)."""
    layers = record["extra"]["per_layer"]
    return plots.layer_error_plot(
        layers["layers"], layers["values"], limit=record["limit"], first_divergent=layers["first_divergent"],
        title=f"{record['metric']} on {record['target']}: per layer",
        ylabel=f"{record['metric']} {record['unit']}".strip() if "lines" not in layers else "accumulated relative L2 error",
        lines=layers.get("lines"), kind=layers.get("kind"),
    )


def first_screen_html(report: Mapping[str, Any]) -> str:
    """The scorecard, its cells linked to their details, then each target's per-layer plot."""
    table = scorecard_table(report)
    figures = []
    for i, row in enumerate(report["scorecard"]["rows"]):
        if row["plot"] is not None:
            png = layer_plot(report["records"][row["plot"]["family"]][row["plot"]["index"]])
            figures.append(f'<h4 id="{plot_id(i)}">{html.escape(row["target"])}</h4>'
                           f'<img src="data:image/png;base64,{_b64(png)}" alt="per-layer error of {html.escape(row["target"])}">')
    plotted = f'<h3 id="bm-{heading_slug(PLOTS_TITLE)}">{PLOTS_TITLE}</h3>{"".join(figures)}' if figures else ""
    return f'<div class="bm-section">{table_html(table, classes=status_classes(report))}<div class="bm-plots">{plotted}</div></div>'


def summary_fragments(report: Mapping[str, Any]) -> dict[str, list[str]]:
    """What goes into pytest-html's ``prefix`` (the verdict, the scorecard, the per-target plots: the
    first screen) and ``summary`` (the tables, the latency plot) lists."""
    series = latency_points(report["records"]["perf"])
    sections = []
    for table in report_tables(report):
        sections.append(table_html(table))
        if table.title == FAMILY_TITLES["perf"] and series:
            png = plots.latency_plot(series, title="Latency against batch size")
            sections.append(f'<h3>Latency against batch size</h3><img src="data:image/png;base64,{_b64(png)}" alt="latency against batch size">')
    return {"prefix": [_STYLE + verdict_html(report) + first_screen_html(report)],
            "summary": [f'<div class="bm-section">{"".join(sections)}</div>']}


def record_extras(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pytest-html PNG extras for the records that carry a per-layer or per-batch series."""
    found = []
    for r in records:
        where = f"{r['metric']} on {r['target']}"
        if "per_layer" in r["extra"]:
            found.append(extras.png(_b64(layer_plot(r)), name=f"{where} per layer"))
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
