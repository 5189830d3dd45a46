"""The plugin's hooks, driven through pytester in throw-away projects."""
from __future__ import annotations

import pytest

from pytest_blendmask.plugin import MARKERS
from pytest_blendmask.targets import probe_torch_npu

FIXTURE_DOCS = {
    "blendmask_model": "The BlendMask model chosen by --bm-model*",
    "cpu_device": "The CPU, where the golden reference runs.",
    "npu_device": "The first Ascend NPU; skips with the torch_npu probe's reason*",
    "reference_target": "The golden reference target chosen by --bm-reference*",
    "dut_targets": "All targets under test*",
    "dut_target": "One target under test*",
    "sample_batch": "The first two evaluation images (``level_images``), preprocessed by the model.",
    "thresholds": "The validated thresholds (--bm-thresholds, else the packaged default).",
    "dump_collector": "Factory ``dump_collector(model*",
    "onnx_model": "The raw network exported to ONNX*",
    "compiled_om": "The ONNX model compiled by ATC*",
    "compiled_target": "``compiled_target(spec)``*",
    "target_run": "``target_run(spec)``*",
    "tensor_comparison": "``tensor_comparison(spec)``*",
    "floor_comparison": "``floor_comparison(spec)``*",
    "detection_comparison": "``detection_comparison(spec)``*",
    "detection_run": "``detection_run(spec)``*",
    "split_run": "``split_run(spec, limit=None)``*",
    "bm_dataset": "--bm-dataset's evaluation images, class map and calibration set*",
    "calibration_set": "The images int8 targets and their noise floor calibrate on*",
    "bm_settings": "The validated --bm-* options of this session.",
    "bm_record": "Record a gate's verdict for the reports; fails the test when the verdict is a failure.",
    "bm_worker_device": "The --bm-devices entry this xdist worker is pinned to*",
    "perf_model": "``perf_model(norm, device)``*",
}


def test_markers_are_registered_with_descriptions(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"@pytest.mark.{name}: {text}" for name, text in MARKERS.items()])


def test_fixtures_are_listed_with_their_docstrings(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures")
    assert result.ret == pytest.ExitCode.OK
    for name, doc in FIXTURE_DOCS.items():
        result.stdout.fnmatch_lines([f"{name} *", f"    {doc}"])


def test_markers_pass_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "\n".join(
            f"import pytest\n@pytest.mark.{name}\ndef test_{name}(): pass\n" for name in ("precision", "perf", "atc", "slow")
        )
    )
    pytester.runpytest("--strict-markers").assert_outcomes(passed=4)


@pytest.mark.skipif(probe_torch_npu() is None, reason="an NPU is present here")
def test_npu_marker_skips_with_probe_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.npu\ndef test_on_npu(): pass\n"
                        "def test_npu_fixture(npu_device): pass\n")
    result = pytester.runpytest("--strict-markers", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED * torch_npu not importable: *pip install pytest-blendmask?npu?*"] * 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bm-model=R_200"], "--bm-model: expected one of lite, R_50, R_101, R_101_dcni3, 550_R_50_3x, RT_R_50_4x_bn-head_syncbn_shtw or module:factory; got 'R_200'*"),
        (["--bm-weights=missing.safetensors"], "--bm-weights: expected an existing file; got 'missing.safetensors'*"),
        (["--bm-target=cpu", "--bm-target=tpu"], "--bm-target: expected cpu[[]:fp16[[]:force]|bf16], *; got 'tpu'*"),
        (["--bm-reference=gpu"], "--bm-reference: expected cpu[[]:fp16[[]:force]|bf16], *; got 'gpu'*"),
        (["--bm-thresholds=nope.toml"], "--bm-thresholds: expected an existing file; got 'nope.toml'*"),
        (["--bm-input-size=500"], "--bm-input-size: expected S or HxW with each side a positive multiple of 32; got '500'*"),
        (["--bm-batch-sizes=1,0"], "--bm-batch-sizes: expected a comma-separated list of distinct positive integers*; got '1,0'*"),
        (["--bm-report-dir="], "--bm-report-dir: expected a directory path; got ''*"),
        (["--bm-dump-dir= "], "--bm-dump-dir: expected a directory path; got ' '*"),
        (["--bm-dump-mode=tensor"], "--bm-dump-mode: expected full or stats; got 'tensor'*"),
        (["--bm-devices=npu0"], "--bm-devices: expected cpu, cuda:N or npu:N; got 'npu0'*"),
        (["--bm-soc-version=910B"], "--bm-soc-version: expected an ATC --soc_version such as *; got '910B'*"),
        (["--bm-require=npu,tpu"], "--bm-require: expected a comma-separated list of precision, perf, atc, npu, cuda; got 'npu,tpu'*"),
    ],
)
def test_bad_option_value_is_a_usage_error(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}(from command line; ini key bm_*)"])


