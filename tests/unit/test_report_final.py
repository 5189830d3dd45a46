"""FINAL_REPORT.json/.md: content, schema, atomic writes, interrupted runs, and --bm-require."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_blendmask.report import final
from pytest_blendmask.report.collect import TestOutcome
from pytest_blendmask.targets import probe_torch_npu
from tests.unit.report_support import RECORDING_PROJECT, all_records, assert_valid, final_report


def test_real_report_matches_the_schema_and_holds_every_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(RECORDING_PROJECT)
    result = pytester.runpytest("--bm-target=cpu")
    result.assert_outcomes(passed=7, failed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = final_report(pytester)
    assert_valid(report)
    assert report["verdict"] == "fail"
    assert report["reasons"] == [
        "1 test(s) failed: test_real_report_matches_the_schema_and_holds_every_table.py::test_atc_parity",
        "1 gate(s) failed: atc box_max_abs_error on ort (test_atc_parity)",
    ]
    assert [len(report["records"][f]) for f in ("precision", "perf", "atc")] == [5, 4, 1]
    assert report["counts"] == {"passed": 7, "failed": 1, "error": 0, "skipped": 1, "xfailed": 0, "xpassed": 0,
                                "incomplete": 0}
    assert [(s["tags"], s["reason"]) for s in report["skips"]] == [(["atc"], "`atc` not on PATH")]
    assert report["failures"][0]["message"] == "AssertionError: box error 0.5 px > 0.1 px"
    nan = next(r for r in all_records(report) if r["metric"] == "kl_divergence")
    assert nan["value"] == "NaN"  # strict JSON: no bare NaN token
    env = report["environment"]
    assert env["targets"] == ["cpu"] and env["model"]["name"] == "lite"
    assert env["model"]["config"]["num_classes"] == 6
    assert "CPUExecutionProvider" in env["onnxruntime"]["providers"]
    markdown = (pytester.path / "reports" / final.MD_NAME).read_text(encoding="utf-8")
    assert markdown.startswith(
        "# BlendMask acceptance: FAIL (judged: perf, ATC, precision; not selected: tensor, detection, AP)\n")
    for expected in ("## Environment", "## Precision", "| test_layer_error[cpu:bf16] | cpu:bf16 | relative_l2_error | 0.004 | ≤ 0.1 |",
                     "## Performance", "| test_latency[4] | cpu:fp16 | latency_p50 | 40 | ≤ 100 | ms | pass |",
                     "## ATC / compiled model", "| test_om_compile | atc | `atc` not on PATH |"):
        assert expected in markdown
    result.stdout.fnmatch_lines(["*= blendmask verdict: FAIL (judged: perf, ATC, precision; *) =*", "records: precision 5, perf 4, atc 1 (1 failed)",
                                 "reports: *FINAL_REPORT.json, *FINAL_REPORT.md"])


def test_passing_run_has_a_pass_verdict_and_exit_status_ok(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n@pytest.mark.perf\ndef test_fast(bm_record):\n"
        "    bm_record('perf', 'cpu', 'latency_p50', 5.0, 10.0, 'ms', True, op='<=')\n"
    )
    result = pytester.runpytest("--bm-target=cpu")
    assert result.ret == pytest.ExitCode.OK
    report = final_report(pytester)
    assert_valid(report)
    assert (report["verdict"], report["reasons"]) == ("pass", [])
    assert (pytester.path / "reports" / final.MD_NAME).read_text(encoding="utf-8").startswith(
        "# BlendMask acceptance: PASS (judged: perf; not selected: tensor, detection, AP, ATC)\n\n"
        "Every gate that ran passed.\n")


def test_a_failing_record_fails_the_session_even_if_its_assertion_is_swallowed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_hides_the_failure(bm_record):
            with pytest.raises(AssertionError):
                bm_record("perf", "cpu", "throughput", 1.0, 5.0, "img/s", False, op=">=")
        """
    )
    result = pytester.runpytest("--bm-target=cpu")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert final_report(pytester)["reasons"] == ["1 gate(s) failed: perf throughput on cpu (test_hides_the_failure)"]


