"""The proof that our model is BlendMask: AdelaiDet's own R_50 output, reproduced."""
from __future__ import annotations

import pytest
import torch

from pytest_blendmask.model import build_model
from pytest_blendmask.model.weights import adapt_official_keys
from pytest_blendmask.precision.match import mask_iou_pairs, match_boxes

from .golden import load_golden

RAW_REL_L2 = 1e-4
MIN_MATCHED = 95
MATCH_IOU = 0.99
SCORE_TOL = 1e-4
MASK_IOU = 0.98


@pytest.fixture(scope="module")
def golden():
    return load_golden()


@pytest.fixture(scope="module")
def golden_run(golden):
    model = build_model("R_50")
    model.load_state_dict(adapt_official_keys(golden.state_dict()), strict=True)
    batch, sizes = model.preprocess([golden.image])
    with torch.no_grad():
        raw = model.forward_raw(batch)
    dets = model.postprocess(raw, sizes, [(golden.meta["height"], golden.meta["width"])])[0]
    return raw, dets


def test_rebuilt_weights_equal_the_reference_weights(golden):
    state = golden.state_dict()
    sums = torch.tensor([state[k].double().abs().sum().item() for k, _ in golden.keys_and_shapes()], dtype=torch.float64)
    assert len(state) == 379
    torch.testing.assert_close(sums, torch.from_numpy(golden.arrays["weights/abs_sum"]), rtol=1e-6, atol=1e-6)


def test_raw_tensors_match_adelaidet(golden, golden_run):
    raw, _ = golden_run
    expected = {k[len("raw/"):] for k in golden.arrays.files if k.startswith("raw/")}
    assert set(raw) == expected
    for name, ours in raw.items():
        ref = torch.from_numpy(golden.arrays[f"raw/{name}"])
        assert ours.shape == ref.shape, name
        rel_l2 = float((ours - ref).norm() / ref.norm())
        assert rel_l2 <= RAW_REL_L2, f"{name}: relative L2 {rel_l2:.3g} > {RAW_REL_L2}"


def test_detections_and_masks_match_adelaidet(golden, golden_run):
    _, dets = golden_run
    ref_boxes = torch.from_numpy(golden.arrays["det/boxes"])
    ref_classes = torch.from_numpy(golden.arrays["det/classes"])
    matching = match_boxes(ref_boxes, dets["boxes"], MATCH_IOU, ref_classes, dets["classes"])
    assert len(matching.ref_index) >= MIN_MATCHED, f"only {len(matching.ref_index)} of {len(ref_boxes)} matched"
    score_err = (torch.from_numpy(golden.arrays["det/scores"])[matching.ref_index] - dets["scores"][matching.dut_index]).abs()
    assert score_err.max() <= SCORE_TOL
    mask_iou = mask_iou_pairs(golden.masks()[matching.ref_index], dets["masks"][matching.dut_index])
    assert mask_iou.min() >= MASK_IOU, f"worst mask IoU {mask_iou.min():.4f}"
