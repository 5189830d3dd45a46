"""ONNX export of the raw network: outputs, opsets, batch modes, graph content, cache, bad files."""
from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torchvision.ops import deform_conv2d

from pytest_blendmask.atc.export import (
    OPSETS,
    ExportError,
    default_cache_dir,
    export_onnx,
    load_checked,
    model_fingerprint,
    run_in_batches,
    scale_factor_resizes,
)
from pytest_blendmask.atc.ort import create_session
from pytest_blendmask.cache_dir import CACHE_ENV
from pytest_blendmask.model import build_model

from .atc_support import (  # noqa: F401  (pytest finds the fixtures by name)
    FP32_REL_L2,
    IMAGE_HW,
    bgr_images,
    lite_model,
    lite_onnx,
    onnx_cache,
    reference_raw,
    relative_l2_per_output,
    to_chw,
)

# Operators that belong to the host-side post-processing and must not be in the graph.
HOST_SIDE_OPS = {"RoiAlign", "NonMaxSuppression", "TopK", "NonZero", "GridSample"}


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("opset", OPSETS)
def test_export_answers_like_pytorch_for_each_opset_and_batch_mode(lite_model, onnx_cache, opset, dynamic_batch):
    exported = export_onnx(lite_model, IMAGE_HW, opset=opset, dynamic_batch=dynamic_batch, cache_dir=onnx_cache)
    proto = load_checked(exported.path)
    assert proto.opset_import[0].version == opset
    # Validate with a batch the export did not trace: 2 images where the batch is dynamic.
    images = bgr_images(2 if dynamic_batch else 1)
    batch, _ = lite_model.preprocess([to_chw(im) for im in images])
    ref = reference_raw(lite_model, batch)
    assert exported.output_names == tuple(ref), "outputs must be forward_raw's, in its order"
    assert [o.name for o in proto.graph.output] == list(ref)
    input_dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert (input_dims[0].dim_param or input_dims[0].dim_value) == exported.input_shape[0]
    session = create_session(exported.path)
    got = {name: torch.from_numpy(v) for name, v in zip(exported.output_names, session.run(None, {"input": batch.numpy()}))}
    errors = relative_l2_per_output(got, ref)
    assert max(errors.values()) <= FP32_REL_L2, errors


def test_graph_is_the_raw_network_with_sized_resizes_and_unfolded_batch_norm(lite_onnx):
    proto = load_checked(lite_onnx.path)
    op_types = {node.op_type for node in proto.graph.node}
    assert not op_types & HOST_SIDE_OPS, f"host-side ops leaked into the graph: {op_types & HOST_SIDE_OPS}"
    assert "Resize" in op_types
    assert scale_factor_resizes(proto) == []
    # The frozen-BN backbone stays BatchNormalization, for ORT and ATC to fold (and be checked doing so).
    assert "BatchNormalization" in op_types


