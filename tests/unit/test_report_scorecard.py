"""The scorecard (the reviewer's first screen) and the verdict line that names the levels judged and not."""
from __future__ import annotations

import math
import re

import pytest

from pytest_blendmask.report import final
from pytest_blendmask.report import html as bm_html
from pytest_blendmask.report.collect import TestOutcome
from pytest_blendmask.report.scorecard import NO_TARGET, build_scorecard, limit_used, scorecard_table, verdict_line
from pytest_blendmask.report.tables import Anchor, heading_slug
from tests.unit.report_support import assert_valid, final_report

# The case: tensor gates pass, every detection and AP test skips (random weights), the
# ATC test skips, no perf test is selected. With --bm-target cpu:bf16 too, its tensor level
# fails at a module the floor comparison names LOCAL.
SCORECARD_PROJECT = '''
import pytest
from pytest_blendmask.report import layer_series

FAULTY = "cpu:bf16"

@pytest.mark.bm_level("tensor")
@pytest.mark.precision
def test_worst_layer_error(bm_record, dut_target):
    values = [1e-4, 0.3 if dut_target.id == FAULTY else 2e-3, 4e-3]
    first = "fpn.p3" if dut_target.id == FAULTY else None
    bm_record("precision", dut_target.id, "worst_layer_relative_l2_error", max(values), 0.1, "", max(values) <= 0.1,
              op="<=", per_layer=layer_series(["stem", "fpn.p3", "head"], values, first))

@pytest.mark.bm_level("tensor")
@pytest.mark.precision
def test_cosine(bm_record, dut_target):
    bm_record("precision", dut_target.id, "min_layer_cosine_similarity", 0.995, 0.99, "", True, op=">=")

@pytest.mark.bm_level("tensor")
@pytest.mark.precision
def test_local_floor(bm_record, dut_target):
    ratio = 40.0 if dut_target.id == FAULTY else 2.0
    kind = "LOCAL" if dut_target.id == FAULTY else None
    series = layer_series(["stem", "fpn.p3", "head"], [1e-4, 0.3, 0.3], "fpn.p3" if kind else None,
                          lines={"local (replay)": [1e-4, 0.3, 1e-3]}, kind=kind)
    bm_record("precision", dut_target.id, "local_error_floor_ratio", ratio, 10.0, "", ratio <= 10.0, op="<=",
              per_layer=series,
              localisation={"kind": kind, "module": "fpn" if kind else None, "entry": "fpn.p3" if kind else None})

@pytest.mark.bm_level("detection")
@pytest.mark.precision
@pytest.mark.parametrize("gate", ["box_error", "mask_iou"])
def test_detection_gate(dut_target, gate):
    pytest.skip("the reference detects nothing on the detection images (random weights?)")

@pytest.mark.bm_level("AP")
@pytest.mark.precision
def test_ap_drop(dut_target):
    pytest.skip("reference box AP 0.0 < 5.0: the model is not trained (see --bm-weights)")

@pytest.mark.atc
def test_atc_compiles():
    pytest.skip("`atc` not on PATH")
'''


def _row(report: dict, target: str) -> dict:
    return next(row for row in report["scorecard"]["rows"] if row["target"] == target)


def _cells(row: dict) -> dict[str, dict]:
    return {cell["level"]: cell for cell in row["cells"]}


def _record(report: dict, ref: dict) -> dict:
    return report["records"][ref["family"]][ref["index"]]


def test_a_pass_resting_on_one_level_names_it_on_every_verdict_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SCORECARD_PROJECT)
    result = pytester.runpytest("--bm-target=cpu", "--html=r.html", "--self-contained-html")
    result.assert_outcomes(passed=3, skipped=4)
    line = "PASS (judged: tensor; not run: detection, AP, ATC; not selected: perf)"
    result.stdout.fnmatch_lines([f"*= blendmask verdict: {line} =*"])
    report = final_report(pytester)
    assert_valid(report)
    assert report["scorecard"]["verdict_line"] == line
    markdown = (pytester.path / "reports" / final.MD_NAME).read_text(encoding="utf-8")
    assert markdown.startswith(f"# BlendMask acceptance: {line}\n\nEvery gate that ran passed.\n")
    assert markdown.index("## Scorecard") < markdown.index("## Environment")
    page = (pytester.path / "r.html").read_text(encoding="utf-8")
    assert f"<strong>BlendMask acceptance: {line}</strong>" in page


