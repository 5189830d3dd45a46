"""The content handed to pytest-html (summary fragments, per-test extras) and the PNG plots."""
from __future__ import annotations

import base64
import math

import pytest

from pytest_blendmask.report import final
from pytest_blendmask.report import html as bm_html
from pytest_blendmask.report import plots
from pytest_blendmask.report.controller import HTML_HOOKS_NAME
from pytest_blendmask.report.tables import Table, operator_tables, report_tables
from pytest_blendmask.results import batch_series, layer_series
from tests.unit.report_support import RECORDING_PROJECT, final_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(family: str = "precision", **overrides: object) -> dict:
    base = {"test": "tests/precision/test_tensors.py::test_layers[cpu:fp16]", "family": family, "target": "cpu:fp16",
            "metric": "relative_l2_error", "value": 0.02, "op": "<=", "limit": 0.1, "unit": "", "passed": True,
            "detail": "", "extra": {}}
    return {**base, **overrides}


def test_summary_fragments_carry_verdict_tables_and_latency_plot(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(RECORDING_PROJECT)
    pytester.runpytest("--bm-target=cpu")
    fragments = bm_html.summary_fragments(final_report(pytester))
    assert set(fragments) == {"prefix", "summary"}
    (prefix,) = fragments["prefix"]
    assert ('<div class="bm-verdict bm-fail"><strong>BlendMask acceptance: FAIL (judged: perf, ATC, precision; '
            'not selected: tensor, detection, AP)</strong><ul>') in prefix
    assert "<li>1 gate(s) failed: atc box_max_abs_error on ort (test_atc_parity)</li>" in prefix
    (summary,) = fragments["summary"]
    titles = ["Environment", "Precision", "Performance", "Latency against batch size", "ATC / compiled model", "Skipped", "Failures"]
    positions = [summary.index(f">{t}</h3>") for t in titles]
    assert positions == sorted(positions)
    assert '<td class="bm-result-FAIL">FAIL</td>' in summary
    assert "<td>test_latency[4]</td><td>cpu:fp16</td><td>latency_p50</td><td>40</td><td>≤ 100</td><td>ms</td>" in summary
    assert '<img src="data:image/png;base64,' in summary


def test_table_html_escapes_every_cell_and_marks_the_result() -> None:
    table = Table("A <b>", ("Test", "Result"), [["x<y", "FAIL"]], "")
    assert bm_html.table_html(table) == (
        '<h3 id="bm-a-b">A &lt;b&gt;</h3><table class="bm-table"><tr><th>Test</th><th>Result</th></tr>'
        '<tr><td>x&lt;y</td><td class="bm-result-FAIL">FAIL</td></tr></table>'
    )
    assert bm_html.table_html(Table("Skipped", ("Test",), [], "Nothing skipped.")) == (
        '<h3 id="bm-skipped">Skipped</h3><p class="bm-empty">Nothing skipped.</p>')


def test_verdict_html_of_a_pass() -> None:
    line = "PASS (judged: tensor; not run: detection, AP)"
    assert bm_html.verdict_html({"verdict": "pass", "reasons": [], "scorecard": {"verdict_line": line}}) == (
        f'<div class="bm-verdict bm-pass"><strong>BlendMask acceptance: {line}</strong> Every gate that ran passed.</div>')


def test_latency_points_take_perf_records_in_ms_with_a_batch_size() -> None:
    records = [
        _record("perf", metric="latency_p50", unit="ms", value=10.0, extra={"batch_size": 1}),
        _record("perf", metric="latency_p50", unit="ms", value=18.0, extra={"batch_size": 2}),
        _record("perf", metric="throughput", unit="img/s", value=100.0, extra={"batch_size": 2}),
        _record("perf", metric="latency_p50", unit="ms", value=9.0, target="ort"),
    ]
    assert bm_html.latency_points(records) == {"cpu:fp16 latency_p50": ([1, 2], [10.0, 18.0])}


def test_record_extras_are_png_extras_for_series() -> None:
    layered = _record(extra={"per_layer": layer_series(["stem", "p3"], [0.01, 0.3], "p3")}, passed=False, value=0.3)
    swept = _record("perf", metric="latency_p50", unit="ms", extra={"per_batch": batch_series([1, 2], [5.0, 9.0])})
    found = bm_html.record_extras([layered, swept, _record()])
    assert [(e["format_type"], e["mime_type"], e["name"]) for e in found] == [
        ("image", "image/png", "relative_l2_error on cpu:fp16 per layer"),
        ("image", "image/png", "latency_p50 on cpu:fp16 latency"),
    ]
    assert all(base64.b64decode(e["content"]).startswith(PNG_SIGNATURE) for e in found)


def test_html_hooks_are_registered_only_with_html(pytester: pytest.Pytester) -> None:
    assert not pytester.parseconfigure("--bm-target=cpu").pluginmanager.has_plugin(HTML_HOOKS_NAME)
    assert pytester.parseconfigure("--bm-target=cpu", "--html=r.html").pluginmanager.has_plugin(HTML_HOOKS_NAME)


def test_html_report_embeds_the_summary_and_the_per_layer_plot(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(RECORDING_PROJECT)
    pytester.runpytest("--bm-target=cpu", "--html=r.html", "--self-contained-html")
    page = (pytester.path / "r.html").read_text(encoding="utf-8")
    assert "BlendMask acceptance: FAIL (judged: " in page and ">Precision</h3>" in page
    assert "relative_l2_error on cpu:fp16 per layer" in page


def test_layer_error_plot_is_png_with_nan_and_without_limit() -> None:
    png = plots.layer_error_plot(["a", "b", "c"], [1e-4, math.nan, "Infinity"], limit=None, first_divergent=None,
                                 title="t", ylabel="relative_l2_error")
    assert png.startswith(PNG_SIGNATURE)
    marked = plots.layer_error_plot(["a", "b"], [1e-4, 0.5], limit=0.1, first_divergent="b", title="t", ylabel="e")
    assert marked.startswith(PNG_SIGNATURE) and marked != png


def test_latency_plot_is_png() -> None:
    png = plots.latency_plot({"cpu:fp16 latency_p50": ([4, 1, 2], [30.0, 10.0, 17.0]), "ort": ([1], [9])}, title="t")
    assert png.startswith(PNG_SIGNATURE)


def test_report_tables_share_rows_between_markdown_and_html() -> None:
    minimal = {
        "environment": {"host": {"name": "h", "platform": "p", "cpus": 2}, "python": "3.11", "pytest": "9",
                        "torch": None, "torch_npu": {"version": None, "available": False, "reason": "no torch_npu"},
                        "cann": {"version": "not found", "source": None},
                        "onnxruntime": {"version": "1.2", "providers": ["CPUExecutionProvider"], "reason": None},
                        "targets": ["cpu:fp16", "ort"], "targets_auto": True, "reference": "cpu", "devices": [],
                        "thresholds": None,
                        "model": {"name": "lite", "input_size": [64, 96], "weights": "random init (seed 0)", "weights_sha256": None}},
        "records": {"precision": [_record(value="NaN")], "perf": [], "atc": []},
        "skips": [], "failures": [],
    }
    tables = {t.title: t for t in report_tables(minimal)}
    environment = dict(map(tuple, tables["Environment"].rows))
    assert environment["torch_npu"] == "not installed (unavailable: no torch_npu)"
    assert environment["Targets"] == "cpu:fp16, ort (auto-selected)"
    assert environment["Model"] == "lite, input 64x96"
    assert tables["Precision"].rows == [["test_layers[cpu:fp16]", "cpu:fp16", "relative_l2_error", "NaN", "≤ 0.1", "", "pass", ""]]
    assert tables["Performance"].rows == [] and tables["Performance"].empty == "No perf records in this run."


def test_operator_checks_get_a_table_per_target_with_the_deform_conv_choice_as_its_note() -> None:
    def op_record(target: str, metric: str, value: float, passed: bool) -> dict:
        return _record(test="tests/precision/test_ops.py::test_operator[roi_align-x]", target=target, metric=metric,
                       value=value, limit=1e-3, passed=passed,
                       extra={"operator": "roi_align", "inputs": "captured blender#0 (boxes [3, 5])", "runs_in": "fp32"})

    selection = _record(target="cpu:fp16", metric="deform_conv2d.selection", value=None, op=None, limit=None,
                        detail="deform_conv2d: the model has no deformable layers; on cpu:fp16 one would run fallback.",
                        extra={"operator": "deform_conv2d", "selection": "fallback"})
    records = [_record(), op_record("cpu:fp16", "roi_align.max_relative_excess", 2e-4, True), selection,
               op_record("cpu:bf16", "roi_align.max_relative_excess", 5e-3, False)]
    tables = operator_tables(records)
    assert [t.title for t in tables] == ["Operators: cpu:fp16", "Operators: cpu:bf16"]
    assert tables[0].rows == [["roi_align", "captured blender#0 (boxes [3, 5])", "fp32", "max_relative_excess", "0.0002",
                               "≤ 0.001", "pass"]]
    assert tables[0].note == selection["detail"] and tables[1].note == ""
    assert tables[1].rows[0][-1] == "FAIL"
    markdown = final.render_table_md(tables[0])
    assert markdown.startswith(f"## Operators: cpu:fp16\n\n{selection['detail']}\n\n| Operator |")
    assert f"<p>{selection['detail']}</p>" in bm_html.table_html(tables[0])


def test_a_floor_record_plots_accumulated_local_and_floor_on_one_chart() -> None:
    series = layer_series(["stem", "p3"], [0.01, 0.3], "p3", lines={"local (replay)": [0.001, 0.2],
                                                                     "floor, local (autocast_fp16)": [0.001, 0.002]},
                          kind="LOCAL")
    assert series["kind"] == "LOCAL" and list(series["lines"]) == ["local (replay)", "floor, local (autocast_fp16)"]
    (found,) = bm_html.record_extras([_record(metric="local_error_floor_ratio", extra={"per_layer": series},
                                              passed=False, value=100.0)])
    plain = plots.layer_error_plot(series["layers"], series["values"], limit=None, first_divergent="p3", title="t",
                                   ylabel="accumulated relative L2 error")
    assert base64.b64decode(found["content"]).startswith(PNG_SIGNATURE)
    assert base64.b64decode(found["content"]) != plain  # the extra lines are drawn
    with pytest.raises(ValueError, match="2 layers but 1 local"):
        layer_series(["stem", "p3"], [0.01, 0.3], None, lines={"local": [0.1]})
