"""Detection matching and the per-pair detection metrics, against hand-computed values."""
from __future__ import annotations

import pytest
import torch

from pytest_blendmask.precision.match import (
    box_abs_errors,
    detection_metrics,
    mask_dice_pairs,
    mask_iou_pairs,
    match_boxes,
    score_errors,
    top_k_class_overlap,
)


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_match_boxes_pairs_best_iou_first_one_to_one():
    ref = boxes((0, 0, 10, 10), (20, 20, 30, 30))
    dut = boxes((21, 20, 31, 30), (0, 0, 10, 10), (0, 0, 10, 11))
    matching = match_boxes(ref, dut, 0.5)
    assert matching.ref_index.tolist() == [0, 1] and matching.dut_index.tolist() == [1, 0]
    assert (matching.unmatched_ref, matching.unmatched_dut) == (0, 1)


def test_same_class_pairs_match_before_cross_class_ones():
    # One object scored as two classes with the same box, as a detector does; the device's
    # circle box is off by rounding towards the reference's ring box. IoU alone would pair
    # circle with ring and ring with circle.
    ref = boxes((0, 0, 10, 10), (0, 0, 10, 10.001))
    dut = boxes((0, 0, 10, 10.0009), (0, 0, 10, 10))
    ref_classes, dut_classes = torch.tensor([0, 4]), torch.tensor([0, 4])
    assert match_boxes(ref, dut, 0.5).dut_index.tolist() == [1, 0]
    matching = match_boxes(ref, dut, 0.5, ref_classes, dut_classes, cross_class=True)
    assert sorted(zip(matching.ref_index.tolist(), matching.dut_index.tolist())) == [(0, 0), (1, 1)]


def test_cross_class_decides_whether_a_class_flip_is_a_pair():
    ref, dut = boxes((0, 0, 10, 10), (20, 20, 30, 30)), boxes((0, 0, 10, 10), (20, 20, 30, 30))
    ref_classes, dut_classes = torch.tensor([1, 2]), torch.tensor([1, 3])
    strict = match_boxes(ref, dut, 0.5, ref_classes, dut_classes)
    assert strict.ref_index.tolist() == [0] and (strict.unmatched_ref, strict.unmatched_dut) == (1, 1)
    flips = match_boxes(ref, dut, 0.5, ref_classes, dut_classes, cross_class=True)
    assert sorted(zip(flips.ref_index.tolist(), flips.dut_index.tolist())) == [(0, 0), (1, 1)]


def test_mask_iou_and_dice_by_hand():
    ref = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]], dtype=torch.bool)
    dut = torch.tensor([[[0, 1, 1, 0]], [[0, 0, 0, 0]]], dtype=torch.bool)
    # pair 0: intersection 1, union 3, sizes 2 + 2; pair 1: both empty.
    assert mask_iou_pairs(ref, dut).tolist() == pytest.approx([1 / 3, 1.0])
    assert mask_dice_pairs(ref, dut).tolist() == pytest.approx([2 * 1 / 4, 1.0])


def test_box_errors_in_pixels_and_normalised_by_image_side():
    ref, dut = boxes((10, 20, 50, 60)), boxes((12, 20, 50, 66))
    assert box_abs_errors(ref, dut).tolist() == [[2, 0, 0, 6]]
    # x by the width (200), y by the height (100).
    assert box_abs_errors(ref, dut, (100, 200))[0].tolist() == pytest.approx([0.01, 0, 0, 0.06])


def test_score_errors_absolute_and_relative_to_the_reference():
    absolute, relative = score_errors(torch.tensor([0.5, 0.8]), torch.tensor([0.51, 0.8]))
    assert absolute.tolist() == pytest.approx([0.01, 0.0], abs=1e-7)
    assert relative.tolist() == pytest.approx([0.02, 0.0], abs=1e-6)


