"""The gates and their driver: one verdict, decided once, recorded with the limit that decided it."""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from types import SimpleNamespace

import pytest
import torch

from pytest_blendmask.gates import (
    ACCURACY_GATES,
    DETECTION_GATES,
    FLOOR_GATES,
    OUTPUT_PARITY,
    PERF_FLOOR_GATES,
    TENSOR_GATES,
    WORST_LAYER_ERROR,
    APPair,
    BestPoints,
    Fixed,
    Gate,
    Key,
    Reading,
    evaluate,
    judge,
    judge_all,
)
from pytest_blendmask.precision.accuracy import AccuracyResult
from pytest_blendmask.precision.compare import compare_outputs
from pytest_blendmask.precision.match import ClassCounts, DetectionComparison
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.results import record

THRESHOLDS = load_thresholds()
INT8 = THRESHOLDS.tensor["int8"]


def recorder():
    """``bm_record`` on a stand-in test item: the real ``record``, guard included."""
    node = SimpleNamespace(nodeid="tests/test_x.py::test_x", user_properties=[])
    return node, functools.partial(record, node)


def stored(node):
    return [value for _, value in node.user_properties]


def constant_gate(op="<=", limit=1.0):
    return Gate("answer", "precision", op, Fixed(limit, "a test's"), "", "tests.unit.test_gates",
                lambda value, bound: Reading(value, f"answer {value}"))


# --- The driver ------------------------------------------------------------------------------

def test_a_passing_gate_records_its_value_limit_and_direction():
    node, rec = recorder()
    entry = judge(rec, constant_gate(), "cpu", 0.5, None, note="from the test")
    assert (entry["metric"], entry["value"], entry["op"], entry["limit"], entry["passed"]) == ("answer", 0.5, "<=", 1.0, True)
    assert entry["detail"] == "answer 0.5" and entry["extra"] == {"note": "from the test"}
    assert stored(node) == [entry]


def test_a_failing_gate_records_then_raises():
    node, rec = recorder()
    with pytest.raises(AssertionError, match="answer 2"):
        judge(rec, constant_gate(), "cpu", 2.0, None)
    [entry] = stored(node)
    assert entry["passed"] is False and entry["value"] == 2.0 and entry["limit"] == 1.0


@pytest.mark.parametrize("op", ["<=", ">="])
def test_a_value_equal_to_the_limit_passes(op):
    assert evaluate(constant_gate(op), 1.0, None).passed


@pytest.mark.parametrize("op", ["<=", ">="])
def test_nan_fails_either_direction(op):
    node, rec = recorder()
    with pytest.raises(AssertionError):
        judge(rec, constant_gate(op), "cpu", math.nan, None)
    assert stored(node)[0]["passed"] is False


def test_judge_all_records_every_verdict_before_failing():
    node, rec = recorder()
    gates = [constant_gate(limit=1.0), constant_gate(limit=3.0), constant_gate(">=", 5.0)]
    with pytest.raises(AssertionError) as failure:
        judge_all(rec, gates, "cpu", 2.0, None)
    assert [entry["passed"] for entry in stored(node)] == [False, True, False]
    assert str(failure.value).count("answer 2.0") == 2


def test_a_gate_whose_op_contradicts_its_key_is_refused():
    with pytest.raises(ValueError, match="contradicts"):
        Gate("x", "precision", ">=", Key("tensor", "max_relative_l2_error"), "", "", lambda s, b: Reading(0.0, ""))


def test_a_key_the_thresholds_do_not_have_is_refused_at_once():
    with pytest.raises(ValueError, match="max_relative_l2"):
        Key("tensor", "max_relative_l2")
    with pytest.raises(ValueError, match="per-layer"):
        Key("tensor", "max_mean_relative_l2_error", per_layer=True)


def test_a_section_of_another_family_is_refused():
    with pytest.raises(TypeError, match="TensorThresholds"):
        evaluate(WORST_LAYER_ERROR, None, THRESHOLDS.detection["int8"])


# --- The per-layer limit that decides --------------------------------------------------------

