"""The floor comparison's rules, on hand-made local errors: ratios, standards, LOCAL and ACCUMULATED."""
from __future__ import annotations

import math

import pytest
import torch

from pytest_blendmask.gates import ACCUMULATED_FLOOR_RATIO, LOCAL_ERROR, LOCAL_FLOOR_RATIO, LOCAL_GAIN, evaluate
from pytest_blendmask.precision.compare import compare
from pytest_blendmask.precision.dump import dump_from_outputs
from pytest_blendmask.precision.local import compare_local
from pytest_blendmask.precision.replay import LocalError, deviation
from pytest_blendmask.precision.thresholds import LocalThresholds, load_thresholds

LIMITS = LocalThresholds(max_local_floor_ratio=3.0, max_local_gain_error=0.005, max_local_relative_l2_error=0.05,
                         max_accumulated_floor_ratio=3.0, floor_atol=1e-5, floor_rtol=0.0)
TENSOR = load_thresholds().tensor["fp16"]
NUMEL = 100


def entry(name, error, inputs=(), module=None, gain=0.0):
    """A local error of ``error`` relative to a reference of norm 1, ``gain`` of it a change of scale."""
    return LocalError(name, module or name, "Conv2d", NUMEL, 1.0, error, tuple(inputs), error_dot=gain)


def accumulated(errors):
    """A ComparisonResult whose layer ``name`` has relative L2 error ``errors[name]`` (reference norm 1)."""
    reference = {name: torch.full((NUMEL,), 0.1) for name in errors}
    dut = {name: torch.full((NUMEL,), 0.1) * (1 + e) for name, e in errors.items()}
    return compare(dump_from_outputs(reference), dump_from_outputs(dut), TENSOR)


CHAIN = ("stem", "body", "head")


def comparison(device, floor, acc, acc_floor, inputs=None):
    inputs = inputs or {"body": ("stem",), "head": ("body",)}
    return compare_local(
        [entry(n, device[n], inputs.get(n, ())) for n in CHAIN], [entry(n, floor[n], inputs.get(n, ())) for n in CHAIN],
        accumulated(acc), accumulated(acc_floor), LIMITS, 16, "autocast_fp16",
    )


def test_a_module_well_over_its_floor_is_local_even_when_the_standard_holds():
    c = comparison({"stem": 1e-3, "body": 2e-2, "head": 2e-2}, {"stem": 1e-3, "body": 1e-3, "head": 1e-3},
                   {"stem": 1e-3, "body": 2e-2, "head": 2e-2}, {"stem": 1e-3, "body": 1.4e-3, "head": 1.7e-3})
    assert (c.localisation.kind, c.localisation.module) == ("LOCAL", "body")
    ratio = c.by_name()["body"].local_ratio
    assert ratio == pytest.approx(2e-2 / (1e-3 + 1e-5 * math.sqrt(NUMEL)))
    verdict = evaluate(LOCAL_FLOOR_RATIO, c, LIMITS)
    assert not verdict.passed and verdict.layer == "body" and verdict.detail.startswith("LOCAL at body (Conv2d)")
    assert verdict.extra["localisation"] == {"kind": "LOCAL", "module": "body", "entry": "body"}
    assert evaluate(LOCAL_ERROR, c, LIMITS).passed  # 0.02 is within the 0.05 standard: only the floor sees it


def test_the_standard_fails_a_module_whose_floor_is_as_coarse_as_its_error():
    # Device and floor share their arithmetic (the CPU emulation is the device): the ratio is 1.
    c = comparison({"stem": 1e-3, "body": 0.08, "head": 1e-3}, {"stem": 1e-3, "body": 0.08, "head": 1e-3},
                   {"stem": 1e-3, "body": 0.08, "head": 0.08}, {"stem": 1e-3, "body": 0.08, "head": 0.08})
    assert evaluate(LOCAL_FLOOR_RATIO, c, LIMITS).passed
    verdict = evaluate(LOCAL_ERROR, c, LIMITS)
    assert not verdict.passed and verdict.layer == "body"
    assert c.localisation.kind == "LOCAL" and "local relative_l2_error 0.08 > 0.05" in c.localisation.detail


def test_drift_beyond_the_floor_with_every_module_within_its_own_is_accumulated_where_it_grows_fastest():
    c = comparison({"stem": 2e-3, "body": 2e-3, "head": 2e-3}, {"stem": 1e-3, "body": 1e-3, "head": 1e-3},
                   {"stem": 2e-3, "body": 9e-3, "head": 1e-2}, {"stem": 1e-3, "body": 1.5e-3, "head": 2e-3})
    assert (c.localisation.kind, c.localisation.module) == ("ACCUMULATED", "body")
    verdict = evaluate(ACCUMULATED_FLOOR_RATIO, c, LIMITS)
    assert not verdict.passed and verdict.layer == "body"  # the first output whose drift is beyond 3x the floor
    assert verdict.detail.startswith("ACCUMULATED at body")


