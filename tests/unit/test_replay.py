"""Replay: each module call re-run on the reference's own inputs, named as the dump names it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pytest_blendmask.model import build_model
from pytest_blendmask.precision.dump import DumpCollector
from pytest_blendmask.precision.replay import ReplayError, module_replayer, replay
from pytest_blendmask.dtypes import autocast

FP32 = lambda: autocast("cpu", "fp32")  # noqa: E731


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)  # changes a's output in place
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.act(self.a(x))
        return self.b(y) + self.b(y * 2)  # b called twice: b#0, b#1


class InPlaceWithoutFlag(nn.Module):
    def forward(self, x):
        return x.mul_(2)


class AppendsPooled(nn.Module):
    """Appends to the list it is given, as torchvision's FPN extra blocks (``LastLevelMaxPool``) do."""

    def forward(self, features: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        features.append(nn.functional.max_pool2d(features[-1], 1, 2))
        names.append("pool")
        return features, names


class Pyramid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.extra = AppendsPooled()

    def forward(self, x):
        features, names = self.extra([self.conv(x)], ["conv"])
        return dict(zip(names, features))


def test_a_replayer_equal_to_the_reference_has_zero_local_error_and_names_match_the_dump():
    model = build_model("lite").eval()
    batch = torch.randn(1, 3, 64, 64)
    with DumpCollector(model) as collector, torch.inference_mode():
        model.forward_raw(batch)
    local = replay(model, lambda m: m.forward_raw(batch), {"copy": module_replayer(copy.deepcopy(model), "cpu", FP32)})
    assert [e.name for e in local["copy"]] == collector.dump.names()
    assert all(e.error_norm == 0.0 for e in local["copy"])
    assert {e.module_type for e in local["copy"]} >= {"FPN", "BasisModule", "Conv2d"}  # containers included


def test_replay_feeds_an_inplace_module_its_input_before_the_change_and_records_the_data_flow():
    model = Chain().eval()
    x = torch.randn(1, 3, 8, 8)
    doubled = copy.deepcopy(model)
    doubled.act.forward = lambda t: t * 2  # a fault in the copy's ReLU only
    local = replay(model, lambda m: m(x), {"faulty": module_replayer(doubled, "cpu", FP32)})
    by_name = {e.name: e for e in local["faulty"]}
    assert list(by_name) == ["a", "act", "b#0", "b#1"]
    # On its real input a(x) the faulty ReLU gives 2 a(x); on a(x) after the in-place change it
    # would give 2 relu(a(x)), which differs wherever a(x) < 0.
    with torch.no_grad():
        a = model.a(x)
    assert by_name["act"].error_norm == pytest.approx(float((2 * a - torch.relu(a)).norm()), rel=1e-5)
    assert float((2 * a - torch.relu(a)).norm()) > 1.1 * float(torch.relu(a).norm())
    assert by_name["a"].error_norm == by_name["b#0"].error_norm == 0.0
    assert by_name["act"].inputs == ("a",) and by_name["b#0"].inputs == ("act",) and by_name["a"].inputs == ()


def test_a_module_changing_its_input_in_place_without_an_inplace_flag_is_named_with_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), InPlaceWithoutFlag()).eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ReplayError, match=r"^1 \(InPlaceWithoutFlag\) changed its input in place.*give it `inplace = True`"):
        replay(model, lambda m: m(x), {"copy": module_replayer(copy.deepcopy(model), "cpu", FP32)})
    model[1].inplace = True  # the advice
    local = replay(model, lambda m: m(x), {"copy": module_replayer(copy.deepcopy(model), "cpu", FP32)})
    assert [e.error_norm for e in local["copy"]] == [0.0, 0.0]


def test_a_module_appending_to_its_input_list_replays_from_the_list_it_was_given():
    model = Pyramid().eval()
    x = torch.randn(1, 3, 8, 8)
    faulty = copy.deepcopy(model)
    faulty.extra.register_forward_hook(lambda module, args, output: ([output[0][0], output[0][1] * 1.05], output[1]))
    local = replay(model, lambda m: m(x), {"same": module_replayer(copy.deepcopy(model), "cpu", FP32),
                                            "faulty": module_replayer(faulty, "cpu", FP32)})
    assert [e.name for e in local["same"]] == ["conv", "extra.0.0", "extra.0.1"]
    assert all(e.error_norm == 0.0 for e in local["same"])  # one feature in, not the two it had after
    faulty_errors = {e.name: e for e in local["faulty"]}
    assert faulty_errors["extra.0.0"].error_norm == 0.0
    assert faulty_errors["extra.0.1"].relative_error == pytest.approx(0.05, rel=1e-4)


def test_replay_leaves_the_reference_forward_unchanged():
    model = build_model("lite").eval()
    batch = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        plain = model.forward_raw(batch)
    outputs = {}
    replay(model, lambda m: outputs.update(m.forward_raw(batch)),
           {"fp16": module_replayer(copy.deepcopy(model), "cpu", lambda: autocast("cpu", "fp16"))})
    assert plain.keys() == outputs.keys() and all(torch.equal(plain[k], outputs[k]) for k in plain)


def test_a_replay_whose_shape_differs_is_nan_not_zero():
    model = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    other = nn.Sequential(nn.Conv2d(3, 3, 1, stride=2)).eval()
    local = replay(model, lambda m: m(torch.randn(1, 3, 4, 4)), {"other": module_replayer(other, "cpu", FP32)})
    (entry,) = local["other"]
    assert entry.name == "0" and entry.relative_error != entry.relative_error  # NaN
