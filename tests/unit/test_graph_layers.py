"""The exported graph's tensors named back to the model's modules (atc/layers.py)."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import helper

from pytest_blendmask.atc.export import export_onnx
from pytest_blendmask.atc.layers import exposed, layer_tensors, layered_dump, local_errors, node_modules
from pytest_blendmask.atc.ort import build_ort_runner
from pytest_blendmask.model import build_model
from pytest_blendmask.precision.dump import DumpCollector

SIZE = 128
MODULES = ("backbone", "backbone.bottom_up", "backbone.bottom_up.res2", "backbone.bottom_up.res2.0",
           "backbone.bottom_up.res2.0.conv1", "proposal_generator", "proposal_generator.fcos_head",
           "proposal_generator.fcos_head.cls_tower", "proposal_generator.fcos_head.cls_tower.0", "top_layer")


def _graph(names: list[str]) -> onnx.GraphProto:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=name) for i, name in enumerate(names)]
    return helper.make_graph(nodes, "g", [], [])


def test_scope_names_resolve_to_modules_and_calls():
    graph = _graph([
        "/backbone/bottom_up/res2/res2.0/conv1/Conv",  # a caller's name is a prefix of its child's
        "/fcos_head/cls_tower.0/Conv",  # called directly from the root, past proposal_generator
        "/fcos_head/cls_tower.0_1/Conv",  # the second call of cls_tower.0
        "/top_layer/Conv", "/top_layer_1/Conv", "/top_layer_2/Conv",
        "/backbone/Resize",  # the container's own functional code
        "/unknown_module/Relu", "Relu_7",
    ])
    assert node_modules(graph, MODULES) == [
        ("backbone.bottom_up.res2.0.conv1", 0),
        ("proposal_generator.fcos_head.cls_tower.0", 0), ("proposal_generator.fcos_head.cls_tower.0", 1),
        ("top_layer", 0), ("top_layer", 1), ("top_layer", 2),
        ("backbone", 0),
        None, None,
    ]


@pytest.fixture(scope="module")
def lite_export(tmp_path_factory):
    model = build_model("lite").eval()
    batch = torch.randn(2, 3, SIZE, SIZE)
    with DumpCollector(model, mode="full") as collector, torch.no_grad():
        model.forward_raw(batch)
    exported = export_onnx(model, (SIZE, SIZE), dynamic_batch=True, cache_dir=tmp_path_factory.mktemp("onnx"))
    return model, batch, collector.dump, exported


def test_every_module_output_is_paired_with_the_tensor_that_holds_its_value(lite_export):
    model, batch, reference, exported = lite_export
    graph = onnx.load(str(exported.path))
    layers = layer_tensors(graph, reference)
    assert not layers.unpaired and set(layers.tensors) == set(reference.names())
    dump = layered_dump(graph, layers, reference, batch, "CPUExecutionProvider")
    by_name = reference.by_name()
    for entry in dump:
        expected = by_name[entry.name].data
        assert torch.linalg.vector_norm(entry.data - expected) <= 1e-4 * torch.linalg.vector_norm(expected) + 1e-6, entry.name


def test_fp32_local_errors_are_rounding_only_and_name_their_inputs(lite_export):
    model, batch, reference, exported = lite_export
    graph = onnx.load(str(exported.path))
    errors = local_errors(graph, layer_tensors(graph, reference), reference, batch, "CPUExecutionProvider")
    assert len(errors) > 100 and max(e.relative_error for e in errors) < 1e-5
    by_name = {e.name: e for e in errors}
    # conv1 and its norm share one tensor: one error, named after the norm that computed it last;
    # conv1, which returns it, is its alias.
    assert by_name["backbone.bottom_up.stem.conv1.norm"].aliases == ("backbone.bottom_up.stem.conv1",)
    assert by_name["backbone.bottom_up.res2.0.conv2.norm"].inputs == ("backbone.bottom_up.res2.0.conv1.norm",)


def test_derived_graphs_expose_what_their_readers_see(lite_export):
    model, batch, reference, exported = lite_export
    source = onnx.load(str(exported.path))
    layers = layer_tensors(source, reference)
    half = onnx.load(str(build_ort_runner(exported, "fp16").model_path))
    int8 = onnx.load(str(build_ort_runner(exported, "int8", model=model).model_path))
    # ONNX Runtime's Conv+BN fusion keeps the norm's output name: the conv is still exposed.
    assert exposed(layers, source, half).tensors["backbone.bottom_up.stem.conv1"] == layers.tensors["backbone.bottom_up.stem.conv1"]
    # A quantised conv's output is what its readers get: after its quantise-dequantise pair.
    assert exposed(layers, source, int8).tensors["backbone.bottom_up.stem.conv1"].endswith("_DequantizeLinear_Output")
    # The basis module's Conv+BN in a Sequential is fused: the conv's entry is absorbed by the norm's tensor.
    fused = exposed(layers, source, int8)
    assert fused.absorbed["basis_module.refine.0.0"] == fused.tensors["basis_module.refine.0.1"]