def _resize_model(op_type: str, inputs: list[str]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node(op_type, inputs, ["y"], name="up")
    return helper.make_model(helper.make_graph([node], "g", [x], [y]))


@pytest.mark.parametrize(
    ("op_type", "inputs", "flagged"),
    [
        ("Resize", ["x", "", "scales"], True),
        ("Resize", ["x", "", "scales", ""], True),
        ("Resize", ["x", "", "", "sizes"], False),
        ("Upsample", ["x", "scales"], True),
    ],
    ids=["resize-scales", "resize-empty-sizes", "resize-sizes", "upsample"],
)
def test_scale_factor_resizes_flags_only_scale_driven_nodes(op_type, inputs, flagged):
    assert scale_factor_resizes(_resize_model(op_type, inputs)) == (["up"] if flagged else [])


def test_second_export_is_a_cache_hit(lite_model, lite_onnx, onnx_cache):
    before = lite_onnx.path.stat().st_mtime_ns
    again = export_onnx(lite_model, IMAGE_HW, opset=11, cache_dir=onnx_cache)
    assert again.path == lite_onnx.path
    assert again.export_seconds is None
    assert lite_onnx.path.stat().st_mtime_ns == before


def test_fingerprint_follows_weights_opset_batch_mode_and_size(lite_model):
    base = model_fingerprint(lite_model, IMAGE_HW, 11, False)
    assert model_fingerprint(lite_model, IMAGE_HW, 11, False) == base
    assert model_fingerprint(lite_model, IMAGE_HW, 17, False) != base
    assert model_fingerprint(lite_model, IMAGE_HW, 11, True) != base
    assert model_fingerprint(lite_model, (160, 128), 11, False) != base
    changed = type(lite_model)(lite_model.cfg).eval()
    changed.load_state_dict(lite_model.state_dict())
    with torch.no_grad():
        changed.top_layer.bias.add_(1e-3)
    assert model_fingerprint(changed, IMAGE_HW, 11, False) != base


def test_a_change_to_the_model_code_is_exported_again(lite_model, lite_onnx, onnx_cache, monkeypatch):
    # The same config and weights, another forward_raw: a subclass, then the class's method patched.
    class ScaledBases(type(lite_model)):
        def forward_raw(self, images):
            raw = super().forward_raw(images)
            return {**raw, "bases": raw["bases"] * 2}

    edited = ScaledBases(lite_model.cfg).eval()
    edited.load_state_dict(lite_model.state_dict())
    base = model_fingerprint(lite_model, IMAGE_HW, 11, False)
    assert model_fingerprint(edited, IMAGE_HW, 11, False) != base
    exported = export_onnx(edited, IMAGE_HW, opset=11, cache_dir=onnx_cache)
    assert exported.path != lite_onnx.path and exported.export_seconds is not None
    monkeypatch.setattr(type(lite_model), "forward_raw", ScaledBases.forward_raw)
    assert model_fingerprint(lite_model, IMAGE_HW, 11, False) != base


@pytest.mark.parametrize("damage", ["truncated", "not-onnx"])
def test_corrupt_cached_file_names_the_file_and_the_fix(lite_model, lite_onnx, tmp_path, damage):
    cached = tmp_path / lite_onnx.path.name
    data = lite_onnx.path.read_bytes()
    cached.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an onnx file")
    with pytest.raises(ExportError) as info:
        export_onnx(lite_model, IMAGE_HW, opset=11, cache_dir=tmp_path)
    message = str(info.value)
    assert str(cached) in message
    assert "delete it" in message and "re-export" in message


def test_load_checked_of_a_missing_file_says_to_export(tmp_path):
    with pytest.raises(ExportError, match=r"missing\.onnx: ONNX file not found; export the model first"):
        load_checked(tmp_path / "missing.onnx")


class _DeformModel(nn.Module):
    """A forward_raw with torchvision's deform_conv2d, which ONNX has only from opset 19."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 3, 3, 3))

    def forward_raw(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        offset = torch.zeros(x.shape[0], 18, x.shape[2], x.shape[3])
        return {"y": deform_conv2d(x, offset, self.weight, padding=1)}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_unexportable_operator_is_reported_with_the_opset(tmp_path):
    with pytest.raises(ExportError, match=r"failed at opset 11 \(static batch\): UnsupportedOperatorError: .*deform_conv2d"):
        export_onnx(_DeformModel().eval(), (32, 32), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [], "a failed export must not leave a file behind"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"opset": 13}, r"opset: expected one of \(11, 17\); got 13"), ({"input_hw": (100, 128)}, r"multiples of 32")],
)
def test_export_rejects_unsupported_opset_and_size(lite_model, tmp_path, kwargs, match):
    args = {"input_hw": IMAGE_HW, **kwargs}
    with pytest.raises(ValueError, match=match):
        export_onnx(lite_model, cache_dir=tmp_path, **args)


def test_export_refuses_a_model_in_training_mode(tmp_path):
    model = build_model("lite").train()
    with pytest.raises(ValueError, match=r"the model is in training mode; call model.eval\(\) first"):
        export_onnx(model, IMAGE_HW, cache_dir=tmp_path)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path / "onnx"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path(__file__).resolve().parents[2] / ".bm_cache" / "onnx"


def test_run_in_batches_splits_a_batch_for_a_batch_one_model():
    seen = []

    def run(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(chunk.shape[0])
        return {"double": chunk * 2}

    batch = torch.arange(3.0).view(3, 1)
    assert torch.equal(run_in_batches(run, batch, 1)["double"], batch * 2)
    assert seen == [1, 1, 1]
    seen.clear()
    run_in_batches(run, batch, None)
    assert seen == [3]


def test_copy_of_an_export_is_still_valid(lite_onnx, tmp_path):
    # The cache may be moved between machines (CI artefacts): the file must be self-contained.
    moved = Path(shutil.copy(lite_onnx.path, tmp_path / "moved.onnx"))
    assert [o.name for o in load_checked(moved).graph.output] == list(lite_onnx.output_names)
