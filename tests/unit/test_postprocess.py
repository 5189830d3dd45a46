"""Post-processing on hand-built raw tensors: decode, NMS, top-k, blender, paste, clip."""
from __future__ import annotations

import pytest
import torch

from pytest_blendmask.model import build_model
from pytest_blendmask.model.decode import locations

SIZE = 64  # lite: P3 8x8 (stride 8), P4 4x4, P5 2x2, P6 1x1, P7 1x1
BACKGROUND = -20.0  # sigmoid(-20) ~ 2e-9: below any threshold


@pytest.fixture(scope="module")
def model():
    return build_model("lite")


def empty_raw(model, size: int = SIZE) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    raw = {"bases": torch.zeros(1, cfg.num_bases, size // 4, size // 4)}
    for level, stride in zip(cfg.fpn_levels, cfg.fpn_strides):
        h = w = -(-size // stride)
        raw[f"logits_p{level}"] = torch.full((1, cfg.num_classes, h, w), BACKGROUND)
        raw[f"bbox_reg_p{level}"] = torch.zeros(1, 4, h, w)
        raw[f"ctrness_p{level}"] = torch.full((1, 1, h, w), 20.0)
        raw[f"top_feats_p{level}"] = torch.zeros(1, cfg.attn_channels, h, w)
    return raw


def put_detection(raw, x: int, y: int, cls: int, ltrb_px: tuple[float, ...], logit: float = 5.0, level: int = 3) -> None:
    """A detection at P3 cell (x, y); its box extends ``ltrb_px`` pixels from the cell centre."""
    stride = 2**level
    raw[f"logits_p{level}"][0, cls, y, x] = logit
    raw[f"bbox_reg_p{level}"][0, :, y, x] = torch.tensor(ltrb_px) / stride


def test_no_detection_gives_zero_instances_with_the_right_shapes(model):
    det = model.postprocess(empty_raw(model), [(SIZE, SIZE)])[0]
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["classes"].shape == (0,)
    assert det["masks"].shape == (0, SIZE, SIZE) and det["masks"].dtype == torch.bool
    assert det["classes"].dtype == torch.int64


def test_box_is_decoded_from_the_cell_centre_and_score_is_sqrt_of_cls_times_ctr(model):
    raw = empty_raw(model)
    put_detection(raw, 3, 2, cls=4, ltrb_px=(8, 4, 12, 16), logit=1.0)
    raw["ctrness_p3"][0, 0, 2, 3] = 0.0
    det = model.postprocess(raw, [(SIZE, SIZE)])[0]
    cx, cy = 3 * 8 + 4, 2 * 8 + 4
    torch.testing.assert_close(det["boxes"], torch.tensor([[cx - 8.0, cy - 4.0, cx + 12.0, cy + 16.0]]))
    torch.testing.assert_close(det["scores"], (torch.sigmoid(torch.tensor([1.0])) * 0.5).sqrt())
    assert det["classes"].tolist() == [4]


def test_duplicate_box_is_removed_by_nms_but_another_class_is_kept(model):
    raw = empty_raw(model)
    put_detection(raw, 3, 3, cls=1, ltrb_px=(12, 12, 12, 12), logit=5.0)
    put_detection(raw, 4, 3, cls=1, ltrb_px=(20, 12, 4, 12), logit=4.0)  # same box from the next cell
    put_detection(raw, 4, 4, cls=2, ltrb_px=(20, 20, 4, 4), logit=3.0)  # same box, other class
    det = model.postprocess(raw, [(SIZE, SIZE)])[0]
    assert det["classes"].tolist() == [1, 2]
    assert det["scores"][0] > det["scores"][1]


def test_at_most_post_nms_topk_detections_are_kept_by_score(model):
    raw = empty_raw(model, size=256)  # P3 32x32: 1024 cells, disjoint 4px boxes
    raw["logits_p3"][0, 0] = torch.linspace(-2.0, 6.0, 32 * 32).view(32, 32)
    raw["bbox_reg_p3"][0] = 0.25
    det = model.postprocess(raw, [(256, 256)])[0]
    assert len(det["scores"]) == model.cfg.post_nms_topk
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])
    expected_min = (torch.sigmoid(torch.linspace(-2.0, 6.0, 1024)[-100]) * torch.sigmoid(torch.tensor(20.0))).sqrt()
    torch.testing.assert_close(det["scores"].min(), expected_min)


def test_mask_is_pasted_where_its_box_is(model):
    raw = empty_raw(model)
    raw["bases"].fill_(10.0)  # blended logit 10 everywhere inside the RoI -> mask ~1
    put_detection(raw, 3, 3, cls=0, ltrb_px=(12, 8, 4, 16))  # box (16, 20) - (32, 44)
    det = model.postprocess(raw, [(SIZE, SIZE)])[0]
    expected = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    expected[20:44, 16:32] = True
    assert torch.equal(det["masks"][0], expected)


def test_softmax_over_bases_selects_the_attended_basis(model):
    raw = empty_raw(model)
    raw["bases"][0, 0] = 10.0  # basis 0 says foreground, the others background
    raw["bases"][0, 1:] = -10.0
    put_detection(raw, 3, 3, cls=0, ltrb_px=(12, 12, 12, 12))
    put_detection(raw, 5, 5, cls=0, ltrb_px=(12, 12, 12, 12), logit=4.0)
    a = model.cfg.attn_size**2
    raw["top_feats_p3"][0, :a, 3, 3] = 20.0  # first instance attends to basis 0
    raw["top_feats_p3"][0, a : 2 * a, 5, 5] = 20.0  # second to basis 1
    det = model.postprocess(raw, [(SIZE, SIZE)])[0]
    assert det["masks"][0].sum() == 24 * 24 and det["masks"][1].sum() == 0


def test_boxes_are_scaled_to_the_output_size_and_clipped(model):
    raw = empty_raw(model)
    raw["bases"].fill_(10.0)
    put_detection(raw, 7, 0, cls=0, ltrb_px=(4, 4, 30, 20))  # spills over the right and top edges
    det = model.postprocess(raw, [(SIZE, SIZE)], [(2 * SIZE, 3 * SIZE)])[0]
    cx, cy = 7 * 8 + 4, 4
    expected = torch.tensor([[(cx - 4) * 3.0, 0.0, 3.0 * SIZE, (cy + 20) * 2.0]])
    torch.testing.assert_close(det["boxes"], expected)
    assert det["masks"].shape == (1, 2 * SIZE, 3 * SIZE)


def test_a_box_left_empty_by_clipping_is_dropped(model):
    raw = empty_raw(model)
    put_detection(raw, 0, 0, cls=0, ltrb_px=(30, 30, -10, 10))  # x2 < 0 after decode: entirely left of the image
    assert len(model.postprocess(raw, [(SIZE, SIZE)])[0]["boxes"]) == 0


def test_locations_are_cell_centres_in_row_major_order():
    locs = locations(2, 3, 16, torch.device("cpu"))
    assert locs.tolist() == [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]
