"""A target's detections of a list of images or of a split, and their COCO box and mask AP.

What the detection and accuracy levels measure: it runs a target (``targets``) and scores
what it found with the metrics of ``precision.accuracy``, which is why it sits above both.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data import CalibrationSet, ensure_split, load_split, read_image
from .data.dataset import CocoDataset, Letterboxed, dataset_calibration, load_images, to_original
from .precision.accuracy import AccuracyResult, coco_ap, detections_to_coco
from .targets import LoadContext, Runner, Target, parse_target


@dataclass(frozen=True)
class ImagesRun:
    """A target's detections of a list of images, in order.

    ``detections`` come from the target's whole pipeline (``Target.detect``);
    ``host_detections`` are the reference code's decoding of its raw tensors on the host,
    the same list for a target that post-processes there. Images went through the target
    ``batch_size`` at a time, so a batch mix-up shows within consecutive windows.
    """

    target: str
    batch_size: int
    detections: list[dict[str, Tensor]]
    host_detections: list[dict[str, Tensor]]
    seconds: float


def run_images(model: nn.Module, target: Target, runner: Runner | None, images: Sequence[Tensor],
               batch_size: int) -> ImagesRun:
    """Run ``target`` over ``images`` (``[3, H, W]`` uint8 BGR), preprocessed by ``model`` on the CPU,
    ``batch_size`` at a time; ``runner`` is the target loaded, or None to load it once here."""
    detections: list[dict[str, Tensor]] = []
    host_detections: list[dict[str, Tensor]] = []
    decoded_on_host = True  # the target post-processes on the host: one list serves both
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        batch, sizes = model.preprocess(list(images[first : first + batch_size]))
        if runner is None:
            # Loaded once, for all images; a compiled target takes its input size from the batch.
            runner = target.load(model, LoadContext(tuple(batch.shape[-2:])))
        found, decoded = target.detect(model, runner, batch, sizes)
        detections += found
        host_detections += decoded
        decoded_on_host &= decoded is found
    return ImagesRun(target.id, batch_size, detections, detections if decoded_on_host else host_detections,
                     time.perf_counter() - start)


@dataclass(frozen=True)
class SplitRun:
    """``run`` over the first images (by id) of a COCO-format split, with what scoring needs."""

    coco: dict[str, Any]  # the split's annotations
    image_ids: list[int]
    run: ImagesRun
    category_ids: tuple[int, ...] | None = None  # of each class id; class id + 1 when None (data.dataset.class_map)


def run_split(
    model: nn.Module,
    target: Target | str,
    split_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 4,
    runner: Runner | None = None,
) -> SplitRun:
    """Run ``target`` over the first ``limit`` images (by id) of a split (``run_images``).

    Args:
        model: the CPU reference (eval mode): its preprocessing and, for the host
            decoding, its post-processing.
        target: the target (or its spec); without ``runner`` it is loaded once for the split.
        split_path: a split directory (``ensure_split``); the cached evaluation split when None.
        limit: only the first ``limit`` images; all when None.
        batch_size: images per call of the target.
        runner: the target already loaded (the session's fixtures share one), or a stand-in
            for tests (a compiled target's: batch -> raw tensors).

    Raises:
        ValueError: a bad target spec, or one that cannot run on this machine (the reason).
    """
    spec = parse_target(target) if isinstance(target, str) else target
    if runner is None:
        reason = spec.skip_reason()
        if reason is not None:
            raise ValueError(f"target {spec.id} cannot run here: {reason}")
    split = load_split(split_path if split_path is not None else ensure_split())
    images = sorted(split.coco["images"], key=lambda im: im["id"])[:limit]
    tensors = [torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in split.image_paths[: len(images)]]
    return SplitRun(split.coco, [im["id"] for im in images], run_images(model, spec, runner, tensors, batch_size))


@dataclass(frozen=True)
class DatasetEval:
    """``--bm-dataset`` made ready for the levels: its evaluation images (``CocoDataset.split``,
    at most ``limit``), letterboxed to ``input_hw`` with the model's pixel mean as padding, and
    the category id of each model class (``class_map``)."""

    dataset: CocoDataset
    input_hw: tuple[int, int]
    category_ids: tuple[int, ...] | None
    limit: int | None = None
    pad_bgr: tuple[float, ...] = (0.0, 0.0, 0.0)

    @property
    def images(self) -> tuple[dict[str, Any], ...]:
        """The evaluation images' entries, in image-id order."""
        return self.dataset.split(self.limit)[1]

    def letterboxed(self, count: int | None = None) -> list[Letterboxed]:
        """The first ``count`` evaluation images (all when None), letterboxed."""
        return load_images(self.dataset, self.images[:count], self.input_hw, self.pad_bgr)

    def calibration(self) -> CalibrationSet:
        """The dataset's calibration images, which int8 targets and their floor share."""
        return dataset_calibration(self.dataset, self.pad_bgr)


def run_dataset(model: nn.Module, target: Target, data: DatasetEval, runner: Runner | None,
                limit: int | None = None, batch_size: int = 4) -> SplitRun:
    """Run ``target`` over the first ``limit`` evaluation images of ``data`` (all when None), letterboxed,
    with the detections mapped back to each image's own pixels (``to_original``), where its ground truth is."""
    boxed = data.letterboxed(limit)
    run = run_images(model, target, runner, [b.image for b in boxed], batch_size)

    def original(found: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        return [to_original(d, b.content_hw, b.original_hw) for d, b in zip(found, boxed)]

    detections = original(run.detections)
    host = detections if run.host_detections is run.detections else original(run.host_detections)
    return SplitRun(data.dataset.coco, [im["id"] for im in data.images[: len(boxed)]],
                    dataclasses.replace(run, detections=detections, host_detections=host), data.category_ids)


def score(run: SplitRun) -> AccuracyResult:
    """COCO box and mask AP of a ``SplitRun``'s detections (the target's whole pipeline)."""
    results: list[dict[str, Any]] = []
    for image_id, dets in zip(run.image_ids, run.run.detections):
        results += detections_to_coco(dets, image_id, category_ids=run.category_ids)
    bbox = coco_ap(run.coco, results, "bbox", run.image_ids)
    segm = coco_ap(run.coco, results, "segm", run.image_ids)
    return AccuracyResult(
        target=run.run.target,
        num_images=len(run.image_ids),
        bbox_AP=bbox["AP"],
        bbox_AP50=bbox["AP50"],
        bbox_AP75=bbox["AP75"],
        segm_AP=segm["AP"],
        segm_AP50=segm["AP50"],
        segm_AP75=segm["AP75"],
        seconds=run.run.seconds,
    )


def evaluate(
    model: nn.Module,
    target: Target | str,
    split_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 4,
    run_raw: Runner | None = None,
) -> AccuracyResult:
    """COCO box and mask AP of ``model`` run on ``target`` over a split: ``score(run_split(...))``.

    An eager target post-processes on its device, a compiled one on the host with the CPU
    model's code (``Target.detect``); ``run_raw`` is ``run_split``'s ``runner``.
    """
    return score(run_split(model, target, split_path, limit, batch_size, run_raw))
