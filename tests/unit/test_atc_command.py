"""ATC without CANN: command builder, log parser, fusion files, the runner against a fake ``atc``, .om profiles.

``fake_atc/atc`` prints recorded ATC console texts (see its header); nothing here claims
that a model compiled.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_blendmask.atc.atc import (
    DEFAULT_DYNAMIC_BATCH_SIZES,
    AtcConfigError,
    AtcError,
    AtcOptions,
    AtcTimeout,
    build_atc_command,
    compile_om,
    parse_atc_log,
)
from pytest_blendmask.atc.fusion import (
    ALL_OFF,
    CONV_BN_FUSION,
    DEFAULT_SWITCHES,
    FusionPass,
    FusionSwitchError,
    FusionSwitches,
    parse_fusion_result,
    parse_fusion_switch,
    read_fusion_switch,
    render_fusion_switch,
    write_fusion_switch,
)
from pytest_blendmask.atc.om import OmProfileError, OmRunner, ais_bench_reason, check_batch_profiles

FAKE_ATC_DIR = Path(__file__).parent / "fake_atc"
LOGS = FAKE_ATC_DIR / "logs"
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
SOC = "Ascend910B3"
HW = (128, 160)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    """A stand-in .onnx: the builder checks only that the file exists, the fake atc never reads it."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    return path