def test_bad_ini_value_is_a_usage_error_naming_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_soc_version = Atlas300\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --bm-soc-version: expected *; got 'Atlas300' (from ini bm_soc_version)"])


def test_report_header_names_model_reference_targets_and_npu_env(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--bm-target=cpu", "--bm-target=ort:cann", "--bm-reference=cpu", "--bm-input-size=64")
    result.stdout.fnmatch_lines(
        [
            "blendmask model: lite, input 64x64",
            "blendmask weights: *",
            "blendmask reference: cpu",
            "blendmask thresholds: *",
            "blendmask data: synthetic shapes (give --bm-dataset PATH for a COCO-format set)",
            "blendmask reference cache: */reference (reuse)",
            "blendmask targets: cpu, ort:cann (from --bm-target)",
            "blendmask skipped: ort:cann: ONNX Runtime provider CANNExecutionProvider not in get_available_providers()*",
            "blendmask npu env: TASK_QUEUE_ENABLE=* PYTORCH_NPU_ALLOC_CONF=* ASCEND_RT_VISIBLE_DEVICES=* "
            "ASCEND_LAUNCH_BLOCKING=*",
        ],
        consecutive=True,
    )


def test_report_header_says_when_targets_were_auto_selected(pytester: pytest.Pytester) -> None:
    pytester.runpytest().stdout.fnmatch_lines(["blendmask targets: *, ort (auto: none given)"])


def test_ini_targets_apply_and_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_target =\n    cpu:bf16\n    ort:fp16\n")
    pytester.runpytest().stdout.fnmatch_lines(["blendmask targets: cpu:bf16, ort:fp16 (from --bm-target)"])
    pytester.runpytest("--bm-target=cpu").stdout.fnmatch_lines(["blendmask targets: cpu (from --bm-target)"])


def test_dut_target_parametrizes_and_skips_unavailable_with_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_target(dut_target, dut_targets, reference_target):
            assert dut_target in dut_targets
            assert reference_target.id == "cpu"
        """
    )
    result = pytester.runpytest("--bm-target=cpu:fp16", "--bm-target=ort:cann", "-rs", "-v")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*test_target[[]cpu:fp16[]] PASSED*",
            "*test_target[[]ort:cann[]] SKIPPED*",
            "SKIPPED * ONNX Runtime provider CANNExecutionProvider not in get_available_providers()*",
        ]
    )


def test_thresholds_fixture_loads_the_given_file(pytester: pytest.Pytester) -> None:
    from pytest_blendmask.precision.thresholds import default_thresholds_path

    text = default_thresholds_path().read_text(encoding="utf-8")
    pytester.makefile(".toml", limits=text.replace("max_box_ap_drop = 3.0", "max_box_ap_drop = 7.5"))
    pytester.makepyfile(
        """
        def test_limits(thresholds):
            assert thresholds.accuracy["int8"].max_box_ap_drop == 7.5
            assert thresholds.path.name == "limits.toml"
        """
    )
    pytester.runpytest("--bm-thresholds=limits.toml").assert_outcomes(passed=1)


def test_bad_thresholds_file_is_a_usage_error_naming_file_and_key(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", limits="[precision.tensor.fp16]\ncosine_min = 0.99\n")
    result = pytester.runpytest("--bm-thresholds=limits.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --bm-thresholds: *limits.toml*"])


def test_model_and_sample_batch_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch

        def test_batch(blendmask_model, sample_batch, cpu_device):
            assert not blendmask_model.training
            assert [tuple(i.shape) for i in sample_batch.images] == [(3, 64, 96)] * 2
            assert all(i.dtype == torch.uint8 for i in sample_batch.images)
            assert tuple(sample_batch.tensor.shape) == (2, 3, 64, 96)
            assert sample_batch.tensor.device == cpu_device
            assert sample_batch.image_sizes == [(64, 96)] * 2
        """
    )
    pytester.runpytest("--bm-input-size=64x96").assert_outcomes(passed=1)


def test_sample_batch_is_the_same_in_every_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pathlib import Path

        def test_batch(sample_batch):
            checksum = sum(int(i.long().sum()) for i in sample_batch.images)
            with Path("checksums.txt").open("a") as out:
                out.write(f"{checksum}\\n")
        """
    )
    for _ in range(2):
        pytester.runpytest("--bm-input-size=64").assert_outcomes(passed=1)
    first, second = (pytester.path / "checksums.txt").read_text().split()
    assert first == second


def test_reference_option_reaches_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_reference(reference_target):
            assert reference_target.id == "cpu:bf16"
        """
    )
    pytester.runpytest("--bm-reference=cpu:bf16").assert_outcomes(passed=1)


def test_dut_target_ids_agree_across_xdist_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_target(dut_target):\n    assert dut_target.timed_device == 'cpu'\n")
    result = pytester.runpytest("-n", "2", "--bm-target=cpu", "--bm-target=cpu:bf16")
    result.assert_outcomes(passed=2)
