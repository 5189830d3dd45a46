"""The thresholds file: the packaged default, and every way a user's file can be wrong."""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path

import pytest

from pytest_blendmask.precision.thresholds import (
    PRECISIONS,
    Limit,
    ThresholdsError,
    default_thresholds_path,
    load_thresholds,
)

DEFAULT_TEXT = default_thresholds_path().read_text(encoding="utf-8")


def test_packaged_default_loads_with_every_precision():
    thresholds = load_thresholds()
    for family in (thresholds.tensor, thresholds.detection, thresholds.accuracy):
        assert tuple(family) == PRECISIONS
    fp16 = thresholds.tensor["fp16"]
    # Tightened from seed 000's 10 % gate by the measurements quoted in the file, and below
    # the 2 % of the smallest injected fault (one layer scaled by 1.02).
    assert fp16.max_relative_l2_error < 0.02 and fp16.max_mean_relative_l2_error <= fp16.max_relative_l2_error
    # Below the 10 % that a box regression scaled by 1.1 moves a box (the seed's 0.10 lets it pass).
    assert thresholds.detection["fp16"].max_box_error < 0.05
    assert thresholds.perf_for("npu:0:fp16") == thresholds.perf["default"]


def test_thresholds_are_plain_data_for_the_report():
    as_dict = dataclasses.asdict(load_thresholds())
    assert as_dict["tensor"]["fp16"]["max_relative_l2_error"] == load_thresholds().tensor["fp16"].max_relative_l2_error


def test_every_default_key_is_documented_in_a_comment():
    keys = {k for table in _tables(tomllib.loads(DEFAULT_TEXT)) for k, v in table.items() if not isinstance(v, dict)}
    comments = "\n".join(line for line in DEFAULT_TEXT.splitlines() if line.lstrip().startswith("#"))
    assert keys and all(re.search(rf"\b{key}\b", comments) for key in keys), keys


def _tables(document: dict) -> list[dict]:
    found = [document]
    for value in document.values():
        if isinstance(value, dict):
            found += _tables(value)
    return found


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str, count: int = 1) -> str:
    assert old in DEFAULT_TEXT
    return DEFAULT_TEXT.replace(old, new, count)


FP16_SECTION = "[precision.tensor.fp16]\nmax_mean_relative_l2_error = 0.005"


