"""Refitting the shipped lite weights into another norm layout (``model.renorm``), and the perf models built on it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_blendmask.data import TRAIN_SEED, generate_sample
from pytest_blendmask.model import build_model, load_weights
from pytest_blendmask.model.renorm import norm_call_order, norm_layers, with_norm
from pytest_blendmask.perf import workload
from pytest_blendmask.perf.workload import build_workload, detections_per_image, synthetic_jpegs, timed_model
from pytest_blendmask.settings import packaged_file

SIZE = (256, 256)  # the quick grid's input size


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The lite model with the shipped weights (FrozenBN backbone, BN basis module, GN head)."""
    model = build_model("lite")
    return load_weights(model, packaged_file("weights/lite.safetensors")).eval()


@pytest.fixture(scope="module")
def calibration(trained: nn.Module) -> torch.Tensor:
    images = [torch.from_numpy(generate_sample(TRAIN_SEED, i, *SIZE).image).permute(2, 0, 1) for i in range(4)]
    return trained.preprocess(images)[0]


@pytest.fixture(scope="module")
def refits(trained: nn.Module, calibration: torch.Tensor) -> dict[str, nn.Module]:
    """The trained model refitted into each layout, built once."""
    return {norm: with_norm(trained, norm, calibration) for norm in ("frozen_bn", "bn", "gn")}


def _confident(model: nn.Module) -> list[int]:
    """Detections above 0.3 per perf image, end to end at the quick grid's size."""
    work = build_workload(model, synthetic_jpegs(2, SIZE), SIZE, torch.device("cpu"), "fp32", streams=False)
    return [int((image["scores"] > 0.3).sum()) for image in work.end_to_end()]


def _affine(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of a batch-norm layer in eval: y = scale x + shift."""
    scale = layer.weight / (layer.running_var + layer.eps).sqrt()
    return scale, layer.bias - scale * layer.running_mean


def test_the_trained_layout_refits_to_the_same_outputs(
    trained: nn.Module, calibration: torch.Tensor, refits: dict[str, nn.Module]
) -> None:
    refit = refits[trained.cfg.norm]
    with torch.no_grad():
        ref, out = trained.forward_raw(calibration[:1]), refit.forward_raw(calibration[:1])
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-3, atol=1e-3, msg=key)


def test_a_batch_norm_refitted_from_frozen_bn_is_the_same_map(trained: nn.Module, refits: dict[str, nn.Module]) -> None:
    refit = refits["bn"]
    # The stem's norm sees the very input the trained one does, so its least-squares fit is exact,
    # a negative scale included.
    source, target = trained.backbone.bottom_up.stem.conv1.norm, refit.backbone.bottom_up.stem.conv1.norm
    assert isinstance(target, nn.BatchNorm2d)
    for got, want in zip(_affine(target), _affine(source)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_per_level_bn_head_gets_each_levels_statistics(trained: nn.Module, refits: dict[str, nn.Module]) -> None:
    levels = refits["bn"].proposal_generator.fcos_head.cls_tower[1]
    assert isinstance(levels, nn.ModuleList) and len(levels) == len(trained.cfg.fpn_levels)
    means = torch.stack([bn.running_mean for bn in levels])
    assert not torch.allclose(means[0], means[-1])  # P3 and P7 statistics differ


def test_a_group_norm_refit_is_the_least_squares_fit(
    trained: nn.Module, calibration: torch.Tensor, refits: dict[str, nn.Module]
) -> None:
    stem_source = trained.backbone.bottom_up.stem.conv1
    stem_target = refits["gn"].backbone.bottom_up.stem.conv1.norm
    assert isinstance(stem_target, nn.GroupNorm)
    with torch.no_grad():
        x = F.conv2d(calibration, stem_source.weight, stride=2, padding=3).double()
        u = F.group_norm(x, stem_target.num_groups, eps=stem_target.eps).transpose(0, 1).flatten(1)
        r = stem_source.norm(x.float()).double().transpose(0, 1).flatten(1)
    # Ordinary least squares per channel, r ~ a u + b.
    design = torch.stack([u, torch.ones_like(u)], dim=2)  # [C, P, 2]
    solution = torch.linalg.lstsq(design, r.unsqueeze(2)).solution.squeeze(2)
    torch.testing.assert_close(stem_target.weight.double(), solution[:, 0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(stem_target.bias.double(), solution[:, 1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_refitted_layouts_still_detect_what_the_trained_one_does(
    trained: nn.Module, refits: dict[str, nn.Module], norm: str
) -> None:
    refit = refits[norm]
    assert refit.cfg.norm == norm and all(
        isinstance(m, nn.GroupNorm if norm == "gn" else nn.BatchNorm2d)
        for name, m in norm_layers(refit).items() if not name.startswith("basis_module.seg_head")
    )
    want, got = _confident(trained), _confident(refit)
    assert min(want) > 10  # the shipped weights detect on the perf images
    for w, g in zip(want, got):
        assert abs(g - w) <= 0.25 * w, (norm, want, got)


def test_refitting_leaves_the_trained_model_as_it_was(trained: nn.Module, calibration: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    with_norm(trained, "gn", calibration[:1])
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert not any(m._forward_hooks for m in norm_layers(trained).values())


def test_the_call_order_visits_a_shared_head_norm_once_per_level(trained: nn.Module, calibration: torch.Tensor) -> None:
    order = norm_call_order(trained, calibration[:1])
    shared = trained.proposal_generator.fcos_head.cls_tower[1]
    assert sum(m is shared for m in order) == len(trained.cfg.fpn_levels)


def test_timed_model_says_what_its_weights_and_norm_layers_are(
    trained: nn.Module, calibration: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quick grid's calibration size keeps this fast; the fit itself is tested above.
    monkeypatch.setattr(workload, "calibration_batch", lambda model: calibration)
    as_trained = timed_model(trained, "frozen_bn", "lite.safetensors")
    assert (as_trained.weights, as_trained.norm_layers) == ("lite.safetensors", "as trained (frozen_bn)")
    copied = as_trained.on(torch.device("cpu"))
    assert copied.model is not trained and copied.norm_layers == as_trained.norm_layers
    refit = timed_model(trained, "bn", "lite.safetensors")
    assert refit.model.cfg.norm == "bn" and refit.norm_layers.startswith("refitted to the trained frozen_bn layers")


def test_detections_per_image_counts_each_images_detections() -> None:
    detections = [{"scores": torch.zeros(3)}, {"scores": torch.zeros(0)}]
    assert detections_per_image(detections) == [3, 0]