def test_accumulated_names_a_leaf_inside_the_container_whose_output_drifts():
    modules = (("stem", ()), ("tower.conv", ("stem",)), ("tower", ("stem",)))
    device = [entry(n, 2e-3, inputs, module=n) for n, inputs in modules]
    floor = [entry(n, 1e-3, inputs, module=n) for n, inputs in modules]
    c = compare_local(device, floor, accumulated({"stem": 1e-3, "tower.conv": 3e-3, "tower": 9e-3}),
                      accumulated({n: 1e-3 for n, _ in modules}), LIMITS, 16, "autocast_fp16")
    # tower fails first (9x its floor); of stem and tower's child, the child's drift grew most.
    assert (c.localisation.kind, c.localisation.module) == ("ACCUMULATED", "tower.conv")
    assert "but tower has accumulated floor ratio" in c.localisation.detail


def test_a_zero_floor_allows_only_the_absolute_tolerance():
    # fp32: the floor is exactly zero; 1e-5 per element over 100 elements allows a norm of 1e-4.
    within, beyond = 2.9e-4, 3.1e-4
    for error, passed in ((within, True), (beyond, False)):
        c = comparison({"stem": 0.0, "body": error, "head": 0.0}, {n: 0.0 for n in CHAIN},
                       {n: 0.0 for n in CHAIN}, {n: 0.0 for n in CHAIN})
        assert evaluate(LOCAL_FLOOR_RATIO, c, LIMITS).passed is passed


def test_nan_local_error_fails_and_small_outputs_are_not_gated():
    c = comparison({"stem": math.nan, "body": 1e-3, "head": 1e-3}, {n: 1e-3 for n in CHAIN},
                   {n: 1e-3 for n in CHAIN}, {n: 1e-3 for n in CHAIN})
    assert c.localisation.kind == "LOCAL" and c.localisation.module == "stem"
    small = compare_local([LocalError("p7", "p7", "Conv2d", 4, 1.0, 0.5)], [LocalError("p7", "p7", "Conv2d", 4, 1.0, 1e-3)],
                          accumulated({"p7": 0.5}), accumulated({"p7": 1e-3}), LIMITS, 16, "autocast_fp16")
    assert small.passed and not small.modules[0].gated


def test_replays_that_took_different_paths_are_refused():
    with pytest.raises(ValueError, match="different code paths"):
        compare_local([entry("a", 0.0)], [entry("b", 0.0)], accumulated({"a": 0.0}), accumulated({"a": 0.0}),
                      LIMITS, 16, "fp32")


def test_a_scale_error_hidden_in_the_floors_noise_is_caught_by_the_gain():
    # int8-like: the floor's rounding costs 3 % orthogonal to the value; the device adds a 5 % scale.
    c = comparison({"stem": 1e-3, "body": math.hypot(0.03, 0.05), "head": 1e-3}, {"stem": 1e-3, "body": 0.03, "head": 1e-3},
                   {"stem": 1e-3, "body": 0.06, "head": 0.06}, {"stem": 1e-3, "body": 0.03, "head": 0.03})
    assert evaluate(LOCAL_FLOOR_RATIO, c, LIMITS).passed  # 0.058 / 0.03: under 3x
    device = [entry("stem", 1e-3), entry("body", math.hypot(0.03, 0.05), ("stem",), gain=0.05), entry("head", 1e-3, ("body",))]
    floor = [entry(n, e) for n, e in (("stem", 1e-3), ("body", 0.03), ("head", 1e-3))]
    c = compare_local(device, floor, accumulated({n: 1e-3 for n in CHAIN}), accumulated({n: 1e-3 for n in CHAIN}),
                      LIMITS, 16, "int8")
    verdict = evaluate(LOCAL_GAIN, c, LIMITS)
    assert not verdict.passed and verdict.layer == "body" and verdict.value == pytest.approx(0.05)
    assert (c.localisation.kind, c.localisation.module) == ("LOCAL", "body")
    assert "local gain error 0.05 > 0.005 (scale 1.0500 against the floor's 1.0000)" in c.localisation.detail


def test_the_gain_is_the_scale_part_of_a_deviation_and_ignores_orthogonal_noise():
    torch.manual_seed(0)
    reference = torch.randn(10_000)
    noise = torch.randn(10_000)
    noise -= torch.dot(noise, reference) / torch.dot(reference, reference) * reference  # orthogonal to the reference
    replayed = 1.05 * reference + 0.03 * noise
    reference_norm, error_norm, error_dot = deviation(replayed, reference)
    error = LocalError("x", "x", "Conv2d", 10_000, reference_norm, error_norm, error_dot=error_dot)
    assert error.gain == pytest.approx(0.05, abs=1e-5)
    assert LocalError("x", "x", "Conv2d", 4, 0.0, 0.0, error_dot=0.0).gain == 0.0


def test_a_compiled_graph_entry_covering_fused_modules_is_held_to_their_floors_together():
    # One tensor holds a conv and its fused norm: their floor errors add in quadrature, their gains add.
    device = [LocalError("block.norm", "block.norm", "BatchNorm2d", NUMEL, 1.0, 0.05, (), ("block.conv",), error_dot=0.0)]
    floor = [entry("block.conv", 0.03, gain=0.01), entry("block.norm", 0.04, gain=-0.01)]
    c = compare_local(device, floor, accumulated({"block.norm": 0.05}), accumulated({"block.norm": 0.05}), LIMITS, 16, "int8")
    module = c.modules[0]
    assert module.floor == pytest.approx(0.05) and module.gain_error == pytest.approx(0.0, abs=1e-12)
    assert module.covers == ("block.conv",) and c.passed