@pytest.fixture
def fake_atc(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Put the fake ``atc`` first on PATH; set FAKE_ATC_SCENARIO through the returned monkeypatch."""
    monkeypatch.setenv("PATH", f"{FAKE_ATC_DIR}{os.pathsep}{os.environ['PATH']}")
    return monkeypatch


# --- command builder -------------------------------------------------------------------------


def test_static_command_has_every_required_option(onnx_file, tmp_path):
    options = AtcOptions(SOC, precision_mode="allow_fp32_to_fp16")
    command = build_atc_command(onnx_file, tmp_path / "out" / "m", HW, options)
    assert command == [
        "atc",
        f"--model={onnx_file.resolve()}",
        "--framework=5",
        f"--output={(tmp_path / 'out' / 'm').resolve()}",
        f"--soc_version={SOC}",
        "--input_shape=input:1,3,128,160",
        "--input_format=NCHW",
        "--log=error",
        "--precision_mode=allow_fp32_to_fp16",
    ]


def test_dynamic_batch_command_writes_minus_one_and_the_profiles(onnx_file, tmp_path):
    options = AtcOptions(SOC, precision_mode_v2="origin", dynamic_batch_sizes=DEFAULT_DYNAMIC_BATCH_SIZES)
    command = build_atc_command(onnx_file, tmp_path / "m", HW, options, input_name="images")
    assert "--input_shape=images:-1,3,128,160" in command
    assert "--dynamic_batch_size=1,2,4,8" in command
    assert "--precision_mode_v2=origin" in command
    assert not any(arg.startswith("--precision_mode=") for arg in command)


def test_cfg_files_are_passed_as_absolute_paths(onnx_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_fusion_switch(Path("fusion_switch.cfg"))
    Path("insert_op.cfg").write_text("aipp_op {}\n")
    options = AtcOptions(SOC, fusion_switch_file=Path("fusion_switch.cfg"), insert_op_conf=Path("insert_op.cfg"))
    command = build_atc_command(onnx_file, tmp_path / "m", HW, options)
    assert f"--fusion_switch_file={tmp_path / 'fusion_switch.cfg'}" in command
    assert f"--insert_op_conf={tmp_path / 'insert_op.cfg'}" in command


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (AtcOptions(SOC, precision_mode="force_fp16", precision_mode_v2="fp16"), r"--precision_mode \(force_fp16\) and --precision_mode_v2 \(fp16\) cannot be combined"),
        (AtcOptions(SOC, precision_mode="fp16"), r"--precision_mode: expected one of must_keep_origin_dtype, .*; got 'fp16'"),
        (AtcOptions(SOC, precision_mode_v2="force_fp16"), r"--precision_mode_v2: expected one of fp16, origin, .*; got 'force_fp16'"),
        (AtcOptions("910B"), r"--soc_version: expected Ascend \+ the chip name from `npu-smi info`.*got '910B'"),
        (AtcOptions(SOC, log_level="verbose"), r"--log: expected one of debug, info, warning, error, null; got 'verbose'"),
        (AtcOptions(SOC, dynamic_batch_sizes=(4,)), r"--dynamic_batch_size: expected 2 to 100 distinct positive batch sizes; got 4"),
        (AtcOptions(SOC, dynamic_batch_sizes=(1, 1)), r"distinct positive batch sizes; got 1,1"),
        (AtcOptions(SOC, dynamic_batch_sizes=(0, 2)), r"distinct positive batch sizes; got 0,2"),
        (AtcOptions(SOC, fusion_switch_file=Path("/nonexistent/fusion_switch.cfg")), r"--fusion_switch_file: file /nonexistent/fusion_switch.cfg not found"),
        (AtcOptions(SOC, insert_op_conf=Path("/nonexistent/insert_op.cfg")), r"--insert_op_conf: file /nonexistent/insert_op.cfg not found"),
    ],
    ids=["both-precision-modes", "bad-mode", "bad-mode-v2", "bad-soc", "bad-log", "one-profile", "repeated-profile", "zero-batch", "no-fusion-cfg", "no-aipp-cfg"],
)
def test_invalid_options_name_the_option_and_the_accepted_values(onnx_file, tmp_path, options, match):
    with pytest.raises(AtcConfigError, match=match):
        build_atc_command(onnx_file, tmp_path / "m", HW, options)


def test_missing_onnx_file_says_to_export(tmp_path):
    with pytest.raises(AtcConfigError, match=r"--model: ONNX file .*missing\.onnx not found; export the model first"):
        build_atc_command(tmp_path / "missing.onnx", tmp_path / "m", HW, AtcOptions(SOC))


# --- log parser ------------------------------------------------------------------------------


def test_success_log_has_the_banner_and_coded_warnings():
    log = parse_atc_log((LOGS / "success.log").read_text())
    assert log.success_banner and not log.failure_banner
    assert log.errors == ()
    assert [w.code for w in log.warnings] == ["W11001", "W11001"]
    assert log.warnings[0].text.startswith("Op [Slice_29] does not hit the high-priority operator information library")


def test_e10001_failure_is_one_coded_error():
    log = parse_atc_log((LOGS / "e10001.log").read_text())
    assert log.failure_banner and not log.success_banner
    assert [str(e) for e in log.errors] == [
        "E10001: Value [-1] for parameter [image] is invalid. Reason: maybe you should set input_shape to specify its shape."
    ]
    assert log.failure_lines == (str(log.errors[0]),)


def test_error_block_keeps_cause_and_solution_but_drops_pid_stamp_and_traceback():
    (error,) = parse_atc_log((LOGS / "ez3003.log").read_text()).errors
    assert error.code == "EZ3003"
    assert error.text.startswith("No supported Ops kernel and engine are found for [AddDsl], optype [AddDsl].")
    assert "Possible Cause: The operator is not supported by the system." in error.text
    assert "Solution: 1. Check that the OPP component is installed properly." in error.text
    assert "PID" not in error.text and "TraceBack" not in error.text and "ge_generator.cc" not in error.text


def test_uncoded_failure_falls_back_to_the_lines_that_mention_an_error():
    log = parse_atc_log((LOGS / "nolib.log").read_text())
    assert log.errors == ()
    assert len(log.failure_lines) == 1
    assert "error while loading shared libraries: libascend_hal.so" in log.failure_lines[0]


def test_uncoded_failure_without_error_words_reports_the_last_lines():
    text = "\n".join(f"line {i}" for i in range(10))
    assert parse_atc_log(text).failure_lines == tuple(f"line {i}" for i in range(5, 10))


# --- fusion switch file and fusion report ----------------------------------------------------


@pytest.mark.parametrize("switches", [DEFAULT_SWITCHES, ALL_OFF, FusionSwitches(graph={CONV_BN_FUSION: False}, ub={"ALL": True})])
def test_fusion_switch_round_trips(switches):
    assert parse_fusion_switch(render_fusion_switch(switches)) == switches


def test_checked_in_fusion_switch_is_the_default():
    assert read_fusion_switch(REPO_MODELS / "fusion_switch.cfg") == DEFAULT_SWITCHES
    assert (REPO_MODELS / "fusion_switch.cfg").read_text() == render_fusion_switch(DEFAULT_SWITCHES)


def test_switched_off_names_the_passes_and_whole_engines():
    assert ALL_OFF.switched_off() == {"ALL"}
    assert FusionSwitches(graph={CONV_BN_FUSION: False, "X": True}).switched_off() == {CONV_BN_FUSION}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ConvBatchnormFusionPass:off\n", r"not JSON .*the PassName:off line form is not supported here"),
        ('{"GraphFusion": {}}', r"expected a top-level \"Switch\" object"),
        ('{"Switch": {"Fusion": {}}}', r"unknown engine\(s\) \['Fusion'\]"),
        ('{"Switch": {"GraphFusion": ["ConvBatchnormFusionPass"]}}', r"\"GraphFusion\" must be an object of pass names"),
        ('{"Switch": {"GraphFusion": {"ConvBatchnormFusionPass": "false"}}}', r"values must be \"on\" or \"off\"; got \{'ConvBatchnormFusionPass': 'false'\}"),
    ],
    ids=["line-form", "no-switch", "unknown-engine", "list", "bad-value"],
)
def test_bad_fusion_switch_names_the_source_and_the_key(text, match):
    with pytest.raises(FusionSwitchError, match=rf"^my\.cfg: .*{match}"):
        parse_fusion_switch(text, "my.cfg")


def test_missing_fusion_switch_file_names_the_path(tmp_path):
    with pytest.raises(FusionSwitchError, match=r"absent\.cfg: fusion switch file not found"):
        read_fusion_switch(tmp_path / "absent.cfg")


def test_fusion_report_sums_passes_over_graphs():
    passes = parse_fusion_result((FAKE_ATC_DIR / "fusion_result.json").read_text())
    assert passes == [
        FusionPass("ConvBatchnormFusionPass", "graph_fusion", 26, 26),
        FusionPass("ConvToFullyConnectionFusionPass", "graph_fusion", 1, 0),
        FusionPass("SampleUbFusionPass", "ub_fusion", 3, 3),
    ]


# --- runner against the fake atc -------------------------------------------------------------


def test_successful_run_returns_the_om_warnings_and_applied_fusions(fake_atc, onnx_file, tmp_path):
    fake_atc.setenv("FAKE_ATC_SCENARIO", "success")
    switch = write_fusion_switch(tmp_path / "fusion_switch.cfg")
    result = compile_om(onnx_file, tmp_path / "out" / "blendmask", HW, AtcOptions(SOC, fusion_switch_file=switch))
    assert result.ok
    assert result.om_path == (tmp_path / "out" / "blendmask.om").resolve() and result.om_path.is_file()
    assert result.returncode == 0
    assert [w.code for w in result.log.warnings] == ["W11001", "W11001"]
    assert result.applied_fusions == {CONV_BN_FUSION, "SampleUbFusionPass"}
    assert result.log_path.read_text().startswith("ATC start working now")
    assert result.command[0] == "atc"


def test_switched_off_pass_is_not_reported_as_applied(fake_atc, onnx_file, tmp_path):
    fake_atc.setenv("FAKE_ATC_SCENARIO", "success")
    switch = write_fusion_switch(tmp_path / "fusion_switch.cfg", FusionSwitches(graph={CONV_BN_FUSION: False}))
    result = compile_om(onnx_file, tmp_path / "m", HW, AtcOptions(SOC, fusion_switch_file=switch))
    assert CONV_BN_FUSION not in result.applied_fusions


@pytest.mark.parametrize(
    ("scenario", "expected_line"),
    [
        ("e10001", "E10001: Value [-1] for parameter [image] is invalid."),
        ("ez3003", "EZ3003: No supported Ops kernel and engine are found for [AddDsl]"),
        ("nolib", "error while loading shared libraries: libascend_hal.so"),
    ],
)
def test_failed_run_raises_with_the_error_lines_only(fake_atc, onnx_file, tmp_path, scenario, expected_line):
    fake_atc.setenv("FAKE_ATC_SCENARIO", scenario)
    with pytest.raises(AtcError) as info:
        compile_om(onnx_file, tmp_path / "m", HW, AtcOptions(SOC))
    message = str(info.value)
    assert message.startswith("atc failed (exit status ")
    assert expected_line in message
    assert "ATC start working now" not in message and "ATC run failed" not in message
    assert f"full log: {tmp_path / 'atc.log'}" in message
    assert not (tmp_path / "m.om").exists()


def test_hung_atc_is_killed_at_the_timeout(fake_atc, onnx_file, tmp_path):
    fake_atc.setenv("FAKE_ATC_SCENARIO", "hang")
    start = time.monotonic()
    with pytest.raises(AtcTimeout, match=r"atc did not finish within 1 s and was killed; partial log: .*atc\.log"):
        compile_om(onnx_file, tmp_path / "m", HW, AtcOptions(SOC), timeout_s=1)
    assert time.monotonic() - start < 30, "the whole process group (sh and its sleep) must be killed"


def test_missing_atc_says_how_to_get_it(onnx_file, tmp_path):
    with pytest.raises(AtcError, match=r"`no-such-atc` not found on PATH; install the CANN toolkit and `source .*set_env\.sh`"):
        compile_om(onnx_file, tmp_path / "m", HW, AtcOptions(SOC), executable="no-such-atc")


def test_stale_fusion_report_is_not_taken_for_a_failed_run(fake_atc, onnx_file, tmp_path):
    (tmp_path / "fusion_result.json").write_text((FAKE_ATC_DIR / "fusion_result.json").read_text())
    fake_atc.setenv("FAKE_ATC_SCENARIO", "e10001")
    with pytest.raises(AtcError):
        compile_om(onnx_file, tmp_path / "m", HW, AtcOptions(SOC))
    assert not (tmp_path / "fusion_result.json").exists()


# --- .om batch profiles (ais_bench itself needs CANN) ----------------------------------------


def _om_session(batch_dim: int, max_dynamic_batch: int = 0) -> SimpleNamespace:
    """Stands in for ais_bench's InferSession: input descriptors and the largest dynamic profile."""
    return SimpleNamespace(
        get_inputs=lambda: [SimpleNamespace(shape=[batch_dim, 3, 128, 128])],
        get_max_dym_batchsize=lambda: max_dynamic_batch,
    )


@pytest.mark.parametrize(
    ("session", "needed", "match"),
    [
        (_om_session(1), (1,), None),
        (_om_session(1), (1, 2), r"static with batch 1, but batch sizes \[2\] are needed; compile with .*--dynamic_batch_size=1,2"),
        (_om_session(-1, 8), DEFAULT_DYNAMIC_BATCH_SIZES, None),
        (_om_session(-1, 8), (8, 16), r"largest dynamic batch profile is 8, but batch sizes \[16\] are needed"),
    ],
    ids=["static-ok", "static-too-few", "dynamic-ok", "dynamic-too-small"],
)
def test_om_batch_profiles_are_checked_before_use(session, needed, match):
    if match is None:
        check_batch_profiles(session, needed)
    else:
        with pytest.raises(OmProfileError, match=match):
            check_batch_profiles(session, needed)


@pytest.mark.skipif(ais_bench_reason() is None, reason="ais_bench is installed here")
def test_om_runner_without_ais_bench_raises_the_skip_reason(tmp_path):
    with pytest.raises(RuntimeError, match=r"ais_bench not importable: .*install the ais_bench wheel"):
        OmRunner(str(tmp_path / "m.om"), ["bases"])