def test_sigterm_ends_the_run_with_the_report_written(pytester: pytest.Pytester) -> None:
    # What a CI runner sends when the job runs past its time limit.
    pytester.makepyfile(
        """
        import os, signal

        def test_first(bm_record):
            bm_record("precision", "cpu", "cosine_similarity", 1.0, 0.99, "", True, op=">=")

        def test_terminated():
            os.kill(os.getpid(), signal.SIGTERM)

        def test_never_reached():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--bm-target=cpu")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = final_report(pytester)
    assert report["run"]["interrupted"] is True
    assert [r["metric"] for r in report["records"]["precision"]] == ["cosine_similarity"]


def test_interrupted_run_still_writes_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_first(bm_record):
            bm_record("precision", "cpu", "cosine_similarity", 1.0, 0.99, "", True, op=">=")

        def test_ctrl_c():
            raise KeyboardInterrupt

        def test_never_reached():
            pass
        """
    )
    # no_reraise_ctrlc: pytester would otherwise pass the inner Ctrl-C on to this session.
    recorder = pytester.inline_run("--bm-target=cpu", no_reraise_ctrlc=True)
    assert recorder.ret == pytest.ExitCode.INTERRUPTED
    report = final_report(pytester)
    assert_valid(report)
    assert report["run"]["interrupted"] is True and report["run"]["exit_status_name"] == "INTERRUPTED"
    assert report["verdict"] == "fail"
    assert report["reasons"][0].startswith("interrupted")
    assert [r["metric"] for r in report["records"]["precision"]] == ["cosine_similarity"]
    assert (report["counts"]["passed"], report["counts"]["incomplete"]) == (1, 1)


def test_bm_require_turns_a_skip_of_a_required_family_into_a_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.atc
        def test_compile():
            pytest.skip("`atc` not on PATH")

        @pytest.mark.precision
        def test_parity():
            pass
        """
    )
    assert pytester.runpytest("--bm-target=cpu").ret == pytest.ExitCode.OK
    result = pytester.runpytest("--bm-target=cpu", "--bm-require=atc,precision")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    violation = "required atc: 1 test(s) skipped: test_compile (`atc` not on PATH)"
    result.stdout.fnmatch_lines(["*= blendmask verdict: FAIL (judged: precision; not run: ATC; *) =*", f"  {violation}"])
    report = final_report(pytester)
    assert_valid(report)
    assert report["required"] == {"tags": ["atc", "precision"], "violations": [violation]}
    assert report["reasons"] == [violation]


def test_bm_require_fails_when_no_test_of_the_tag_ran(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_require = cuda\n")
    pytester.makepyfile("def test_cpu_only():\n    pass\n")
    result = pytester.runpytest("--bm-target=cpu")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert final_report(pytester)["reasons"] == ["required cuda: no cuda test ran (none selected)"]


@pytest.mark.skipif(probe_torch_npu() is None, reason="an NPU is present here")
def test_bm_require_npu_catches_a_dut_target_skipped_for_want_of_an_npu(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_on_target(dut_target):\n    pass\n")
    result = pytester.runpytest("--bm-target=npu:0", "--bm-target=cpu", "--bm-require=npu")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["  required npu: 1 test(s) skipped: test_on_target[[]npu:0[]] (torch_npu not importable*"])


def test_collect_only_writes_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a():\n    pass\n")
    pytester.runpytest("--collect-only", "--bm-target=cpu")
    assert not (pytester.path / "reports").exists()


def test_collection_error_is_a_failure_with_its_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken="import no_such_module_bm\n")
    pytester.runpytest("--bm-target=cpu")
    report = final_report(pytester)
    assert_valid(report)
    assert report["failures"] == [{"test": "test_broken.py", "outcome": "error",
                                   "message": "ModuleNotFoundError: No module named 'no_such_module_bm'"}]


def _outcome(nodeid: str, outcome: str, tags: list[str], reason: str = "") -> TestOutcome:
    return TestOutcome(nodeid, outcome, tags, [], reason)


@pytest.mark.parametrize(
    ("tests", "expected"),
    [
        ([_outcome("t::a", "passed", ["npu"])], []),
        ([_outcome("t::a", "passed", ["npu"]), _outcome("t::b", "skipped", ["npu"], "no card")],
         ["required npu: 1 test(s) skipped: b (no card)"]),
        ([_outcome(f"t::s{i}", "skipped", ["npu"], "r") for i in range(5)],
         ["required npu: 5 test(s) skipped: s0 (r); s1 (r); s2 (r) and 2 more"]),
        ([_outcome("t::a", "xfailed", ["npu"])], []),
        ([], ["required npu: no npu test ran (none selected)"]),
    ],
)
def test_required_violations(tests: list[TestOutcome], expected: list[str]) -> None:
    assert final.required_violations(tests, ["npu"]) == expected


def test_write_atomic_keeps_the_old_file_and_no_temp_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "FINAL_REPORT.json"
    target.write_text("old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        final.write_atomic(target, "new" * 1000)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["FINAL_REPORT.json"]


def test_write_final_report_writes_nothing_when_rendering_fails(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        final.write_final_report(tmp_path / "reports", {"verdict": "pass"})  # no run, no tables
    assert not (tmp_path / "reports").exists()


def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "FINAL_REPORT.md"
    target.write_text("old")
    final.write_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["FINAL_REPORT.md"]


def test_strict_json_spells_out_non_finite_numbers() -> None:
    assert final.strict_json({"a": [float("nan"), float("inf"), -float("inf"), 1.5]}) == {
        "a": ["NaN", "Infinity", "-Infinity", 1.5]}
