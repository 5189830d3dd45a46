"""Proof that the floor gates see a port bug under any precision, and name where it started.

Each fault goes into the device's copy of the model only: for eager targets through their
seam (``EagerRunner.model``, the copy its forward, post-processing and replay run), for
``ort:int8`` through the graph's (``OrtRunner.edited``: the int8 graph the device runs, not
the fp32 export its layers are named from). The reference and the floor never see it. A
module's output scaled by 1.05 (and by 1.02 under fp16) must fail the floor gates and be
named LOCAL at that module; a functional change inside a container (the FPN's top-down
resize) at the container; and clean targets raise no alarm.
"""
from __future__ import annotations

import types

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from pytest_blendmask.data import EVAL_SEED, generate_sample
from pytest_blendmask.gates import FLOOR_GATES, LOCAL_GAIN, evaluate
from pytest_blendmask.model import build_model
from pytest_blendmask.model.layers import resize_to
from pytest_blendmask.model.weights import load_weights
from pytest_blendmask.noise_floor import against_its_floor, target_floor
from pytest_blendmask.precision.compare import compare
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.settings import packaged_file
from pytest_blendmask.targets import LoadContext, parse_target

SIZE = 128  # P6/P7 fall under min_layer_numel here and are not gated; every other module is
THRESHOLDS = load_thresholds()
CPU = parse_target("cpu")
EAGER = ("cpu:fp16", "cpu:bf16", "cpu:fp16:force")
GRAPHS = ("ort", "ort:fp16", "ort:int8")

# Spread over the backbone, the FPN, the head towers (one conv followed by GroupNorm, which
# hides a scale from every accumulated comparison), the basis module and the top layer.
FAULTY_MODULES = (
    "backbone.bottom_up.stem.conv1",
    "backbone.bottom_up.res2.0.conv1",
    "backbone.bottom_up.res3.0.conv2",
    "backbone.bottom_up.res4.1.conv3",
    "backbone.bottom_up.res5.0.shortcut",
    "backbone.fpn_lateral4",
    "backbone.fpn_output3",
    "backbone.top_block.p6",
    "proposal_generator.fcos_head.cls_tower.3",
    "proposal_generator.fcos_head.bbox_tower.0",
    "proposal_generator.fcos_head.ctrness",
    "basis_module.refine.1.0",
    "basis_module.tower.3.0",
    "basis_module.tower.4",
    "top_layer",
)
CASES = [(spec, module, 1.05) for spec in (*EAGER, "ort:fp16", "ort:int8") for module in FAULTY_MODULES] + [
    (spec, module, 1.02) for spec in ("cpu:fp16", "cpu:fp16:force") for module in FAULTY_MODULES
]


# ort:int8 is proven on the shipped (trained) weights at their size, 512, the model its calibration
# fits: at 256, images 2-3 exceed the calibrated range of P6 so far that clipping costs 13 % there
# (device and floor alike, over the int8 standard of 0.1); at 128 the 4x4 P5 maps are too small
# for the ratio of two noises to settle.
TRAINED = {"ort:int8": 512}


def batch_of(model, seeds, size=SIZE):
    images = [torch.from_numpy(generate_sample(EVAL_SEED, s, size, size).image).permute(2, 0, 1).contiguous() for s in seeds]
    return model.preprocess(images)


@pytest.fixture(scope="module")
def lite():
    return build_model("lite")


@pytest.fixture(scope="module")
def trained_lite():
    model = build_model("lite")
    load_weights(model, packaged_file("weights/lite.safetensors"))
    return model


def model_for(spec, lite, trained_lite):
    """(model, input size) a target is proven on."""
    return (trained_lite, TRAINED[spec]) if spec in TRAINED else (lite, SIZE)


@pytest.fixture(scope="module")
def setup(lite, trained_lite, tmp_path_factory):
    """Per target: its model, the reference run, the loaded target and the floor, made once."""
    made = {}
    cache_dir = tmp_path_factory.mktemp("onnx")

    def get(spec):
        if spec not in made:
            model, size = model_for(spec, lite, trained_lite)
            batch, sizes = batch_of(model, [0], size)
            reference = CPU.run(model, batch, sizes)
            target = parse_target(spec)
            floor = target_floor(target, model, batch, reference, THRESHOLDS)
            context = LoadContext((size, size), cache_dir=cache_dir)
            made[spec] = types.SimpleNamespace(target=target, model=model, batch=batch, sizes=sizes, reference=reference,
                                               floor=floor, load=lambda: target.load(model, context))
        return made[spec]

    return get


def floor_comparison(setup, spec, inject=None):
    """The target's comparison with its floor, a fault put into its device copy or graph by ``inject``."""
    case = setup(spec)
    runner = case.load()
    if inject is not None:
        runner = inject(runner) or runner  # the seam: the device's copy or graph only
    accumulated = lambda: compare(case.reference.dump, case.target.run(case.model, case.batch, case.sizes, runner=runner).dump,  # noqa: E731
                                  THRESHOLDS.tensor[case.target.precision])
    return against_its_floor(case.target, runner, case.model, case.batch, case.reference, lambda: case.floor, THRESHOLDS,
                             accumulated), case.target