OPERATOR_FP16 = "[precision.operator.fp16]\nmax_relative_error = 1e-3"
OPERATOR_SECTION_ERRORS = [
        pytest.param(edited(OPERATOR_FP16, OPERATOR_FP16 + "\nrtol = 1e-3"),
                     r"\[precision.operator.fp16\] unknown key 'rtol'; accepted: max_relative_error, small_value, ",
                     id="unknown-key"),
        pytest.param(edited(OPERATOR_FP16, "[precision.operator.int8]\nmax_relative_error = 1e-3"),
                     r"\[precision.operator\] unknown precision 'int8'; accepted: fp32, fp16, bf16", id="int8-refused"),
        pytest.param(edited("ulp_threshold = 1\nmax_share_above_ulp_threshold = 0.001\nnms_iou_tie_tolerance = 4e-3",
                            "ulp_threshold = -1\nmax_share_above_ulp_threshold = 0.001\nnms_iou_tie_tolerance = 4e-3"),
                     r"\[precision.operator.bf16\] ulp_threshold = -1.0: expected a value in \[0.0, inf\]", id="negative"),
        pytest.param(edited("nms_iou_tie_tolerance = 1e-6\n", ""),
                     r"\[precision.operator.fp32\] missing key 'nms_iou_tie_tolerance'", id="missing-key"),
]


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(
            edited(FP16_SECTION, FP16_SECTION + "\nmax_rel = 0.1"),
            r"thresholds.toml: \[precision.tensor.fp16\] unknown key 'max_rel' \(did you mean 'max_relative_l2_error'\?\); "
            r"accepted: max_mean_relative_l2_error, max_relative_l2_error, min_cosine_similarity, max_kl_divergence, "
            r"min_layer_numel, overrides",
            id="unknown-key-with-suggestion",
        ),
        pytest.param(
            edited(FP16_SECTION, "[precision.tensor.fp16]\nmax_mean_relative_l2_error = '5%'"),
            r"\[precision.tensor.fp16\] max_mean_relative_l2_error = '5%': expected a number, got str; "
            r"write e.g. `max_mean_relative_l2_error = 0.1`",
            id="wrong-type-string",
        ),
        pytest.param(
            edited("min_throughput_ips = 0", "min_throughput_ips = true"),
            r"\[perf.default\] min_throughput_ips = True: expected a number, got bool",
            id="wrong-type-bool",
        ),
        pytest.param(
            edited(FP16_SECTION, "[precision.tensor.fp16]"),
            r"\[precision.tensor.fp16\] missing key 'max_mean_relative_l2_error'; add `max_mean_relative_l2_error = <number>`",
            id="missing-key",
        ),
        pytest.param(
            edited("[precision.accuracy.bf16]\nmax_box_ap_drop = 1.5\nmax_mask_ap_drop = 1.5\n", ""),
            r"\[precision.accuracy.bf16\] missing section; add it with all its keys \(the packaged default has them: .*\)",
            id="missing-section",
        ),
        pytest.param(
            edited("[precision.tensor.int8]", "[precision.tensor.fp8]"),
            r"\[precision.tensor\] unknown precision 'fp8' \(did you mean 'fp32'\?\); accepted: fp32, fp16, bf16, int8",
            id="unknown-precision",
        ),
        pytest.param(
            DEFAULT_TEXT + "\n[precision.tensr.fp16]\nx = 1\n",
            r"\[precision\] unknown section 'tensr' \(did you mean 'tensor'\?\)",
            id="unknown-family",
        ),
        pytest.param(
            edited("min_cosine_similarity = 0.9999", "min_cosine_similarity = 1.5"),
            r"\[precision.tensor.fp32\] min_cosine_similarity = 1.5: expected a value in \[-1.0, 1.0\]",
            id="out-of-range",
        ),
        pytest.param(
            edited("max_relative_l2_error = 0.01", "max_relative_l2_error = inf"),
            r"max_relative_l2_error = inf: must be finite: cosine and KL cannot see a uniform scale error",
            id="relative-l2-cannot-be-switched-off",
        ),
        pytest.param(
            edited("max_kl_divergence = 0.005", "max_kl_divergence = nan"),
            r"max_kl_divergence = nan: expected a number \(use inf to switch an upper limit off\)",
            id="nan",
        ),
        pytest.param(
            DEFAULT_TEXT + '\n[precision.tensor.fp16.overrides]\n"head*" = { max_relative = 0.1 }\n',
            r"\[precision.tensor.fp16.overrides.\"head\*\"\] unknown key 'max_relative' \(did you mean 'max_relative_l2_error'\?\)",
            id="unknown-override-key",
        ),
        pytest.param(
            DEFAULT_TEXT + '\n[perf."cpu:fp16"]\nmin_throughput_ips = 1\n',
            r"\[perf.\"cpu:fp16\"\] missing key 'max_latency_p50_ms'",
            id="incomplete-target-perf-section",
        ),
        pytest.param("[precision", r"thresholds.toml: not valid TOML", id="not-toml"),
        *OPERATOR_SECTION_ERRORS,
    ],
)
def test_bad_file_is_an_error_naming_file_section_key_and_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ThresholdsError, match=message) as info:
        load_thresholds(path)
    assert str(path) in str(info.value)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ThresholdsError, match="cannot read the thresholds file"):
        load_thresholds(tmp_path / "absent.toml")


def test_integers_are_accepted_as_numbers(tmp_path):
    thresholds = load_thresholds(write(tmp_path, edited("max_box_ap_drop = 1.0", "max_box_ap_drop = 1")))
    assert thresholds.accuracy["fp16"].max_box_ap_drop == 1.0


def test_overrides_replace_per_layer_limits_for_matching_layers_first_match_wins(tmp_path):
    text = DEFAULT_TEXT + (
        "\n[precision.tensor.fp16.overrides]\n"
        '"basis_module.*" = { max_relative_l2_error = 0.05 }\n'
        '"basis_module.tower.*" = { min_cosine_similarity = 0.5 }\n'
    )
    tensor = load_thresholds(write(tmp_path, text)).tensor["fp16"]
    limits, pattern = tensor.layer_limits("basis_module.tower.0")
    assert pattern == "basis_module.*"
    assert dict((limit.key, limit.value) for limit in limits) == {
        "max_relative_l2_error": 0.05,
        "min_cosine_similarity": tensor.min_cosine_similarity,
        "max_kl_divergence": tensor.max_kl_divergence,
    }
    assert tensor.layer_limits("backbone.fpn_output3")[1] is None


