"""The model protocol: what a factory may return, how the levels degrade, and BlendMask called like a detector."""
from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn, maskrcnn_resnet50_fpn

from pytest_blendmask.model import ModelProtocolError, TensorModel, build_model, is_detector, probe
from pytest_blendmask.model.protocol import as_gated_model, missing_for_detection
from pytest_blendmask.model.torchvision_detector import TorchvisionDetector
from pytest_blendmask.noise_floor import against_its_floor, target_floor
from pytest_blendmask.precision.compare import compare
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.targets import LoadContext, parse_target


def _images(count: int = 2, size: tuple[int, int] = (96, 128)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator) for _ in range(count)]


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean(dim=(2, 3))


def test_a_plain_module_gets_the_tensor_level_only() -> None:
    model = as_gated_model(torchvision.models.resnet18(weights=None, num_classes=10), "m:resnet18").eval()
    assert isinstance(model, TensorModel) and not is_detector(model)
    batch, sizes = model.preprocess(_images(2, (64, 64)))
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.float32 and sizes == [(64, 64)] * 2
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    with torch.no_grad():
        assert list(model.forward_raw(batch)) == ["output"]
    assert missing_for_detection(model) == (
        'ResNet (as a TensorModel) has no postprocess and no class_names: the detection and AP levels need a '
        'DetectionModel (README section "Your own model")'
    )


def test_tuple_outputs_are_named_by_position() -> None:
    model = TensorModel(_TwoHeads())
    raw = model.forward_raw(torch.zeros(1, 3, 8, 8))
    assert list(raw) == ["output_0", "output_1"] and raw["output_1"].shape == (1, 4)


def test_preprocess_takes_bgr_and_gives_rgb() -> None:
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    image[0] = 255  # blue, in BGR
    batch, _ = TensorModel(_TwoHeads()).preprocess([image])
    assert batch[0, 2].eq(1).all() and batch[0, :2].eq(0).all()


@pytest.mark.parametrize(
    ("made", "message"),
    [
        (42, "m:f returned a int; expected a torch.nn.Module"),
        (fcos_resnet50_fpn(weights=None, weights_backbone=None), "give it preprocess, forward_raw"),
        (maskrcnn_resnet50_fpn(weights=None, weights_backbone=None), "wrap it: pytest_blendmask.model.torchvision_detector.TorchvisionDetector(model)"),
    ],
    ids=["not-a-module", "torchvision-one-stage", "torchvision-two-stage"],
)
def test_an_unusable_model_is_refused_with_the_fix(made: object, message: str) -> None:
    with pytest.raises(ModelProtocolError, match=".*".join(map(re.escape, [message, "README section"]))):
        as_gated_model(made, "m:f")


def test_half_the_protocol_names_the_missing_method() -> None:
    class OnlyRaw(nn.Module):
        def forward_raw(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"x": x}

    with pytest.raises(ModelProtocolError, match="m:f returned OnlyRaw with forward_raw but no preprocess"):
        as_gated_model(OnlyRaw(), "m:f")


def test_probe_refuses_outputs_that_are_not_named_tensors() -> None:
    class Lists(nn.Module):
        def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return [{"boxes": x}]

    with pytest.raises(ModelProtocolError, match=r"Lists\(batch\) returned list, not a tensor"):
        probe(TensorModel(Lists()), (32, 32), "m:f")


def test_probe_reports_a_forward_that_fails_at_the_input_size() -> None:
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    probe(TensorModel(linear), (32, 32), "m:f")
    with pytest.raises(ModelProtocolError, match=r"forward_raw on a \[1, 3, 64, 64\] batch raised RuntimeError.*--bm-input-size"):
        probe(TensorModel(linear), (64, 64), "m:f")


def test_a_factory_is_built_under_a_fixed_seed(tmp_path, monkeypatch) -> None:
    (tmp_path / "seeded_factory.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first, second = build_model("seeded_factory:build"), build_model("seeded_factory:build")
    torch.testing.assert_close(first.module.weight, second.module.weight)
    with pytest.raises(ModelProtocolError, match="module 'seeded_factory' has no callable 'nope'"):
        build_model("seeded_factory:nope")


@pytest.fixture(scope="module")
def mask_rcnn() -> nn.Module:
    torch.manual_seed(0)
    # Random init scores every class near 1/num_classes; a zero score threshold keeps detections to compare.
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=7, box_score_thresh=0.0,
                                 box_detections_per_img=10).eval()


def test_torchvision_adapter_gives_torchvisions_own_detections(mask_rcnn: nn.Module) -> None:
    model = TorchvisionDetector(mask_rcnn)
    assert is_detector(model) and len(model.class_names) == 6
    images = _images()
    batch, sizes = model.preprocess(images)
    with torch.no_grad():
        ours = model.postprocess(model.forward_raw(batch), sizes)
        mask_rcnn.transform.min_size, mask_rcnn.transform.max_size = (96,), 128  # no resize: the sizes the gate fixes
        theirs = mask_rcnn([im.flip(0).float() / 255 for im in images])
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine["boxes"], reference["boxes"])
        torch.testing.assert_close(mine["scores"], reference["scores"])
        assert torch.equal(mine["classes"], reference["labels"] - 1)
        assert mine["masks"].dtype == torch.bool and torch.equal(mine["masks"], reference["masks"][:, 0] > 0.5)


def test_the_adapter_refuses_a_one_stage_detector() -> None:
    with pytest.raises(TypeError, match="takes a torchvision GeneralizedRCNN"):
        TorchvisionDetector(fcos_resnet50_fpn(weights=None, weights_backbone=None))


def test_mask_rcnns_noise_floor_names_a_fault_next_to_its_fpns_list_appending_block(mask_rcnn: nn.Module) -> None:
    # torchvision's LastLevelMaxPool appends to the list its FPN gives it: replay takes the list as it came in.
    model = TorchvisionDetector(mask_rcnn)
    batch, sizes = model.preprocess(_images(1))
    thresholds, target = load_thresholds(), parse_target("cpu:bf16")
    reference = parse_target("cpu").run(model, batch, sizes)
    floor = target_floor(target, model, batch, reference, thresholds)
    runner = target.load(model, LoadContext((96, 128)))
    faulty = "detector.backbone.fpn.layer_blocks.3"  # P5, which the extra block pools into P6
    runner.model.get_submodule(faulty).register_forward_hook(lambda module, args, output: output * 1.05)
    accumulated = lambda: compare(reference.dump, target.run(model, batch, sizes, runner=runner).dump,  # noqa: E731
                                  thresholds.tensor[target.precision])
    comparison = against_its_floor(target, runner, model, batch, reference, lambda: floor, thresholds, accumulated)
    assert (comparison.localisation.kind, comparison.localisation.module) == ("LOCAL", faulty), comparison.localisation.detail
    assert "detector.backbone.fpn.extra_blocks.0.4" in comparison.by_name()  # the pooled P6, replayed


def test_the_adapter_refuses_a_box_only_detector() -> None:
    box_only = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(TypeError, match="needs a mask head"):
        TorchvisionDetector(box_only)
    with pytest.raises(ModelProtocolError, match="give it preprocess, forward_raw"):
        as_gated_model(box_only, "m:f")


def test_blendmask_is_called_like_a_detector() -> None:
    model = build_model("lite")
    images = _images(2, (64, 96))
    batch, sizes = model.preprocess(images)
    with torch.no_grad():
        from_images, from_batch = model(images), model(batch, sizes)
    assert len(from_images) == 2
    for a, b in zip(from_images, from_batch):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TypeError, match="needs image_sizes"):
        model(batch)