def test_one_row_per_target_one_cell_per_level_with_the_skip_reasons(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SCORECARD_PROJECT)
    result = pytester.runpytest("--bm-target=cpu", "--bm-target=cpu:bf16")
    result.assert_outcomes(passed=4, failed=2, skipped=7)
    report = final_report(pytester)
    assert_valid(report)
    card = report["scorecard"]
    assert [s["level"] for s in card["levels"]] == ["tensor", "detection", "AP", "perf", "ATC"]  # no operator test
    assert [row["target"] for row in card["rows"]] == ["cpu", "cpu:bf16", NO_TARGET]
    statuses = {row["target"]: [c["status"] for c in row["cells"]] for row in card["rows"]}
    assert statuses == {
        "cpu": ["pass", "not run", "not run", "not selected", "n/a"],
        "cpu:bf16": ["fail", "not run", "not run", "not selected", "n/a"],
        NO_TARGET: ["n/a", "n/a", "n/a", "not selected", "not run"],
    }
    bf16 = _cells(_row(report, "cpu:bf16"))
    assert bf16["tensor"]["counts"] == {"ran": 3, "failed": 2, "skipped": 0}
    assert bf16["detection"]["reasons"] == ["the reference detects nothing on the detection images (random weights?) (2 tests)"]
    assert bf16["AP"]["reasons"] == ["reference box AP 0.0 < 5.0: the model is not trained (see --bm-weights)"]
    assert bf16["perf"]["reasons"] == ["not selected (-m, -k or the paths given)"]
    assert bf16["ATC"]["reasons"] == ["no ATC test for cpu:bf16"]
    assert _cells(_row(report, NO_TARGET))["ATC"]["reasons"] == ["`atc` not on PATH"]
    assert card["verdict_line"] == "FAIL (judged: tensor; not run: detection, AP, ATC; not selected: perf)"
    result.stdout.fnmatch_lines([f"*= blendmask verdict: {card['verdict_line']} =*"])


def test_worst_metric_and_first_divergent_layer_with_its_classification(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SCORECARD_PROJECT)
    pytester.runpytest("--bm-target=cpu", "--bm-target=cpu:bf16")
    report = final_report(pytester)
    clean, faulty = _row(report, "cpu"), _row(report, "cpu:bf16")
    # Clean: the floor ratio uses 20 % of its allowance, the worst layer 4 %, the cosine 50 %.
    assert _record(report, clean["worst"]["record"])["metric"] == "min_layer_cosine_similarity"
    assert clean["first_divergent"] is None
    # Faulty: the first failing record (in test order) decides, and the floor comparison's LOCAL
    # localisation is preferred to the tensor gate's unclassified first divergent layer.
    assert _record(report, faulty["worst"]["record"])["metric"] == "local_error_floor_ratio"
    assert {k: faulty["first_divergent"][k] for k in ("layer", "module", "kind")} == {
        "layer": "fpn.p3", "module": "fpn", "kind": "LOCAL"}
    # The plot is the floor comparison's (its accumulated, local and floor lines together).
    assert _record(report, faulty["plot"])["metric"] == "local_error_floor_ratio"
    rows = {row[0]: row for row in scorecard_table(report).rows}
    assert rows["cpu:bf16"][1:] == [
        "FAIL: 2 of 3 failed", "not run: the reference detects nothing on the detection images (random weights?) (2 tests)",
        "not run: reference box AP 0.0 < 5.0: the model is not trained (see --bm-weights)", "not selected", "n/a",
        "tensor: local_error_floor_ratio 40 ≤ 10 (past its limit)", "LOCAL at fpn.p3 (module fpn)"]
    assert rows["cpu"][1] == "PASS: 3 ran"
    assert rows["cpu"][-2:] == ["tensor: min_layer_cosine_similarity 0.995 ≥ 0.99 (50% of its allowance)", "none"]
    assert rows[NO_TARGET][-2:] == ["—", "—"]