def _scale_in_graph(tensor, factor):
    """An edit that makes ``tensor`` ``factor`` times what its producer computes (a Mul after the
    producer); for a quantised tensor, the float one its quantise-dequantise pair reads."""
    def edit(model):
        nodes = list(model.graph.node)
        producer = next(node for node in nodes if tensor in node.output)
        while producer.op_type in ("DequantizeLinear", "QuantizeLinear"):
            producer = next(node for node in nodes if producer.input[0] in node.output)
        name = producer.output[0]
        raw = f"{name}.before_fault"
        producer.output[0] = raw
        inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
        half = any(v.name == name and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in inferred)
        scale = onnx.numpy_helper.from_array(np.array(factor, np.float16 if half else np.float32), f"{name}.fault")
        model.graph.initializer.append(scale)
        model.graph.node.insert(nodes.index(producer) + 1, onnx.helper.make_node("Mul", [raw, scale.name], [name]))

    return edit


def scaled(name, factor, reference=None, tmp_path=None):
    def inject(runner):
        if hasattr(runner, "model"):  # eager: a hook on the device copy's module
            runner.model.get_submodule(name).register_forward_hook(lambda module, args, output: output * factor)
            return None
        # A graph: the tensor of each call of the module, or the one it was fused into.
        _, layers = runner.layers(reference.dump)
        held = {**layers.absorbed, **layers.tensors}
        tensors = {held[e.name] for e in reference.dump if e.module == name and e.name in held}
        return runner.edited(lambda model: [_scale_in_graph(t, factor)(model) for t in tensors], tmp_path / "faulty.onnx")

    return inject


def modules_of(error):
    """The modules a ``ModuleError`` speaks for: its own and, in a compiled graph, those fused into or
    returning its tensor."""
    return {error.module, *(entry.split("#")[0] for entry in error.covers)}


# Where the norm of a 5 % (2 % under fp16) fault stands out of the floor's noise, every floor
# gate fails; under int8, whose rounding costs a conv 2-6 %, the gain error is sure to see it.
GAIN_ONLY = ("ort:int8",)


@pytest.mark.parametrize("spec, module, factor", CASES, ids=[f"{s}-{m}-x{f}" for s, m, f in CASES])
def test_a_scaled_module_fails_the_floor_gates_and_is_named_local(setup, spec, module, factor, tmp_path):
    comparison, target = floor_comparison(setup, spec, scaled(module, factor, setup(spec).reference, tmp_path))
    localisation = comparison.localisation
    assert localisation.kind == "LOCAL", localisation.detail
    named = comparison.by_name()[localisation.entry]
    assert module in modules_of(named), localisation.detail
    failed = [v for v in (evaluate(g, comparison, THRESHOLDS.local[target.precision]) for g in FLOOR_GATES) if not v.passed]
    assert failed and failed[0].detail.startswith(f"LOCAL at {named.name}")
    # Each gate fails at an output of the faulty module; the standard too where the fault is over
    # it (0.02 > 0.01 under fp16, 0.05 > 0.04 under bf16). Under int8 the gain error does; the
    # others may not stand out of the noise there, or see the drift first further down.
    at_fault = [v.gate for v in failed if module in modules_of(comparison.by_name()[v.layer])]
    assert LOCAL_GAIN in at_fault if spec in GAIN_ONLY else at_fault == [v.gate for v in failed] == list(FLOOR_GATES)


def _bilinear_top_down(fpn):
    """The FPN's forward with its top-down resize made bilinear instead of nearest."""
    def forward(self, x):
        feats = self.bottom_up(x)
        outs, top_down = [], None
        for level in (5, 4, 3):
            lateral = getattr(self, f"fpn_lateral{level}")(feats[f"res{level}"])
            top_down = lateral if top_down is None else lateral + resize_to(top_down, lateral.shape[-2:], "bilinear")
            outs.insert(0, getattr(self, f"fpn_output{level}")(top_down))
        return outs + self.top_block(outs[-1])

    fpn.forward = types.MethodType(forward, fpn)


@pytest.mark.parametrize("spec", EAGER)
def test_a_changed_resize_between_modules_is_named_at_the_module_that_contains_it(setup, spec):
    comparison, _ = floor_comparison(setup, spec, lambda runner: _bilinear_top_down(runner.model.backbone))
    assert (comparison.localisation.kind, comparison.localisation.module) == ("LOCAL", "backbone")


@pytest.mark.parametrize("spec", EAGER + GRAPHS)
def test_a_clean_target_is_within_its_floor_on_ten_images(lite, trained_lite, spec, tmp_path):
    model, size = model_for(spec, lite, trained_lite)
    target = parse_target(spec)
    runner = target.load(model, LoadContext((size, size), cache_dir=tmp_path))
    for seeds in ([0, 1], [2, 3], [4, 5], [6, 7], [8, 9]):
        batch, sizes = batch_of(model, seeds, size)
        reference = CPU.run(model, batch, sizes)
        floor = target_floor(target, model, batch, reference, THRESHOLDS)
        accumulated = lambda: compare(reference.dump, target.run(model, batch, sizes, runner=runner).dump,  # noqa: E731
                                      THRESHOLDS.tensor[target.precision])
        comparison = against_its_floor(target, runner, model, batch, reference, lambda: floor, THRESHOLDS, accumulated)
        assert comparison.passed, f"images {seeds}: {comparison.localisation.detail}"
        assert all(evaluate(g, comparison, THRESHOLDS.local[target.precision]).passed for g in FLOOR_GATES)
