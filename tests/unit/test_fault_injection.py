"""Proof that the precision gates work: faults injected into the device path only are caught,
and named; without a fault, reduced precision raises no false alarm."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pytest_blendmask.data import EVAL_SEED, generate_sample
from pytest_blendmask.gates import (
    DETECTION_GATES,
    MAX_LAYER_KL,
    MEAN_LAYER_ERROR,
    MIN_LAYER_COSINE,
    NONFINITE_MISMATCH,
    TENSOR_GATES,
    WORST_LAYER_ERROR,
    Verdict,
    evaluate,
)
from pytest_blendmask.model import build_model, load_weights
from pytest_blendmask.precision.compare import compare, describe
from pytest_blendmask.precision.dump import dump_from_outputs
from pytest_blendmask.precision.match import compare_detections
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.settings import packaged_file
from pytest_blendmask.targets import LoadContext, parse_target


SIZE = 256
THRESHOLDS = load_thresholds()
FP16 = parse_target("cpu:fp16")
CPU = parse_target("cpu")


def batch_of(model, seeds, size=SIZE):
    images = [torch.from_numpy(generate_sample(EVAL_SEED, s, size, size).image).permute(2, 0, 1).contiguous() for s in seeds]
    return model.preprocess(images)


def failed_tensor_gates(result, precision) -> dict[str, Verdict]:
    """The acceptance suite's tensor gates that fail on ``result``, by recorded name."""
    verdicts = (evaluate(gate, result, THRESHOLDS.tensor[precision]) for gate in TENSOR_GATES)
    return {verdict.gate.name: verdict for verdict in verdicts if not verdict.passed}


@pytest.fixture(scope="module")
def lite():
    return build_model("lite")


@pytest.fixture(scope="module")
def reference(lite):
    batch, sizes = batch_of(lite, [0])
    return CPU.run(lite, batch, sizes), batch, sizes


def _scale_output(model, name, factor):
    model.get_submodule(name).register_forward_hook(lambda m, i, out: out * factor)


def _saturate_fp16(model, name):
    # An activation that leaves fp16's range: 70000 > 65504 becomes inf in half precision.
    model.get_submodule(name).register_forward_hook(lambda m, i, out: out.half() * 0 + torch.tensor(7e4).half() if out.dtype == torch.float16 else out)


def _running_var_x4(model, name):
    model.get_submodule(name).running_var.mul_(4)


def _bias_shift(model, name, shift=0.05):
    with torch.no_grad():
        model.get_submodule(name).bias.add_(shift)


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
# Besides the worst-layer gate, each other tensor gate is shown failing on a fault it
# guards against, at the layer where it was injected (None: the gate names no layer).
ALSO_FAILS = {
    "fp16 overflow": (NONFINITE_MISMATCH, None),
    "BN running_var x4": (MEAN_LAYER_ERROR, None),
    "conv bias shift": (MIN_LAYER_COSINE, "basis_module.tower.4"),
    "align_corners flipped": (MAX_LAYER_KL, "basis_module.tower.2"),
}


