"""A batch of a target's detections against the reference's: per image, per class, image by image.

``detection_metrics`` (``match.py``) compares one image with one image. A batch can go wrong
in ways no single image shows: a class that vanishes everywhere costs each image only its
share of detections, and images mixed up inside the batch look like one image badly
detected. ``compare_batch`` measures those, and ``DetectionComparison`` holds it twice: for
the target's own detections and for the host's decoding of the target's raw tensors, so
that a failure can be traced to the raw tensors or to the device's post-processing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from .match import DetectionMetrics, detection_metrics, match_boxes

Detections = dict[str, Tensor]  # one image: boxes [M, 4], scores [M], classes [M], masks [M, H, W]


def detection_f1(matched: int, num_ref: int, num_dut: int) -> float:
    """2 matched / (num_ref + num_dut): 1 when both sides agree on every detection, 0 when no
    pair matches; 1 when neither side has any detection."""
    total = num_ref + num_dut
    return 2 * matched / total if total else 1.0


def same_class_pairs(ref: Detections, dut: Detections, iou_threshold: float) -> Tensor:
    """The classes of the pairs ``match_boxes`` makes between ``ref`` and ``dut`` within each class.

    Returns:
        Tensor[P]: the class of each matched pair.
    """
    matching = match_boxes(ref["boxes"], dut["boxes"], iou_threshold, ref["classes"], dut["classes"])
    return ref["classes"][matching.ref_index]


@dataclass(frozen=True)
class ClassMatch:
    """One class over the batch: detections on each side and same-class pairs at the match IoU."""

    name: str
    num_ref: int
    num_dut: int
    matched: int

    @property
    def f1(self) -> float:
        """``detection_f1`` of the class: 0 when it vanished from one side or appeared on it."""
        return detection_f1(self.matched, self.num_ref, self.num_dut)


@dataclass(frozen=True)
class BatchDetections:
    """One side's detections against the reference's.

    ``per_image``: ``detection_metrics`` of image i against reference image i.
    ``per_class``: every class detected by either side, summed over the images.
    ``cross_f1[i][j]``: ``detection_f1`` of image i's detections against reference image j's,
    pairs matched within each class at the match IoU.
    """

    per_image: list[DetectionMetrics]
    per_class: list[ClassMatch]
    cross_f1: list[list[float]]

    def image_margin(self, image: int) -> tuple[float, int | None]:
        """F1 of ``image`` against its own reference minus its best F1 against another image's,
        and that other image (None in a batch of one, where the margin is the F1 itself)."""
        row = self.cross_f1[image]
        others = [j for j in range(len(row)) if j != image]
        if not others:
            return row[image], None
        best = max(others, key=row.__getitem__)
        return row[image] - row[best], best


def compare_batch(reference: Sequence[Detections], detections: Sequence[Detections], iou_threshold: float,
                  class_names: Sequence[str]) -> BatchDetections:
    """Match ``detections`` to ``reference`` image by image, class by class and across images.

    Args:
        reference, detections: one dict per image, in batch order.
        iou_threshold: box IoU a pair needs to match (``match_iou``).
        class_names: one name per class id, for the per-class rows.

    Raises:
        ValueError: the two sides have different numbers of images.
    """
    if len(reference) != len(detections):
        raise ValueError(f"{len(detections)} images of detections against {len(reference)} of the reference")
    per_image = [detection_metrics(r, d, iou_threshold) for r, d in zip(reference, detections)]
    cross = [
        [detection_f1(len(same_class_pairs(r, d, iou_threshold)), len(r["scores"]), len(d["scores"])) for r in reference]
        for d in detections
    ]
    counts: dict[int, list[int]] = {}
    for r, d in zip(reference, detections):
        for side, classes in enumerate((r["classes"], d["classes"], same_class_pairs(r, d, iou_threshold))):
            for cls in classes.tolist():
                counts.setdefault(cls, [0, 0, 0])[side] += 1
    per_class = [ClassMatch(class_names[c] if c < len(class_names) else f"class {c}", *counts[c]) for c in sorted(counts)]
    return BatchDetections(per_image, per_class, cross)


@dataclass(frozen=True)
class DetectionComparison:
    """What the detection gates read: the target's detections (``device``) and the host's
    decoding of its raw tensors (``host``), each against the reference; ``postprocessing``
    says where the target's own were made. For a target that post-processes on the host
    the two are one object."""

    device: BatchDetections
    host: BatchDetections
    postprocessing: str

    @property
    def host_decoded(self) -> bool:
        """Whether the target's detections are the host's decoding (nothing to tell apart)."""
        return self.device is self.host


def compare_detections(reference: Sequence[Detections], detections: Sequence[Detections],
                       host_detections: Sequence[Detections], iou_threshold: float, class_names: Sequence[str],
                       postprocessing: str) -> DetectionComparison:
    """``compare_batch`` of the target's detections and of the host's decoding of its raw tensors."""
    device = compare_batch(reference, detections, iou_threshold, class_names)
    host = device if host_detections is detections else compare_batch(reference, host_detections, iou_threshold, class_names)
    return DetectionComparison(device, host, postprocessing)