@pytest.mark.parametrize(
    "ref, dut, k, expected",
    [
        # classes ranked by their best score: ref 3 > 1 > 2, dut 3 > 2 > 0.
        pytest.param(([0.9, 0.8, 0.1, 0.7], [3, 1, 1, 2]), ([0.9, 0.6, 0.5], [3, 2, 0]), 2, 1 / 2, id="top2"),
        pytest.param(([0.9, 0.8, 0.7], [3, 1, 2]), ([0.9, 0.6, 0.5], [3, 2, 0]), 5, 2 / 3, id="fewer-classes-than-k"),
        pytest.param(([], []), ([], []), 5, 1.0, id="both-empty"),
        pytest.param(([], []), ([0.5], [1]), 5, 0.0, id="only-dut-detects"),
    ],
)
def test_top_k_class_overlap(ref, dut, k, expected):
    tensors = [torch.tensor(v, dtype=dtype) for v, dtype in zip((*ref, *dut), (torch.float32, torch.long) * 2)]
    assert top_k_class_overlap(*tensors, k=k) == pytest.approx(expected)


def detections(box_rows, scores, classes, masks) -> dict[str, torch.Tensor]:
    return {
        "boxes": boxes(*box_rows),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "classes": torch.tensor(classes, dtype=torch.long),
        "masks": torch.tensor(masks, dtype=torch.bool).reshape(len(scores), 2, 4),
    }


def test_detection_metrics_by_hand():
    # Image 2 x 4 pixels. Ref detection 0 is found shifted by one pixel with a flipped
    # class and a slightly lower score; ref detection 1 is lost; the dut adds a far box.
    ref = detections(
        [(0, 0, 2, 2), (2, 0, 4, 2)], [0.8, 0.5], [1, 2],
        [[[1, 1, 0, 0], [1, 1, 0, 0]], [[0, 0, 1, 1], [0, 0, 1, 1]]],
    )
    dut = detections(
        [(0, 0, 2, 1), (100, 100, 110, 110)], [0.76, 0.4], [3, 2],
        [[[1, 1, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]],
    )
    m = detection_metrics(ref, dut, iou_threshold=0.5)
    assert (m.num_ref, m.num_dut, m.matched) == (2, 2, 1)
    assert m.unmatched_fraction == pytest.approx(2 / 4)
    assert (m.box_abs_error_px, m.box_abs_error_px_mean) == pytest.approx((1.0, 0.25))
    assert (m.box_error, m.box_error_mean) == pytest.approx((1 / 2, 1 / 8))  # y error / height 2
    assert m.score_abs_error == pytest.approx(0.04, abs=1e-6)
    assert (m.score_relative_error, m.score_relative_error_mean) == pytest.approx((0.05, 0.05), abs=1e-6)
    assert m.class_agreement == 0.0
    # top-5 by best score: ref {1, 2}, dut {3, 2}.
    assert m.top5_class_overlap == pytest.approx(1 / 2)
    assert (m.mask_iou, m.mask_iou_min, m.dice, m.dice_min) == pytest.approx((0.5, 0.5, 2 / 3, 2 / 3))


def test_detection_metrics_with_nothing_detected_on_either_side_agree_fully():
    empty = detections([], [], [], [])
    m = detection_metrics(empty, empty, 0.5)
    assert (m.matched, m.unmatched_fraction, m.box_error, m.class_agreement, m.mask_iou, m.top5_class_overlap) == (
        0, 0.0, 0.0, 1.0, 1.0, 1.0,
    )


def test_detection_metrics_with_everything_lost_agree_not_at_all():
    ref = detections([(0, 0, 2, 2)], [0.8], [1], [[[1, 1, 0, 0], [1, 1, 0, 0]]])
    m = detection_metrics(ref, detections([], [], [], []), 0.5)
    assert (m.matched, m.unmatched_fraction, m.class_agreement, m.mask_iou, m.top5_class_overlap) == (0, 1.0, 0.0, 0.0, 0.0)


def test_detection_metrics_pair_several_classes_at_one_box_by_class():
    # The shipped model scores one object as several classes with near-identical boxes; a
    # device that moves them by rounding noise must still agree fully. Best-IoU-first alone
    # pairs the reference circle with the device's ring here (IoU 1.0).
    masks = [[[1, 1, 0, 0], [1, 1, 0, 0]]] * 2
    ref = detections([(0, 0, 10, 10), (0, 0, 10, 10.001)], [0.5, 0.3], [0, 4], masks)
    dut = detections([(0, 0, 10, 10.0009), (0, 0, 10, 10)], [0.5, 0.3], [0, 4], masks)
    m = detection_metrics(ref, dut, 0.5)
    assert (m.matched, m.class_agreement, m.score_relative_error) == (2, 1.0, 0.0)
