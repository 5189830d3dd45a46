"""The pure option parsers and resolve_settings' precedence and errors."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pytest_blendmask import settings
from pytest_blendmask.settings import Settings, resolve_settings
from pytest_blendmask.targets import parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512", (512, 512)), (" 640 ", (640, 640)), ("480x640", (480, 640)), ("32X96", (32, 96))],
)
def test_parse_input_size_accepts(text: str, expected: tuple[int, int]) -> None:
    assert settings.parse_input_size(text) == expected


@pytest.mark.parametrize("text", ["0", "500", "-32", "abc", "32x", "x32", "32x32x32", "", "64.0"])
def test_parse_input_size_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        settings.parse_input_size(text)
    assert str(info.value) == f"expected S or HxW with each side a positive multiple of 32; got {text!r}"


@pytest.mark.parametrize(
    ("text", "expected"), [("1,2,4,8,16", (1, 2, 4, 8, 16)), ("8", (8,)), (" 4, 1 ", (4, 1))]
)
def test_parse_batch_sizes_accepts(text: str, expected: tuple[int, ...]) -> None:
    assert settings.parse_batch_sizes(text) == expected


@pytest.mark.parametrize("text", ["", "0", "1,,2", "1,2,2", "-1", "a,b", "1.5"])
def test_parse_batch_sizes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a comma-separated list of distinct positive integers"):
        settings.parse_batch_sizes(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("npu:0,npu:1", ("npu:0", "npu:1")), ("cpu", ("cpu",)), ("cuda:0, cuda:1", ("cuda:0", "cuda:1"))]
)
def test_parse_devices_accepts(text: str, expected: tuple[str, ...]) -> None:
    assert settings.parse_devices(text) == expected


def test_parse_devices_names_bad_entry_and_whole_value() -> None:
    with pytest.raises(ValueError) as info:
        settings.parse_devices("npu:0,gpu:1")
    assert str(info.value) == "expected cpu, cuda:N or npu:N; got 'gpu:1' in 'npu:0,gpu:1'"


@pytest.mark.parametrize("text", ["Ascend910B", "Ascend910B3", "Ascend310P3", "Ascend910_9391"])
def test_parse_soc_version_accepts(text: str) -> None:
    assert settings.parse_soc_version(text) == text


@pytest.mark.parametrize("text", ["910B", "ascend910b", "Ascend", "Ascend 910B", ""])
def test_parse_soc_version_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected an ATC --soc_version such as Ascend910B3"):
        settings.parse_soc_version(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("npu,atc", ("npu", "atc")), (" precision , perf ", ("precision", "perf")), ("cuda,cuda", ("cuda",)), ("", ())],
)
def test_parse_require_accepts(text: str, expected: tuple[str, ...]) -> None:
    assert settings.parse_require(text) == expected


@pytest.mark.parametrize("text", ["tpu", "npu,gpu", "npu:0", "NPU"])
def test_parse_require_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        settings.parse_require(text)
    assert str(info.value) == f"expected a comma-separated list of precision, perf, atc, npu, cuda; got {text!r}"


@pytest.mark.parametrize("text", ["lite", "R_50", "R_101", "R_101_dcni3", "os.path:join", "json:loads"])
def test_parse_model_accepts_configs_and_findable_factories(text: str) -> None:
    assert settings.parse_model(text) == text


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("R_200", ""),
        ("resnet", ""),
        ("module:", ""),
        ("no_such_module_bm:build", " (module 'no_such_module_bm' not found)"),
        ("no_such_pkg_bm.sub:build", " (module 'no_such_pkg_bm.sub' not found)"),
    ],
)
def test_parse_model_rejects(text: str, detail: str) -> None:
    with pytest.raises(ValueError) as info:
        settings.parse_model(text)
    assert str(info.value) == (
        "expected one of lite, R_50, R_101, R_101_dcni3, 550_R_50_3x, RT_R_50_4x_bn-head_syncbn_shtw or module:factory; "
        f"got {text!r}{detail}"
    )


def test_model_names_mirror_the_model_package() -> None:
    from pytest_blendmask.model import CONFIG_NAMES

    assert set(settings.MODEL_NAMES) == set(CONFIG_NAMES)


@pytest.mark.parametrize(("text", "expected"), [("full", "full"), (" stats ", "stats")])
def test_parse_dump_mode_accepts(text: str, expected: str) -> None:
    assert settings.parse_dump_mode(text) == expected


@pytest.mark.parametrize("text", ["", "Full", "tensor", "statistics"])
def test_parse_dump_mode_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        settings.parse_dump_mode(text)
    assert str(info.value) == f"expected full or stats; got {text!r}"


def test_dump_modes_mirror_the_dump_module() -> None:
    from pytest_blendmask.precision.dump import MODES

    assert settings.DUMP_MODES == MODES


def test_parse_existing_file_is_relative_to_base(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text("")
    assert settings.parse_existing_file("t.toml", tmp_path) == tmp_path / "t.toml"
    with pytest.raises(ValueError) as info:
        settings.parse_existing_file("missing.toml", tmp_path)
    assert str(info.value) == f"expected an existing file; got 'missing.toml' ({tmp_path / 'missing.toml'} does not exist)"


def test_every_settings_field_has_exactly_one_option() -> None:
    assert sorted(o.field for o in settings.OPTIONS) == sorted(f.name for f in dataclasses.fields(Settings))


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("model", " Default: 'lite'"), ("batch-sizes", " Default: '1,2,4,8,16'"), ("reference", " Default: 'cpu'"),
     ("dump-dir", "no dumps."), ("dump-mode", " Default: 'full'")],
)
def test_option_help_ends_with_the_settings_default(name: str, suffix: str) -> None:
    option = next(o for o in settings.OPTIONS if o.name == name)
    assert settings.option_help(option).endswith(suffix)


def test_resolve_settings_defaults(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    assert resolve_settings(config) == Settings(report_dir=config.rootpath / "reports")


def test_resolve_settings_reads_every_option(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", thr="")
    pytester.makefile(".safetensors", w="")
    config = pytester.parseconfig(
        "--bm-model=R_50", "--bm-weights=w.safetensors", "--bm-target=npu:0:fp16", "--bm-target=om",
        "--bm-reference=cpu:bf16", "--bm-thresholds=thr.toml", "--bm-input-size=480x640",
        "--bm-batch-sizes=1,4", "--bm-report-dir=out", "--bm-dump-dir=dumps", "--bm-dump-mode=stats",
        "--bm-devices=npu:0,npu:1", "--bm-soc-version=Ascend310P3", "--bm-require=npu,atc",
    )
    here = pytester.path
    assert resolve_settings(config) == Settings(
        model="R_50", weights=here / "w.safetensors", targets=(parse_target("npu:0:fp16"), parse_target("om")),
        reference=parse_target("cpu:bf16"), thresholds=here / "thr.toml", input_size=(480, 640),
        batch_sizes=(1, 4), report_dir=here / "out", dump_dir=here / "dumps", dump_mode="stats",
        devices=("npu:0", "npu:1"), soc_version="Ascend310P3", require=("npu", "atc"),
    )


def test_ini_paths_are_relative_to_the_ini_file(pytester: pytest.Pytester) -> None:
    project = pytester.mkdir("project")
    (project / "thr.toml").write_text("")
    (project / "pytest.ini").write_text("[pytest]\nbm_thresholds = thr.toml\nbm_dump_dir = dumps\n")
    config = pytester.parseconfig("-c", str(project / "pytest.ini"))
    resolved = resolve_settings(config)
    assert (resolved.thresholds, resolved.dump_dir) == (project / "thr.toml", project / "dumps")


def test_command_line_wins_over_ini_even_when_falsy_looking(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_batch_sizes = 2,4\nbm_target =\n    cpu:bf16\n    ort\n")
    assert resolve_settings(pytester.parseconfig()).batch_sizes == (2, 4)
    assert [t.id for t in resolve_settings(pytester.parseconfig()).targets] == ["cpu:bf16", "ort"]
    config = pytester.parseconfig("--bm-batch-sizes=1", "--bm-target=cpu")
    assert (resolve_settings(config).batch_sizes, resolve_settings(config).targets) == ((1,), (parse_target("cpu"),))


def test_usage_error_from_ini_names_option_value_and_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_target = tpu\n")
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig())
    assert str(info.value) == (
        "--bm-target: expected cpu[:fp16[:force]|bf16], cuda:N[:fp16[:force]|bf16], npu:N[:fp16[:force]|bf16], "
        "ort[:fp16|int8|cann|cuda] or om; got 'tpu' (from ini bm_target)"
    )


def test_usage_error_from_command_line_also_names_ini_key(pytester: pytest.Pytester) -> None:
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig("--bm-input-size=100"))
    assert str(info.value) == (
        "--bm-input-size: expected S or HxW with each side a positive multiple of 32; got '100' "
        "(from command line; ini key bm_input_size)"
    )


def test_factory_model_needs_input_size(pytester: pytest.Pytester) -> None:
    with pytest.raises(pytest.UsageError, match=r"^--bm-input-size: required with --bm-model 'json:loads' .*bm_input_size"):
        resolve_settings(pytester.parseconfig("--bm-model=json:loads"))
    assert resolve_settings(pytester.parseconfig("--bm-model=json:loads", "--bm-input-size=64")).input_size == (64, 64)


def test_weights_fall_back_to_shipped_then_random(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "lite.safetensors"
    monkeypatch.setattr(settings, "packaged_file", lambda name: shipped if name == "weights/lite.safetensors" else None)
    assert settings.weights_path(Settings()) == shipped
    assert settings.weights_path(Settings(weights=tmp_path / "mine.pth")) == tmp_path / "mine.pth"
    assert settings.weights_path(Settings(model="R_50")) is None
    assert settings.describe_settings(Settings(model="R_50"))[1] == (
        "weights: random init (seed 0): no --bm-weights and no shipped weights for R_50"
    )


@pytest.mark.parametrize(("text", "expected"), [("quick", "quick"), (" full ", "full")])
def test_parse_perf_grid_accepts(text: str, expected: str) -> None:
    assert settings.parse_perf_grid(text) == expected


def test_perf_grid_defaults_to_quick_and_rejects_unknown_names(pytester: pytest.Pytester) -> None:
    assert resolve_settings(pytester.parseconfig()).perf_grid == "quick"
    pytester.makeini("[pytest]\nbm_perf_grid = full\n")
    assert resolve_settings(pytester.parseconfig()).perf_grid == "full"
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig("--bm-perf-grid=huge"))
    assert str(info.value) == "--bm-perf-grid: expected quick or full; got 'huge' (from command line; ini key bm_perf_grid)"


def test_reference_cache_defaults_to_reuse_and_rejects_unknown_modes(pytester: pytest.Pytester) -> None:
    assert resolve_settings(pytester.parseconfig()).reference_cache == "reuse"
    pytester.makeini("[pytest]\nbm_reference_cache = recompute\n")
    assert resolve_settings(pytester.parseconfig()).reference_cache == "recompute"
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig("--bm-reference-cache=off"))
    assert str(info.value) == ("--bm-reference-cache: expected reuse or recompute; got 'off' "
                               "(from command line; ini key bm_reference_cache)")


def test_deform_conv_defaults_to_auto_and_rejects_unknown_modes(pytester: pytest.Pytester) -> None:
    assert resolve_settings(pytester.parseconfig()).deform_conv == "auto"
    assert resolve_settings(pytester.parseconfig("--bm-deform-conv", " fallback")).deform_conv == "fallback"
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig("--bm-deform-conv=dcnv3"))
    assert str(info.value) == ("--bm-deform-conv: expected auto, torchvision, fallback; got 'dcnv3' "
                               "(from command line; ini key bm_deform_conv)")


def test_an_unusable_factory_stops_the_session_at_start(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        badmodel="import torch\ndef number():\n    return 42\ndef lists():\n    return ListsOut()\n"
        "class ListsOut(torch.nn.Module):\n    def forward(self, x):\n        return [{'boxes': x}]\n",
        test_never="def test_never():\n    raise AssertionError('a session with an unusable model must not run tests')\n",
    )
    pytester.syspathinsert()
    result = pytester.runpytest("--bm-model=badmodel:number", "--bm-input-size=64")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --bm-model: badmodel:number returned a int; expected a torch.nn.Module*README section*"])
    result = pytester.runpytest("--bm-model=badmodel:lists", "--bm-input-size=64")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --bm-model: ListsOut(batch) returned list, not a tensor*give the model forward_raw*"])