@pytest.mark.parametrize("fault, inject, module, kwargs", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_fails_the_tensor_gate_and_names_the_layer(lite, reference, fault, inject, module, kwargs):
    ref_run, batch, sizes = reference
    faulty = copy.deepcopy(lite)
    inject(faulty, module, **kwargs)
    result = compare(ref_run.dump, FP16.run(faulty, batch, sizes).dump, THRESHOLDS.tensor["fp16"])
    assert not result.passed, describe(result)
    assert result.first_divergent is not None and result.first_divergent.name.split("#")[0] == module, describe(result)
    failed = failed_tensor_gates(result, "fp16")
    assert WORST_LAYER_ERROR.name in failed, f"failed gates {list(failed)}\n{describe(result)}"
    assert failed[WORST_LAYER_ERROR.name].layer.split("#")[0] == module, describe(result)
    if fault in ALSO_FAILS:
        gate, layer = ALSO_FAILS[fault]
        assert gate.name in failed, f"failed gates {list(failed)}\n{describe(result)}"
        named = failed[gate.name].layer
        assert (named.split("#")[0] if named else None) == layer, describe(result)


def test_basis_upsample_is_where_align_corners_lives(lite):
    # The align_corners fault above must hit the x2 upsample; guard the index it relies on.
    assert type(lite.basis_module.tower[2]).__name__ == "Upsample2x"


@pytest.mark.parametrize("target", ["cpu:fp16", "cpu:bf16"])
def test_no_false_alarm_on_ten_images(lite, target):
    spec = parse_target(target)
    for seed in range(10):
        batch, sizes = batch_of(lite, [100 + seed])
        result = compare(CPU.run(lite, batch, sizes).dump, spec.run(lite, batch, sizes).dump, THRESHOLDS.tensor[spec.dtype])
        assert result.passed, f"image {seed}: {describe(result)}"
        assert failed_tensor_gates(result, spec.dtype) == {}, f"image {seed}: {describe(result)}"


# Detection level: the shipped (trained) model on the acceptance suite's sample images, so
# that there are detections to compare; a fault in the device path only.
DETECTION_SIZE = 512
HEAD = "proposal_generator.fcos_head"
DETECTION_FAULTS = [
    # (fault, inject, module, kwargs, the gate that must catch it)
    ("centre-ness bias +0.5", _bias_shift, f"{HEAD}.ctrness", {"shift": 0.5}, "score_relative_error"),
    ("box regression x1.1", _scale_output, f"{HEAD}.bbox_pred", {"factor": 1.1}, "box_error"),
    ("circle/square logits swapped", _swap_channels, f"{HEAD}.cls_logits", {}, "score_relative_error"),
    ("basis bias -1", _bias_shift, "basis_module.tower.4", {"shift": -1.0}, "mask_iou"),
]


@pytest.fixture(scope="module")
def trained():
    model = load_weights(build_model("lite"), packaged_file("weights/lite.safetensors"))
    batch, sizes = batch_of(model, [0, 1], DETECTION_SIZE)
    return model, batch, sizes, CPU.run(model, batch, sizes, dump_mode="stats")


def failed_detection_gates(ref_run, dut_run, precision="fp16") -> dict[str, str]:
    limits = THRESHOLDS.detection[precision]
    comparison = compare_detections(ref_run.detections, dut_run.detections, limits.match_iou, len(ref_run.detections))
    verdicts = (evaluate(gate, comparison, limits) for gate in DETECTION_GATES)
    return {v.gate.name: f"{v.value:.4g} vs {v.limit}" for v in verdicts if not v.passed}


def test_trained_model_raises_no_detection_false_alarm_under_fp16(trained):
    model, batch, sizes, ref_run = trained
    assert sum(len(d["scores"]) for d in ref_run.detections) >= 10
    assert failed_detection_gates(ref_run, FP16.run(model, batch, sizes, dump_mode="stats")) == {}


@pytest.mark.parametrize("fault, inject, module, kwargs, gate", DETECTION_FAULTS, ids=[f[0] for f in DETECTION_FAULTS])
def test_fault_fails_the_detection_gate(trained, fault, inject, module, kwargs, gate):
    model, batch, sizes, ref_run = trained
    faulty = copy.deepcopy(model)
    inject(faulty, module, **kwargs)
    # Under fp16, as the false-alarm test above runs clean: the fault, not the rounding, must be what fails.
    failed = failed_detection_gates(ref_run, FP16.run(faulty, batch, sizes, dump_mode="stats"))
    assert gate in failed, f"{fault}: failed gates {failed}"


# int8: ORT static PTQ of the same trained model, graph outputs against the fp32 reference.
# Quantisation noise on `bases` (0.083 here) is nearly as large as a 10 % fault, so this proves the
# per-output limits and overrides of [precision.tensor.int8] still tell the two apart.
INT8 = parse_target("ort:int8")
INT8_CASES = [
    # (case, inject, module, kwargs, the output that must fail, or None for no fault)
    ("no fault", None, None, {}, None),
    ("bases x1.1", _scale_output, "basis_module.tower.4", {"factor": 1.1}, "bases"),
    ("box regression x1.1", _scale_output, f"{HEAD}.bbox_pred", {"factor": 1.1}, "bbox_reg_p3"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, inject, module, kwargs, output", INT8_CASES, ids=[c[0] for c in INT8_CASES])
def test_int8_tensor_gate_tells_quantisation_from_a_fault(trained, tmp_path, case, inject, module, kwargs, output):
    model, batch, sizes, ref_run = trained
    device_model = copy.deepcopy(model)
    if inject is not None:
        inject(device_model, module, **kwargs)
    # A fresh export cache: a hook-injected fault leaves the weights, and so the cache key, unchanged.
    runner = INT8.load(device_model, LoadContext(tuple(batch.shape[-2:]), cache_dir=tmp_path))
    result = compare(dump_from_outputs(ref_run.raw), INT8.run(device_model, batch, sizes, runner=runner).dump, THRESHOLDS.tensor["int8"])
    worst = evaluate(WORST_LAYER_ERROR, result, THRESHOLDS.tensor["int8"])
    if output is None:
        assert result.passed, describe(result)
        assert worst.passed, describe(result)
    else:
        assert not result.passed and result.first_divergent.name == output, describe(result)
        assert not worst.passed and worst.layer == output, describe(result)