def outputs(**errors: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Reference and device graph outputs, each device output off by the given relative L2 error."""
    generator = torch.Generator().manual_seed(0)
    reference = {name: torch.randn(4, 64, generator=generator) for name in errors}
    # A uniform scale by 1 + e has a relative L2 error of exactly e (and cosine 1).
    return reference, {name: reference[name] * (1 + error) for name, error in errors.items()}


def int8_worst_layer(rec, **errors: float):
    result = compare_outputs(*outputs(**errors), INT8)
    return judge(rec, WORST_LAYER_ERROR, "ort:int8", result, INT8)


def test_int8_worst_layer_record_carries_the_override_limit_that_decided_it():
    # ORT int8 measured bases up to 0.092: above the section's 0.05, within its own override.
    node, rec = recorder()
    entry = int8_worst_layer(rec, bbox_reg_p3=0.02, bases=0.09, ctrness_p3=0.01)
    assert INT8.max_relative_l2_error == 0.05 and INT8.layer_limit("bases", "max_relative_l2_error") == 0.12
    assert entry["passed"] is True and entry["op"] == "<="
    assert entry["value"] == pytest.approx(0.09, rel=1e-4) and entry["limit"] == 0.12
    assert entry["extra"]["worst_layer"] == "bases"


def test_a_layer_over_its_override_decides_with_the_override_limit():
    node, rec = recorder()
    with pytest.raises(AssertionError, match="relative_l2_error first breaks its limit at bases"):
        int8_worst_layer(rec, bbox_reg_p3=0.02, bases=0.2)
    [entry] = stored(node)
    assert entry["value"] == pytest.approx(0.2, rel=1e-4) and entry["limit"] == 0.12


def test_the_first_layer_over_its_limit_decides_not_the_worst():
    # bases (0.11) is the worst layer but within its 0.12; bbox_reg_p3 breaks the section's 0.05.
    node, rec = recorder()
    with pytest.raises(AssertionError, match="at bbox_reg_p3"):
        int8_worst_layer(rec, bases=0.11, bbox_reg_p3=0.08)
    [entry] = stored(node)
    assert entry["value"] == pytest.approx(0.08, rel=1e-4) and entry["limit"] == 0.05
    assert entry["extra"]["worst_layer"] == "bases"


def test_a_layer_missing_from_the_device_decides():
    reference, dut = outputs(bases=0.0, bbox_reg_p3=0.0)
    del dut["bbox_reg_p3"]
    verdict = evaluate(WORST_LAYER_ERROR, compare_outputs(reference, dut, INT8), INT8)
    assert not verdict.passed and math.isnan(verdict.value)
    assert verdict.layer == "bbox_reg_p3" and verdict.limit == 0.05
    assert verdict.detail.startswith("bbox_reg_p3 is missing from the device under test")


def test_a_layer_too_small_to_gate_is_exempt_unless_it_has_nan():
    reference, dut = outputs(bases=0.01)
    reference["p7"], dut["p7"] = torch.ones(4), torch.full((4,), 2.0)  # 100 % off, 4 < min_layer_numel
    assert evaluate(WORST_LAYER_ERROR, compare_outputs(reference, dut, INT8), INT8).passed
    dut["p7"] = torch.tensor([1.0, math.nan, 1.0, 1.0])
    verdict = evaluate(WORST_LAYER_ERROR, compare_outputs(reference, dut, INT8), INT8)
    assert not verdict.passed and verdict.layer == "p7"


def test_output_parity_reads_like_the_old_record():
    reference, dut = outputs(bases=0.001, bbox_reg_p3=0.002)
    limits = THRESHOLDS.tensor["fp32"]
    node, rec = recorder()
    entry = judge(rec, OUTPUT_PARITY, "aipp", compare_outputs(reference, dut, limits), limits)
    assert (entry["family"], entry["metric"], entry["detail"], entry["extra"]) == (
        "atc", "worst_output_relative_l2_error", "worst output bbox_reg_p3", {}
    )
    assert entry["value"] == pytest.approx(0.002, rel=1e-4) and entry["limit"] == limits.max_relative_l2_error


# --- Other levels ----------------------------------------------------------------------------

def _detection_gate(name):
    [gate] = [gate for gate in DETECTION_GATES if gate.name == name]
    return gate


def test_detection_gate_takes_the_worst_image():
    images = [SimpleNamespace(box_error=0.002, matched=3, num_ref=3, num_dut=3),
              SimpleNamespace(box_error=0.004, matched=2, num_ref=3, num_dut=2)]
    verdict = evaluate(_detection_gate("box_error"), DetectionComparison(images, [0, 1]), THRESHOLDS.detection["fp16"])
    assert (verdict.value, verdict.limit, verdict.passed) == (0.004, 0.01, True)
    assert verdict.detail == "box_error 0.004 vs limit 0.01 at image 1 of 2 (2/3 matched, 2 on target); decoded on the host"


def test_a_detection_gate_says_whether_the_host_decoding_fails_too():
    def comparison(error):
        return DetectionComparison([SimpleNamespace(box_error=error, matched=1, num_ref=1, num_dut=1)], [0])

    device_only = DetectionComparison(comparison(0.5).per_image, [0], host=comparison(0.001))
    verdict = evaluate(_detection_gate("box_error"), device_only, THRESHOLDS.detection["fp16"])
    assert not verdict.passed and verdict.extra == {"host_decoding_value": 0.001}
    assert verdict.detail.endswith("host decoding of the device's raw tensors: 0.001 (passes); "
                                   "the device's post-processing made the difference")
    both = DetectionComparison(comparison(0.5).per_image, [0], host=comparison(0.4))
    assert evaluate(_detection_gate("box_error"), both, THRESHOLDS.detection["fp16"]).detail.endswith(
        "0.4 (fails); the raw tensors already differ")


def test_class_match_is_the_worst_class_pooled_over_images():
    images = [SimpleNamespace(per_class={0: ClassCounts(5, 5, 5), 1: ClassCounts(2, 0, 0)}),
              SimpleNamespace(per_class={0: ClassCounts(5, 4, 4), 1: ClassCounts(2, 1, 1)})]
    verdict = evaluate(_detection_gate("class_match"), DetectionComparison(images, [0, 1]), THRESHOLDS.detection["fp16"])
    assert (verdict.value, verdict.passed) == (0.25, False)
    assert verdict.detail.startswith("class 1: 1 matched of 4 on the reference and 1 on the target")
    assert verdict.extra == {"per_class": {"0": [10, 9, 9], "1": [4, 1, 1]}}


def test_misassigned_images_names_each_image_matching_another_reference():
    verdict = evaluate(_detection_gate("misassigned_images"), DetectionComparison([], [1, 0, 2]),
                       THRESHOLDS.detection["fp16"])
    assert (verdict.value, verdict.limit, verdict.passed) == (2.0, 0.0, False)
    assert verdict.detail == "image 0's detections match reference image 1, image 1's detections match reference image 0; decoded on the host"


def test_ap_drop_is_reference_minus_target():
    scores = dict(bbox_AP50=0, bbox_AP75=0, segm_AP50=0, segm_AP75=0, seconds=0)
    pair = APPair(AccuracyResult("cpu", 50, bbox_AP=43.7, segm_AP=39.6, **scores),
                  AccuracyResult("ort:int8", 50, bbox_AP=43.5, segm_AP=35.0, **scores))
    box, mask = (evaluate(gate, pair, THRESHOLDS.accuracy["int8"]) for gate in ACCURACY_GATES)
    assert box.passed and box.value == pytest.approx(0.2, rel=1e-4) and box.extra == {"reference_ap": 43.7, "target_ap": 43.5}
    assert not mask.passed and mask.limit == 3.0
    assert box.detail == "box AP: reference 43.70, ort:int8 43.50 on 50 images"


def test_perf_floors_quote_the_configuration_and_the_file():
    point = SimpleNamespace(throughput_ips=12.0, latency_p50_ms=80.0, latency_p99_ms=95.0, point=SimpleNamespace(id="cpu-bs1"))
    floors = dataclasses.replace(THRESHOLDS.perf["default"], min_throughput_ips=10.0, max_latency_p50_ms=50.0)
    node, rec = recorder()
    with pytest.raises(AssertionError, match="latency_p50 of cpu-bs1"):
        judge_all(rec, PERF_FLOOR_GATES, "cpu", BestPoints(SimpleNamespace(throughput=point, latency=point), "t.toml"), floors)
    throughput, p50, p99 = stored(node)
    assert throughput["detail"] == "throughput of cpu-bs1: 12 img/s, limit >= 10 (thresholds t.toml)"
    assert throughput["extra"] == {"config": "cpu-bs1"} and [p50["passed"], p99["passed"]] == [False, True]


# --- The tables ------------------------------------------------------------------------------

ALL_GATES = (*TENSOR_GATES, *FLOOR_GATES, OUTPUT_PARITY, *DETECTION_GATES, *ACCURACY_GATES, *PERF_FLOOR_GATES)


def resolve(dotted: str) -> None:
    """Import the longest module prefix of ``dotted`` and find the rest in it (a dataclass field counts)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            fields = {f.name for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else set()
            assert hasattr(target, name) or name in fields, f"{dotted}: no {name} in {target}"
            target = getattr(target, name, None)
        return
    raise AssertionError(f"{dotted}: no importable module")


@pytest.mark.parametrize("gate", ALL_GATES, ids=[f"{g.family}-{g.name}" for g in ALL_GATES])
def test_every_gate_links_to_where_its_metric_is_defined(gate):
    resolve(gate.defined_by)


def test_every_tensor_local_detection_accuracy_and_perf_key_is_the_limit_of_a_gate():
    gated = {(g.limit.family, g.limit.key) for g in ALL_GATES if isinstance(g.limit, Key)}
    # how to compare, not a limit
    settings = {("detection", "match_iou"), ("tensor", "min_layer_numel"), ("local", "floor_atol"), ("local", "floor_rtol")}
    sections = {"tensor": INT8, "local": THRESHOLDS.local["int8"], "detection": THRESHOLDS.detection["int8"],
                "accuracy": THRESHOLDS.accuracy["int8"], "perf": THRESHOLDS.perf["default"]}
    keys = {(family, f.name) for family, section in sections.items() for f in dataclasses.fields(section)
            if f.name != "overrides"}
    assert keys - settings == gated


def test_recorded_names_are_unique_per_family():
    names = [(g.family, g.name) for g in ALL_GATES]
    assert len(names) == len(set(names))
