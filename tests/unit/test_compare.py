"""compare(): verdicts, first divergent layer, minimum passing tolerance, and injected faults."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

from pytest_blendmask.model import build_model
from pytest_blendmask.precision.compare import ComparisonError, compare, describe
from pytest_blendmask.precision.dump import Dump, DumpCollector, DumpEntry
from pytest_blendmask.precision.thresholds import LayerOverride, Limit, TensorThresholds, load_thresholds

LIMITS = TensorThresholds(
    max_mean_relative_l2_error=0.05,
    max_relative_l2_error=0.1,
    min_cosine_similarity=0.99,
    max_kl_divergence=math.inf,
    min_layer_numel=2,
)
REF = [1.0, -2.0, 3.0, 4.0]
def entry(name: str, values, dtype: str = "torch.float32", data: torch.Tensor | None = None) -> DumpEntry:
    data = torch.tensor(values, dtype=torch.float32) if data is None else data
    return DumpEntry(name, name.split("#")[0], "Conv2d", 0, "", dtype, tuple(data.shape), data)


def dump(*entries: DumpEntry, mode: str = "full") -> Dump:
    return Dump(mode, entries)


def scaled(factor: float) -> list[float]:
    return [v * factor for v in REF]


def test_identical_dumps_pass_with_zero_required_tolerance():
    ref = dump(entry("a", REF), entry("b", scaled(2)))
    result = compare(ref, ref, LIMITS)
    assert result.passed and result.first_divergent is None and result.previous_layer is None
    assert dict(result.required) == {
        "max_mean_relative_l2_error": 0.0,
        "max_relative_l2_error": 0.0,
        "min_cosine_similarity": 1.0,
        "max_kl_divergence": 0.0,
    }
    assert describe(result).startswith("PASSED | 2 layers compared, 0 failed")


def test_first_divergent_layer_is_the_first_failing_one_in_execution_order():
    ref = dump(entry("a", REF), entry("b", REF), entry("c", REF))
    dut = dump(entry("a", REF), entry("b", scaled(1.5)), entry("c", scaled(3)))
    result = compare(ref, dut, LIMITS)
    assert not result.passed
    assert result.first_divergent.name == "b" and result.previous_layer.name == "a"
    assert result.first_divergent.failures == ("relative_l2_error 0.5 > 0.1",)
    assert result.worst_layer.name == "c"
    # Polygraphy's "minimum required tolerance": the worst value of each limit.
    assert result.required["max_relative_l2_error"] == pytest.approx(2.0)
    assert result.required["max_mean_relative_l2_error"] == pytest.approx(2.5 / 3)
    text = describe(result)
    assert "first divergent layer: b (Conv2d, torch.float32 vs torch.float32): relative_l2_error 0.5" in text
    assert "layer before it: a" in text and "max_relative_l2_error=2" in text


def test_a_uniform_scale_fails_although_cosine_is_one():
    # BatchNorm running_var x25: the output is divided by 5, cosine stays 1.0.
    result = compare(dump(entry("bn", REF)), dump(entry("bn", scaled(0.2))), LIMITS)
    layer = result.first_divergent
    assert layer.metrics.cosine_similarity == pytest.approx(1.0)
    assert layer.failures == ("relative_l2_error 0.8 > 0.1",)


def test_a_dtype_difference_alone_is_not_a_failure():
    result = compare(dump(entry("a", REF)), dump(entry("a", REF, dtype="torch.float16")), LIMITS)
    assert result.passed and result.layers[0].dut_dtype == "torch.float16"


def test_per_layer_pass_but_mean_over_limit_fails_the_comparison():
    ref = dump(entry("a", REF), entry("b", REF))
    dut = dump(entry("a", scaled(1.08)), entry("b", scaled(1.08)))
    result = compare(ref, dut, LIMITS)
    assert result.first_divergent is None and not result.passed
    assert result.failures == ("mean_relative_l2_error 0.08 > 0.05",)


def test_shape_mismatch_and_nan_mismatch_fail_their_layer_outright():
    ref = dump(entry("a", REF), entry("b", REF))
    dut = dump(entry("a", REF[:3]), entry("b", [math.nan, *REF[1:]]))
    result = compare(ref, dut, LIMITS)
    a, b = result.layers
    assert a.metrics is None and a.failures == ("shape (3,) differs from the reference's (4,)",)
    assert b.failures == ("NaN/Inf at 1 positions where the reference has none or another",)
    assert math.isnan(result.mean_relative_l2_error) and result.failures
    assert math.isnan(result.required["max_relative_l2_error"])


def test_outputs_below_min_layer_numel_are_reported_but_not_gated_except_for_nan():
    ref = dump(entry("tiny", [0.01]), entry("big", REF), entry("tiny_nan", [0.01]))
    dut = dump(entry("tiny", [0.02]), entry("big", REF), entry("tiny_nan", [math.inf]))
    result = compare(ref, dut, TensorThresholds(**{**LIMITS.__dict__, "max_mean_relative_l2_error": math.inf}))
    tiny, big, tiny_nan = result.layers
    assert not tiny.gated and tiny.passed and tiny.metrics.relative_l2_error == pytest.approx(1.0)
    assert big.gated and result.required["max_relative_l2_error"] == 0.0  # the ungated 1.0 is not in it
    assert result.first_divergent is tiny_nan and result.worst_layer is tiny_nan
    # Without the NaN, the worst layer is the gated one, though the tiny one's error is larger.
    without_nan = compare(dump(*ref.entries[:2]), dump(*dut.entries[:2]), LIMITS)
    assert without_nan.worst_layer.name == "big"


def test_result_is_plain_data_for_the_report():
    # The report receives dataclasses.asdict(result) through user_properties (STYLE.md 7).
    result = compare(dump(entry("a", REF), entry("b", REF)), dump(entry("a", REF), entry("b", scaled(2))), LIMITS)
    payload = json.loads(json.dumps(dataclasses.asdict(result)))
    assert payload["first_divergent"]["name"] == "b"
    assert payload["first_divergent"]["metrics"]["relative_l2_error"] == pytest.approx(1.0)
    assert payload["required"]["max_relative_l2_error"] == pytest.approx(1.0)


def test_layers_on_one_side_only_fail_the_comparison():
    ref = dump(entry("a", REF), entry("b", REF))
    dut = dump(entry("a", REF), entry("c", REF))
    result = compare(ref, dut, LIMITS)
    assert [layer.name for layer in result.layers] == ["a"]
    assert (result.missing_in_dut, result.missing_in_reference) == (("b",), ("c",))
    assert not result.passed and len(result.failures) == 2
    assert result.failures[0].startswith("1 layers missing from the device under test")


def test_nothing_compared_is_an_error():
    with pytest.raises(ComparisonError, match="nothing compared: the reference has 1 layers, the device under test 1"):
        compare(dump(entry("a", REF)), dump(entry("b", REF)), LIMITS)


def test_statistics_dumps_cannot_be_compared():
    with pytest.raises(ComparisonError, match="the device under test dump is in 'stats' mode"):
        compare(dump(entry("a", REF)), dump(entry("a", REF), mode="stats"), LIMITS)


def test_overrides_apply_to_matching_layers_and_report_their_own_tolerance():
    limits = TensorThresholds(
        **{**LIMITS.__dict__, "overrides": (LayerOverride("head*", (Limit("max_relative_l2_error", 0.6),)),)}
    )
    ref = dump(entry("backbone", REF), entry("head#0", REF))
    dut = dump(entry("backbone", scaled(1.05)), entry("head#0", scaled(1.5)))
    result = compare(ref, dut, limits)
    assert result.first_divergent is None and result.layers[1].limits_from == "head*"
    assert result.required["head*:max_relative_l2_error"] == pytest.approx(0.5)
    assert result.required["max_relative_l2_error"] == pytest.approx(0.05)


def test_entries_sharing_a_tensor_are_compared_once():
    shared_ref, shared_dut = torch.tensor(REF), torch.tensor(scaled(1.01))
    ref = dump(entry("conv.norm", None, data=shared_ref), entry("conv", None, data=shared_ref))
    dut = dump(entry("conv.norm", None, data=shared_dut), entry("conv", None, data=shared_dut))
    first, second = compare(ref, dut, LIMITS).layers
    assert first.metrics is second.metrics


# Injected faults on the real model: the device under test is a modified copy.

@pytest.fixture(scope="module")
def lite():
    model = build_model("lite")
    batch = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 50
    return model, batch, run(model, batch)


def run(model: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype | None = None) -> Dump:
    collector = DumpCollector(model)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with collector, torch.inference_mode(), autocast:
        model.forward_raw(batch)
    return collector.dump


BN = "backbone.bottom_up.res3.0.conv2.norm"
CONV = "basis_module.refine.1.0"


def test_bn_running_var_x25_is_named_first_divergent_though_cosine_is_one(lite):
    model, batch, reference = lite
    faulty = copy.deepcopy(model)
    faulty.get_submodule(BN).running_var.mul_(25)
    result = compare(reference, run(faulty, batch), load_thresholds().tensor["fp32"])
    layer = result.first_divergent
    assert layer.name == BN and result.previous_layer.passed
    assert layer.metrics.cosine_similarity > 0.9999  # a cosine-only gate would pass it
    assert layer.metrics.relative_l2_error == pytest.approx(0.8, rel=0.05)


def _scale_output(module, args, output):
    return output * 1.02


def _shift_output(module, args, output):
    return output + 0.05 * output.abs().mean()


@pytest.mark.parametrize("hook", [_scale_output, _shift_output], ids=["output-x1.02", "bias-shift"])
def test_small_fault_in_one_conv_is_named_first_divergent_under_fp16(lite, hook):
    model, batch, reference = lite
    faulty = copy.deepcopy(model)
    faulty.get_submodule(CONV).register_forward_hook(hook)
    result = compare(reference, run(faulty, batch, torch.float16), load_thresholds().tensor["fp16"])
    assert result.first_divergent.name == CONV, describe(result)


@pytest.mark.parametrize("dtype, precision", [(torch.float16, "fp16"), (torch.bfloat16, "bf16")])
def test_reduced_precision_without_fault_passes_the_default_thresholds(lite, dtype, precision):
    model, batch, reference = lite
    result = compare(reference, run(model, batch, dtype), load_thresholds().tensor[precision])
    assert result.passed, describe(result)