def test_every_scorecard_link_reaches_its_details_in_html_and_markdown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SCORECARD_PROJECT)
    pytester.runpytest("--bm-target=cpu", "--bm-target=cpu:bf16")
    report = final_report(pytester)
    table = scorecard_table(report)
    faulty = next(links for row, links in zip(table.rows, table.links) if row[0] == "cpu:bf16")
    worst = _row(report, "cpu:bf16")["worst"]["record"]
    assert faulty[1] == Anchor("Precision", f"bm-record-precision-{worst['index']}")  # the failing tensor gate
    assert faulty[2] == Anchor("Skipped")  # not run: the skips and their reasons
    assert faulty[4] is None and faulty[5] is None  # not selected, n/a: nothing to show
    assert faulty[-1] == Anchor("Precision", "bm-plot-1")  # the target's per-layer plot
    fragments = bm_html.summary_fragments(report)
    page = "".join(fragments["prefix"] + fragments["summary"])
    hrefs = set(re.findall(r'href="#([^"]+)"', page))
    assert {"bm-record-precision-" + str(worst["index"]), "bm-skipped", "bm-plot-1"} <= hrefs
    assert all(f'id="{anchor}"' in page for anchor in hrefs)
    assert page.index('id="bm-scorecard"') < page.index('id="bm-plot-0"') < page.index('id="bm-environment"')
    markdown = final.render_markdown(report)
    headings = {heading_slug(h) for h in re.findall(r"^## (.+)$", markdown, flags=re.M)}
    targets = set(re.findall(r"\]\(#([^)]+)\)", markdown))
    assert targets == {"precision", "skipped"} and targets <= headings


def test_a_level_marker_naming_no_level_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('import pytest\n@pytest.mark.bm_level("tensors")\ndef test_a():\n    pass\n')
    result = pytester.runpytest("--bm-target=cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *test_a: @pytest.mark.bm_level expects one of operators, tensor, *; got 'tensors'"])


def _test(level: str | None, target: str | None, outcome: str, reason: str = "", records: list | None = None) -> TestOutcome:
    return TestOutcome(f"t::{level}-{target}-{len(reason)}", outcome, [], records or [], reason, None, level, target)


def test_operators_column_only_when_collected_and_partly_judged_levels_name_where_not() -> None:
    env_targets = ["cpu:fp16", "ort"]
    tests = [
        _test("operators", "cpu:fp16", "passed"),
        _test("operators", "ort", "skipped", "ort runs a compiled graph (ONNX Runtime / .om), not PyTorch operators"),
        _test("tensor", "cpu:fp16", "passed"),
        _test("tensor", "ort", "passed"),
    ]
    card = build_scorecard(tests, env_targets, {"precision": [], "perf": [], "atc": []}, "pass")
    assert card["verdict_line"] == (
        "PASS (judged: operators (not run on ort), tensor; not selected: detection, AP, perf, ATC)")
    without = build_scorecard(tests[2:], env_targets, {"precision": [], "perf": [], "atc": []}, "pass")
    assert [s["level"] for s in without["levels"]] == ["tensor", "detection", "AP", "perf", "ATC"]


def test_nothing_judged_is_said_and_interrupted_tests_are_not_run() -> None:
    card = build_scorecard([_test("tensor", "cpu", "incomplete")], ["cpu"], {"precision": [], "perf": [], "atc": []},
                           "fail")
    assert card["verdict_line"] == "FAIL (judged: none; not run: tensor; not selected: detection, AP, perf, ATC)"
    assert card["rows"][0]["cells"][0]["reasons"] == ["interrupted before it finished"]
    assert verdict_line("pass", []) == "PASS (judged: none)"


@pytest.mark.parametrize(
    ("value", "op", "limit", "expected"),
    [
        (0.02, "<=", 0.1, 0.2),  # an upper limit: the share of it used
        (0.0, "<=", 0.0, 0.0),  # a zero allowance met (no NaN/Inf mismatch)
        (-0.5, "<=", 1.0, -0.5),  # an AP gain
        (0.995, ">=", 0.99, 0.5),  # a score: the shortfall from 1 against the one allowed
        (1.0, ">=", 1.0, 0.0),
        (20.0, ">=", 10.0, 0.5),  # a throughput floor
        (0.3, "<=", 0.1, math.inf),  # past the limit
        (math.nan, "<=", 0.1, math.inf),
        (1.0, None, None, None),  # informational
        ("NaN", "<=", 0.1, None),  # a written report's NaN: no number to hold
    ],
)
def test_limit_used(value: object, op: str | None, limit: float | None, expected: float | None) -> None:
    assert limit_used(value, op, limit) == (pytest.approx(expected) if expected not in (None, math.inf) else expected)
