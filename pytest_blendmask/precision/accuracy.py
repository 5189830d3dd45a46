"""Task accuracy: COCO box and mask AP of any target on a COCO-format split (pycocotools).

``detections_to_coco`` turns the model's per-image detections into COCO result entries,
``coco_ap`` scores result entries against ground truth with ``COCOeval``, and
``AccuracyResult`` holds a target's scores (``pytest_blendmask.evaluation`` runs a target
over a split and makes one). All AP values are
COCO's, times 100: AP is the mean over IoU thresholds 0.50:0.05:0.95 and over categories of
the 101-point interpolated precision, with at most 100 detections per image.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from ..data import category_id, encode_mask

IouType = Literal["bbox", "segm"]

MAX_DETS_PER_IMAGE = 100  # COCO's cap, COCOeval's largest maxDets
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


@dataclass(frozen=True)
class AccuracyResult:
    """COCO AP of one target on one split (AP values x 100, ``seconds`` wall clock).

    ``seconds`` covers preprocessing, the target's run and host post-processing of every
    image; COCOeval itself is not timed, since it does not depend on the target.
    """

    target: str
    num_images: int
    bbox_AP: float
    bbox_AP50: float
    bbox_AP75: float
    segm_AP: float
    segm_AP50: float
    segm_AP75: float
    seconds: float


def detections_to_coco(
    dets: dict[str, Tensor], image_id: int, max_dets: int = MAX_DETS_PER_IMAGE,
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO result entries of one image's detections, the ``max_dets`` highest-scoring ones.

    The model keeps detections tied with its 100th score, so it can return more than 100;
    keeping them all would let that image count extra detections.

    Args:
        dets: ``boxes`` Tensor[M, 4] xyxy in image pixels, ``scores`` Tensor[M],
            ``classes`` Tensor[M] 0-based class ids, ``masks`` bool Tensor[M, H, W].
        image_id: the COCO image id.
        category_ids: the category id of each class id (``data.dataset.class_map``); class
            id + 1 (the synthetic splits' ids) when None.

    Returns:
        list[dict]: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] with
        w = x2 - x1 and h = y2 - y1, ``score``, ``segmentation`` (compressed RLE), best first.
    """
    # Stable sort: equal scores keep the model's order, so the cut is deterministic.
    order = torch.argsort(dets["scores"], descending=True, stable=True)[:max_dets]
    boxes = dets["boxes"][order].float().cpu()
    scores = dets["scores"][order].float().cpu()
    classes = dets["classes"][order].cpu()
    masks = dets["masks"][order].cpu().numpy()
    results = []
    for box, score, cls, mask in zip(boxes.tolist(), scores.tolist(), classes.tolist(), masks):
        x1, y1, x2, y2 = box
        results.append({
            "image_id": image_id,
            "category_id": category_id(int(cls)) if category_ids is None else int(category_ids[int(cls)]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
            "segmentation": encode_mask(mask),
        })
    return results


def _quiet_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over ``dataset``, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_ap(
    gt: dict[str, Any], results: list[dict[str, Any]], iou_type: IouType, image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """COCOeval summary statistics of ``results`` against the ground truth ``gt``.

    Args:
        gt: a COCO dataset dict (``images``, ``annotations``, ``categories``).
        results: entries as made by ``detections_to_coco``; the key ``iou_type`` does not
            use is dropped, so that a detection's ``area`` (which decides its small/medium/
            large range) comes from the mask for ``segm`` and from the box for ``bbox``.
        iou_type: ``"bbox"`` (box IoU) or ``"segm"`` (mask IoU).
        image_ids: the images to evaluate; all of ``gt``'s when None. Ground truth of the
            other images is ignored, so a subset is scored as if it were the whole split.

    Returns:
        dict[str, float]: AP, AP50, AP75, APs, APm, APl, each x 100 (0 when there are no
        detections); NaN where COCO leaves a value undefined (-1: no ground truth in that
        area range).
    """
    gt_coco = _quiet_coco(gt)
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    kept = [{k: v for k, v in r.items() if k != drop} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        if kept:
            dt_coco = gt_coco.loadRes(kept)
        else:
            # loadRes indexes results[0]; an empty result set is an index of no annotations.
            dt_coco = _quiet_coco({"images": gt["images"], "categories": gt["categories"], "annotations": []})
        evaluator = COCOeval(gt_coco, dt_coco, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (math.nan if v < 0 else float(v) * 100) for name, v in zip(STAT_NAMES, evaluator.stats)}
