"""COCO box and mask AP of a target over a COCO-format split: the accuracy level's measurement.

It runs a target (``targets``) and scores what it found with the metrics of
``precision.accuracy``, which is why it sits above both.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import ensure_split, load_split, read_image
from .precision.accuracy import AccuracyResult, coco_ap, detections_to_coco
from .targets import LoadContext, Runner, Target, parse_target


def evaluate(
    model: nn.Module,
    target: Target | str,
    split_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 4,
    run_raw: Runner | None = None,
) -> AccuracyResult:
    """COCO box and mask AP of ``model`` run on ``target`` over a split.

    Each batch is preprocessed on the CPU, run by ``run_raw`` (default: ``target`` loaded
    once for the whole split, e.g. a copy of the model on its device under its autocast), and
    post-processed on the host in float32 by the CPU model, so only the raw network differs
    between targets.

    Args:
        model: a BlendMask on the CPU, eval mode.
        target: the target (or its spec); it names the result and, without ``run_raw``, runs the model.
        split_path: a split directory (``ensure_split``); the cached evaluation split when None.
        limit: evaluate only the first ``limit`` images (by image id); all when None.
        batch_size: images per ``run_raw`` call.
        run_raw: ``batch Tensor[N, 3, H, W] -> raw dict``, a target already loaded (the
            session's fixtures share one) or a stand-in for tests.

    Raises:
        ValueError: a bad target spec, or one that cannot run on this machine (the reason).
    """
    spec = parse_target(target) if isinstance(target, str) else target
    if run_raw is None:
        reason = spec.skip_reason()
        if reason is not None:
            raise ValueError(f"target {spec.id} cannot run here: {reason}")
    split = load_split(split_path if split_path is not None else ensure_split())
    images = sorted(split.coco["images"], key=lambda im: im["id"])[:limit]
    paths = split.image_paths[: len(images)]

    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        chunk = slice(first, first + batch_size)
        tensors = [torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in paths[chunk]]
        batch, sizes = model.preprocess(tensors)
        if run_raw is None:
            # Loaded once, for the whole split; a compiled target takes its input size from the batch.
            run_raw = spec.load(model, LoadContext(tuple(batch.shape[-2:])))
        raw = {name: t.float().cpu() for name, t in run_raw(batch).items()}
        for image, dets in zip(images[chunk], model.postprocess(raw, sizes)):
            results += detections_to_coco(dets, image["id"])
    seconds = time.perf_counter() - start

    image_ids = [im["id"] for im in images]
    bbox = coco_ap(split.coco, results, "bbox", image_ids)
    segm = coco_ap(split.coco, results, "segm", image_ids)
    return AccuracyResult(
        target=spec.id,
        num_images=len(images),
        bbox_AP=bbox["AP"],
        bbox_AP50=bbox["AP50"],
        bbox_AP75=bbox["AP75"],
        segm_AP=segm["AP"],
        segm_AP50=segm["AP50"],
        segm_AP75=segm["AP75"],
        seconds=seconds,
    )