def test_target_perf_section_is_used_for_its_target(tmp_path):
    text = DEFAULT_TEXT + '\n[perf."npu:0:fp16"]\nmin_throughput_ips = 300\nmax_latency_p50_ms = 5\nmax_latency_p99_ms = 8\n'
    thresholds = load_thresholds(write(tmp_path, text))
    assert thresholds.perf_for("npu:0:fp16").min_throughput_ips == 300
    assert thresholds.perf_for("cpu").min_throughput_ips == 0


def test_perf_section_per_target_and_model_is_the_most_specific(tmp_path):
    def section(header, ips):
        return f"\n[{header}]\nmin_throughput_ips = {ips}\nmax_latency_p50_ms = inf\nmax_latency_p99_ms = inf\n"

    text = DEFAULT_TEXT + section('perf."npu:0"', 100) + section('perf."npu:0".R_101', 6.45) + section(
        'perf."cuda:0".R_50', 40) + section("perf.default.R_50", 1)
    thresholds = load_thresholds(write(tmp_path, text))
    assert thresholds.perf_for("npu:0", "R_101").min_throughput_ips == 6.45
    assert thresholds.perf_for("npu:0", "lite").min_throughput_ips == 100
    assert thresholds.perf_for("npu:0").min_throughput_ips == 100
    assert thresholds.perf_for("cuda:0", "R_50").min_throughput_ips == 40
    # cuda:0 has per-model sections only: other models fall through to the defaults.
    assert thresholds.perf_for("cuda:0", "R_101").min_throughput_ips == 0
    assert thresholds.perf_for("cpu", "R_50").min_throughput_ips == 1


def test_incomplete_per_model_perf_section_names_its_key(tmp_path):
    text = DEFAULT_TEXT + '\n[perf."npu:0".R_101]\nmin_throughput_ips = 6.45\n'
    with pytest.raises(ThresholdsError, match=r'\[perf\."npu:0"\.R_101\] missing key \'max_latency_p50_ms\''):
        load_thresholds(write(tmp_path, text))


@pytest.mark.parametrize(
    "limit, measured, holds, text",
    [
        (Limit("max_relative_l2_error", 0.01), 0.0312, False, "relative_l2_error 0.0312 > 0.01"),
        (Limit("max_relative_l2_error", 0.01), 0.01, True, "relative_l2_error 0.01 <= 0.01"),
        (Limit("min_cosine_similarity", 0.99), 0.5, False, "cosine_similarity 0.5 < 0.99"),
        (Limit("min_cosine_similarity", 0.99), math.nan, False, "cosine_similarity nan < 0.99"),
        (Limit("max_kl_divergence", math.inf), math.nan, False, "kl_divergence nan > inf"),
    ],
)
def test_limit_direction_equality_passes_and_nan_never_holds(limit, measured, holds, text):
    assert limit.holds(measured) is holds
    assert limit.describe(measured) == text


def test_operator_standards_are_msprobes_per_dtype_values():
    operator = load_thresholds().operator
    assert tuple(operator) == ("fp32", "fp16", "bf16")  # operators run eagerly, never in int8
    rules = {p: (s.max_relative_error, s.small_value, s.max_small_value_error, s.ulp_threshold,
                 s.max_share_above_ulp_threshold) for p, s in operator.items()}
    assert rules == {"fp32": (1e-6, 1e-6, 1e-9, 32, 0.05), "fp16": (1e-3, 1e-3, 1e-5, 1, 0.001),
                     "bf16": (4e-3, 1e-3, 1e-5, 1, 0.001)}
    assert all(s.nms_iou_tie_tolerance == s.max_relative_error for s in operator.values())


def test_a_file_without_operator_standards_is_refused_with_the_fix(tmp_path):
    start = DEFAULT_TEXT.index("[precision.operator.fp32]")
    end = DEFAULT_TEXT.index("# ---", start)
    with pytest.raises(ThresholdsError, match=r"\[precision.operator\] missing section; add it with all its keys"):
        load_thresholds(write(tmp_path, DEFAULT_TEXT[:start] + DEFAULT_TEXT[end:]))
