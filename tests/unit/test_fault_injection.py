"""Proof that the precision gates work: faults injected into the device path only are caught,
and named; without a fault, reduced precision raises no false alarm."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pytest_blendmask.data import EVAL_SEED, generate_sample
from pytest_blendmask.model import build_model
from pytest_blendmask.model.weights import adapt_official_keys
from pytest_blendmask.precision.compare import compare, describe
from pytest_blendmask.precision.match import detection_metrics
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.runners import run_target
from pytest_blendmask.targets import parse_target

from .golden import load_golden

SIZE = 256
THRESHOLDS = load_thresholds()
FP16 = parse_target("cpu:fp16")
CPU = parse_target("cpu")


def batch_of(model, seeds):
    images = [torch.from_numpy(generate_sample(EVAL_SEED, s, SIZE, SIZE).image).permute(2, 0, 1).contiguous() for s in seeds]
    return model.preprocess(images)


@pytest.fixture(scope="module")
def lite():
    return build_model("lite")


@pytest.fixture(scope="module")
def reference(lite):
    batch, sizes = batch_of(lite, [0])
    return run_target(CPU, lite, batch, sizes), batch, sizes


def _scale_output(model, name, factor):
    model.get_submodule(name).register_forward_hook(lambda m, i, out: out * factor)


def _saturate_fp16(model, name):
    # An activation that leaves fp16's range: 70000 > 65504 becomes inf in half precision.
    model.get_submodule(name).register_forward_hook(lambda m, i, out: out.half() * 0 + torch.tensor(7e4).half() if out.dtype == torch.float16 else out)


def _running_var_x4(model, name):
    model.get_submodule(name).running_var.mul_(4)


def _bias_shift(model, name):
    with torch.no_grad():
        model.get_submodule(name).bias.add_(0.05)


def _swap_channels(model, name):
    conv = model.get_submodule(name)
    with torch.no_grad():
        conv.weight[[0, 1]] = conv.weight[[1, 0]].clone()
        conv.bias[[0, 1]] = conv.bias[[1, 0]].clone()


def _align_corners_true(model, name):
    up = model.get_submodule(name)
    up.forward = lambda x: F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=True)


FAULTS = [
    ("output x1.02", _scale_output, "backbone.fpn_output4", {"factor": 1.02}),
    ("fp16 overflow", _saturate_fp16, "backbone.bottom_up.res3.0.conv2", {}),
    ("BN running_var x4", _running_var_x4, "backbone.bottom_up.res4.0.conv1.norm", {}),
    ("conv bias shift", _bias_shift, "basis_module.tower.4", {}),
    ("two channels swapped", _swap_channels, "backbone.fpn_lateral5", {}),
    ("align_corners flipped", _align_corners_true, "basis_module.tower.2", {}),
]


@pytest.mark.parametrize("fault, inject, module, kwargs", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_fails_the_tensor_gate_and_names_the_layer(lite, reference, fault, inject, module, kwargs):
    ref_run, batch, sizes = reference
    faulty = copy.deepcopy(lite)
    inject(faulty, module, **kwargs)
    result = compare(ref_run.dump, run_target(FP16, faulty, batch, sizes).dump, THRESHOLDS.tensor["fp16"])
    assert not result.passed, describe(result)
    assert result.first_divergent is not None and result.first_divergent.name.split("#")[0] == module, describe(result)


def test_basis_upsample_is_where_align_corners_lives(lite):
    # The align_corners fault above must hit the x2 upsample; guard the index it relies on.
    assert type(lite.basis_module.tower[2]).__name__ == "Upsample2x"


@pytest.mark.parametrize("target", ["cpu:fp16", "cpu:bf16"])
def test_no_false_alarm_on_ten_images(lite, target):
    spec = parse_target(target)
    for seed in range(10):
        batch, sizes = batch_of(lite, [100 + seed])
        result = compare(run_target(CPU, lite, batch, sizes).dump, run_target(spec, lite, batch, sizes).dump, THRESHOLDS.tensor[spec.dtype])
        assert result.passed, f"image {seed}: {describe(result)}"


def test_changed_nms_threshold_fails_the_detection_gate():
    golden = load_golden()
    model = build_model("R_50")
    model.load_state_dict(adapt_official_keys(golden.state_dict()))
    faulty = copy.deepcopy(model)
    faulty.cfg = dataclasses.replace(model.cfg, nms_threshold=0.3)
    batch, sizes = model.preprocess([golden.image])
    ref, dut = run_target(CPU, model, batch, sizes, dump_mode="stats"), run_target(CPU, faulty, batch, sizes, dump_mode="stats")
    limits = THRESHOLDS.detection["fp32"]
    metrics = detection_metrics(ref.detections[0], dut.detections[0], limits.match_iou)
    assert metrics.num_ref == 100
    assert metrics.unmatched_fraction > limits.max_unmatched_fraction
