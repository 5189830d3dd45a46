"""Training pieces: FCOS target assignment, each loss on hand-computed cases, a tiny run."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pytest_blendmask.data import ensure_split
from pytest_blendmask.model.blendmask import build_model
from pytest_blendmask.model.weights import load_weights
from pytest_blendmask.train import losses
from pytest_blendmask.train.assign import INF, assign, centerness_target, level_ranges
from pytest_blendmask.train.evaluate import coco_ap
from pytest_blendmask.train.loop import TrainConfig, export_state, load_example, make_trainable, train

# One 8x8 level of stride 8: locations (4 + 8x, 4 + 8y), x, y in 0..7.
ONE_LEVEL = dict(shapes=[(8, 8)], strides=(8,), num_classes=3)


def loc_index(x: int, y: int, w: int = 8) -> int:
    return y * w + x


def test_level_ranges_open_ended():
    assert level_ranges((64, 128, 256, 512)) == [(-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF)]


def test_centre_sampling_keeps_only_locations_near_the_centre():
    # Box 0..64: centre 32, radius 1.5 * 8 = 12 -> locations with 20 < x, y < 44: 28, 36 (x = 4 + 8k).
    t = assign(torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([2]), **ONE_LEVEL, sizes_of_interest=(1000,))
    positive = (t.labels < 3).nonzero().flatten().tolist()
    assert positive == sorted(loc_index(x, y) for x in (3, 4) for y in (3, 4))
    assert set(t.labels[positive].tolist()) == {2}
    i = loc_index(3, 3)  # location (28, 28): l=t=28, r=b=36, in stride units
    torch.testing.assert_close(t.reg[i], torch.tensor([28.0, 28.0, 36.0, 36.0]) / 8)
    torch.testing.assert_close(t.ctrness[i], torch.tensor(28.0 / 36.0))
    assert t.gt_index[i] == 0 and t.gt_index[0] == -1 and t.ctrness[0] == 0


def test_centre_region_is_clipped_to_a_small_box():
    # Box 10..18 is narrower than the 24 px centre region: only the location at 12 (x=1) inside it counts.
    t = assign(torch.tensor([[10.0, 10.0, 18.0, 18.0]]), torch.tensor([0]), **ONE_LEVEL, sizes_of_interest=(1000,))
    assert (t.labels < 3).nonzero().flatten().tolist() == [loc_index(1, 1)]


def test_size_of_interest_sends_a_box_to_one_level():
    # Two levels (stride 8: 8x8, stride 16: 4x4). A 64x64 box has max(l,t,r,b) >= 28 at its centre locations.
    shapes, strides = [(8, 8), (4, 4)], (8, 16)
    box, cls = torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([1])
    low = assign(box, cls, shapes, strides, 3, sizes_of_interest=(16,))
    assert (low.labels[:64] < 3).sum() == 0 and (low.labels[64:] < 3).sum() > 0
    high = assign(box, cls, shapes, strides, 3, sizes_of_interest=(100,))
    assert (high.labels[:64] < 3).sum() > 0 and (high.labels[64:] < 3).sum() == 0
    torch.testing.assert_close(low.strides[64:], torch.full((16,), 16.0))


def test_ambiguous_location_takes_the_smallest_box():
    big = [0.0, 0.0, 64.0, 64.0]
    small = [20.0, 20.0, 40.0, 40.0]
    for order in ([big, small], [small, big]):
        t = assign(torch.tensor(order), torch.tensor([0, 1] if order[0] is big else [1, 0]), **ONE_LEVEL, sizes_of_interest=(1000,))
        i = loc_index(3, 3)  # (28, 28) lies in both centre regions
        assert t.labels[i] == 1
        assert order[int(t.gt_index[i])] is small


def test_no_boxes_gives_all_background():
    t = assign(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), **ONE_LEVEL)
    assert (t.labels == 3).all() and (t.gt_index == -1).all() and t.ctrness.sum() == 0


def test_centerness_target_formula():
    reg = torch.tensor([[1.0, 2.0, 3.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    torch.testing.assert_close(centerness_target(reg), torch.tensor([math.sqrt(1 / 3), 1.0]))


def test_focal_loss_hand_computed():
    # One location, 2 classes, logits 0: p = 0.5. Positive class 0: 0.25 * 0.25 * ln2; negative: 0.75 * 0.25 * ln2.
    loss = losses.focal_loss(torch.zeros((1, 2)), torch.tensor([0]), num_classes=2, num_pos=1)
    torch.testing.assert_close(loss, torch.tensor((0.25 + 0.75) * 0.25 * math.log(2)))
    # Background label: both classes negative; num_pos 0 normalises by 1.
    loss = losses.focal_loss(torch.zeros((1, 2)), torch.tensor([2]), num_classes=2, num_pos=0)
    torch.testing.assert_close(loss, torch.tensor(2 * 0.75 * 0.25 * math.log(2)))


def test_giou_loss_hand_computed():
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # box (-1,-1,1,1), area 4
    assert losses.giou_loss(target, target, torch.ones(1)).item() == pytest.approx(0.0)
    # Prediction (-1,-1,0,0), area 1: IoU 1/4, hull = target -> GIoU 1/4, loss 3/4.
    pred = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert losses.giou_loss(pred, target, torch.ones(1)).item() == pytest.approx(0.75)
    # Weighted mean: weights 3 and 1 on losses 0.75 and 0 -> 0.5625.
    both = losses.giou_loss(torch.cat((pred, target)), torch.cat((target, target)), torch.tensor([3.0, 1.0]))
    assert both.item() == pytest.approx(0.5625)


def test_ctrness_loss_hand_computed():
    loss = losses.ctrness_loss(torch.zeros(2), torch.tensor([1.0, 0.5]), num_pos=2)
    assert loss.item() == pytest.approx(math.log(2))


def test_mask_targets_crop_and_resize():
    mask = torch.zeros((1, 16, 16), dtype=torch.bool)
    mask[0, 4:12, 4:8] = True  # left half of the box 4..12
    target = losses.mask_targets(mask, torch.tensor([[4.0, 4.0, 12.0, 12.0]]), resolution=8)
    expected = torch.zeros((1, 8, 8))
    expected[0, :, :4] = 1
    torch.testing.assert_close(target, expected)


def test_mask_loss_is_weighted_mean_of_per_roi_bce():
    bases = torch.zeros((1, 4, 8, 8))  # zero bases -> logits 0 -> BCE ln2 whatever the target
    rois = torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0], [0.0, 4.0, 4.0, 20.0, 20.0]])
    attns = torch.zeros((2, 4 * 2 * 2))
    targets = torch.stack((torch.ones(4, 4), torch.zeros(4, 4)))
    loss = losses.mask_loss(bases, rois, attns, targets, torch.tensor([0.2, 0.6]), resolution=4, spatial_scale=0.25)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    # A constant basis b with uniform attention gives logit b everywhere.
    bases = torch.full((1, 4, 8, 8), 2.0)
    loss = losses.mask_loss(bases, rois, attns, targets, torch.tensor([1.0, 3.0]), resolution=4, spatial_scale=0.25)
    want = (F.softplus(torch.tensor(-2.0)) * 1 + F.softplus(torch.tensor(2.0)) * 3) / 4
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_make_trainable_keeps_the_shipped_keys():
    model = make_trainable(build_model("lite"))
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    state = export_state(model)
    assert list(state) == list(build_model("lite").state_dict())


def test_load_example_crops_and_keeps_boxes_consistent():
    ex = load_example(1, 0, 128, 96)
    assert ex.image.shape == (3, 96, 96) and ex.image.dtype == torch.uint8
    assert len(ex.boxes) == len(ex.classes) == len(ex.masks)
    for box, mask in zip(ex.boxes, ex.masks):
        ys, xs = mask.nonzero(as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    again = load_example(1, 0, 128, 96)
    assert torch.equal(ex.image, again.image)


def test_two_iteration_run_resumes_and_ships_loadable_weights(tmp_path, monkeypatch):
    monkeypatch.setattr("pytest_blendmask.train.evaluate.coco_ap", lambda *a, **k: {"num_images": 0, "bbox_AP": 0.0, "segm_AP": 0.0})
    common = dict(iters=2, batch=2, gen_size=64, crop=64, warmup=1, log_every=1, ckpt_every=1, out=str(tmp_path), command="test")
    cfg = TrainConfig(**{**common, "iters": 1})
    # First run stops after iteration 1 of a 2-iteration schedule: emulate by a 1-iteration run's checkpoint.
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 1
    card = train(TrainConfig(**common), resume=str(tmp_path / "checkpoint.pt"))
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["iteration"] == 2
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" for r in records)
    assert [r["iter"] for r in records if "cls" in r] == [1, 2]
    assert all(math.isfinite(r["total"]) for r in records if "total" in r)
    assert card["training"]["iterations"] == 2 and card["command"] == "test"
    assert json.loads((tmp_path / "lite.json").read_text())["data"]["generator_version"] >= 1
    model = load_weights(build_model("lite"), tmp_path / "lite.safetensors")
    assert model.proposal_generator.fcos_head.cls_logits.weight.shape[0] == 6


def test_progress_eval_scores_a_train_mode_model_and_leaves_it_training(tmp_path):
    split = ensure_split("unit", num_images=2, seed=3, size=128, root=tmp_path)
    model = make_trainable(build_model("lite")).train()
    ap = coco_ap(model, limit=1, split_path=split)
    assert model.training and any(m.training for m in model.modules())
    assert ap["num_images"] == 1
    assert {"bbox_AP", "bbox_AP50", "segm_AP", "segm_AP75"} <= set(ap) and "target" not in ap
    assert all(0.0 <= ap[k] <= 100.0 for k in ("bbox_AP", "segm_AP"))
