"""One-to-one matching of detections from a target under test to the reference's."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.ops import box_iou


@dataclass(frozen=True)
class Matching:
    """Pairs (ref_index[i], dut_index[i]) with their box IoU, in the order they were matched."""

    ref_index: Tensor
    dut_index: Tensor
    iou: Tensor
    num_ref: int
    num_dut: int

    @property
    def unmatched_ref(self) -> int:
        return self.num_ref - len(self.ref_index)

    @property
    def unmatched_dut(self) -> int:
        return self.num_dut - len(self.dut_index)


def match_boxes(
    ref_boxes: Tensor,
    dut_boxes: Tensor,
    iou_threshold: float,
    ref_classes: Tensor | None = None,
    dut_classes: Tensor | None = None,
    *,
    cross_class: bool = False,
) -> Matching:
    """Greedy one-to-one matching by descending box IoU; pairs below ``iou_threshold`` stay unmatched.

    With classes given, same-class pairs match first. ``cross_class=False`` stops there (a
    class flip then shows as two unmatched detections); ``cross_class=True`` then pairs the
    rest across classes, so a flip shows as a matched pair of different classes. Same-class
    first matters because a detector scores several classes at one location with identical
    boxes: best-IoU-first alone pairs them by rounding noise, not by object.

    Args:
        ref_boxes (Tensor[M, 4]), dut_boxes (Tensor[D, 4]): xyxy boxes.
        ref_classes (Tensor[M]), dut_classes (Tensor[D]): optional class ids.
        cross_class: with classes, also match pairs of different classes, after all same-class pairs.
    """
    iou = box_iou(ref_boxes.float(), dut_boxes.float())
    # Rank = IoU, plus 1 for a same-class pair, so every same-class pair ranks above every
    # cross-class one; pairs that may not match rank -1.
    if ref_classes is not None and dut_classes is not None:
        same = ref_classes[:, None] == dut_classes[None, :]
        rank = torch.where(same, iou + 1, iou if cross_class else torch.full_like(iou, -1.0))
    else:
        rank = iou.clone()
    rank[iou < iou_threshold] = -1.0
    ref_idx, dut_idx, ious = [], [], []
    if rank.numel():
        order = torch.argsort(rank.flatten(), descending=True, stable=True)
        used_ref, used_dut = set(), set()
        for flat in order.tolist():
            if float(rank.view(-1)[flat]) < 0:
                break
            r, d = divmod(flat, iou.shape[1])
            if r in used_ref or d in used_dut:
                continue
            used_ref.add(r)
            used_dut.add(d)
            ref_idx.append(r)
            dut_idx.append(d)
            ious.append(float(iou[r, d]))
    return Matching(
        torch.tensor(ref_idx, dtype=torch.long),
        torch.tensor(dut_idx, dtype=torch.long),
        torch.tensor(ious, dtype=torch.float32),
        len(ref_boxes),
        len(dut_boxes),
    )


def mask_iou_pairs(ref_masks: Tensor, dut_masks: Tensor) -> Tensor:
    """IoU of aligned pairs of binary masks: |P ∩ R| / |P ∪ R|, 1 where both are empty.

    Args:
        ref_masks (Tensor[P, H, W]), dut_masks (Tensor[P, H, W]): bool masks, pair i = row i.

    Returns:
        Tensor[P]: IoU in [0, 1].
    """
    ref, dut = ref_masks.flatten(1).bool(), dut_masks.flatten(1).bool()
    inter = (ref & dut).sum(1).float()
    union = (ref | dut).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_dice_pairs(ref_masks: Tensor, dut_masks: Tensor) -> Tensor:
    """Dice of aligned pairs of binary masks: 2 |P ∩ R| / (|P| + |R|), 1 where both are empty.

    Args:
        ref_masks (Tensor[P, H, W]), dut_masks (Tensor[P, H, W]): bool masks, pair i = row i.

    Returns:
        Tensor[P]: Dice in [0, 1].
    """
    ref, dut = ref_masks.flatten(1).bool(), dut_masks.flatten(1).bool()
    inter = (ref & dut).sum(1).float()
    total = (ref.sum(1) + dut.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def box_abs_errors(ref_boxes: Tensor, dut_boxes: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
    """|dut - ref| per coordinate of aligned box pairs, in pixels or normalised by image size.

    Args:
        ref_boxes (Tensor[P, 4]), dut_boxes (Tensor[P, 4]): xyxy, pair i = row i.
        image_size: (H, W) of the image the boxes are in; when given, x errors are divided
            by W and y errors by H, so 0.10 means a tenth of the image.

    Returns:
        Tensor[P, 4]: float32 errors.
    """
    errors = (dut_boxes.float() - ref_boxes.float()).abs()
    if image_size is None:
        return errors
    height, width = image_size
    return errors / errors.new_tensor([width, height, width, height])


def score_errors(ref_scores: Tensor, dut_scores: Tensor) -> tuple[Tensor, Tensor]:
    """(|s_dut - s_ref|, |s_dut - s_ref| / s_ref) of aligned score pairs.

    Reference scores are above the detector's score threshold, so never 0; a 0 would give inf.

    Args:
        ref_scores (Tensor[P]), dut_scores (Tensor[P]): confidences in [0, 1].
    """
    absolute = (dut_scores.float() - ref_scores.float()).abs()
    return absolute, absolute / ref_scores.float()


def top_k_classes(scores: Tensor, classes: Tensor, k: int) -> set[int]:
    """The k classes with the highest best-detection score (fewer if fewer classes were detected).

    Args:
        scores (Tensor[M]), classes (Tensor[M]): one image's detections.
    """
    best: dict[int, float] = {}
    for score, cls in zip(scores.tolist(), classes.tolist()):
        best[cls] = max(score, best.get(cls, score))
    return set(sorted(best, key=best.__getitem__, reverse=True)[:k])


def top_k_class_overlap(ref_scores: Tensor, ref_classes: Tensor, dut_scores: Tensor, dut_classes: Tensor, k: int = 5) -> float:
    """|top-k(ref) ∩ top-k(dut)| / |top-k(ref)|, classes ranked by their best detection score.

    1.0 when neither side detected anything; 0.0 when only the device under test did.
    """
    ref_top = top_k_classes(ref_scores, ref_classes, k)
    dut_top = top_k_classes(dut_scores, dut_classes, k)
    if not ref_top:
        return 1.0 if not dut_top else 0.0
    return len(ref_top & dut_top) / len(ref_top)


@dataclass(frozen=True)
class ClassCounts:
    """One class's detections: the reference's, the target's, and the same-class pairs matched between them."""

    ref: int
    dut: int
    matched: int

    @property
    def match(self) -> float:
        """matched / max(ref, dut): 0 for a class that vanished or appeared on the target, 1 with neither."""
        return self.matched / max(self.ref, self.dut) if max(self.ref, self.dut) else 1.0

    def __add__(self, other: ClassCounts) -> ClassCounts:
        return ClassCounts(self.ref + other.ref, self.dut + other.dut, self.matched + other.matched)


def class_counts(ref_classes: Tensor, dut_classes: Tensor, matched_classes: Tensor) -> dict[int, ClassCounts]:
    """``ClassCounts`` of every class either side detected; ``matched_classes`` is the class of each same-class pair."""
    present = sorted(set(ref_classes.tolist()) | set(dut_classes.tolist()))
    return {c: ClassCounts(int((ref_classes == c).sum()), int((dut_classes == c).sum()), int((matched_classes == c).sum()))
            for c in present}


@dataclass(frozen=True)
class DetectionMetrics:
    """One image's detections of the device under test against the reference's.

    Pairs come from ``match_boxes`` with ``cross_class=True``: same-class pairs first, then
    the rest across classes (so a class flip shows in ``class_agreement`` rather than as two
    unmatched detections). Per-pair metrics are
    taken over the matched pairs; with no pair, errors are 0 and agreements/IoUs are 1 if
    neither side detected anything, else 0 (``unmatched_fraction`` then tells the story).
    The ``thresholds`` keys ``max_<field>`` / ``min_<field>`` bound the field of that name.
    """

    num_ref: int
    num_dut: int
    matched: int
    unmatched_fraction: float  # (unmatched ref + unmatched dut) / (num_ref + num_dut)
    box_abs_error_px: float  # max |Δ coordinate| in pixels
    box_abs_error_px_mean: float
    box_error: float  # max |Δ coordinate| / image side (x by W, y by H)
    box_error_mean: float
    score_abs_error: float  # max |Δ score|
    score_relative_error: float  # max |Δ score| / reference score
    score_relative_error_mean: float
    class_agreement: float  # fraction of pairs with the same class
    top5_class_overlap: float  # top_k_class_overlap with k = 5
    mask_iou: float  # mean mask IoU over pairs
    mask_iou_min: float
    dice: float  # mean Dice over pairs
    dice_min: float
    per_class: dict[int, ClassCounts] = field(default_factory=dict)  # by class id


def _summary(values: Tensor, empty: float) -> tuple[float, float, float]:
    """(max, mean, min) of per-pair values; ``empty`` for all three when there is no pair."""
    if not values.numel():
        return empty, empty, empty
    return float(values.max()), float(values.mean()), float(values.min())


def detection_metrics(ref: dict[str, Tensor], dut: dict[str, Tensor], iou_threshold: float) -> DetectionMetrics:
    """Match one image's detections and measure every pair (see ``DetectionMetrics``).

    Args:
        ref, dut: ``postprocess`` results of one image: ``boxes`` [M, 4] xyxy pixels,
            ``scores`` [M], ``classes`` [M], ``masks`` bool [M, H, W]; the image size is
            taken from the masks.
        iou_threshold: box IoU a pair needs to match.
    """
    matching = match_boxes(ref["boxes"], dut["boxes"], iou_threshold, ref["classes"], dut["classes"], cross_class=True)
    r, d = matching.ref_index, matching.dut_index
    total = matching.num_ref + matching.num_dut
    agree_if_empty = 1.0 if total == 0 else 0.0
    ref_boxes, dut_boxes = ref["boxes"][r], dut["boxes"][d]
    px_max, px_mean, _ = _summary(box_abs_errors(ref_boxes, dut_boxes), 0.0)
    norm_max, norm_mean, _ = _summary(box_abs_errors(ref_boxes, dut_boxes, tuple(ref["masks"].shape[-2:])), 0.0)
    score_abs, score_rel = score_errors(ref["scores"][r], dut["scores"][d])
    rel_max, rel_mean, _ = _summary(score_rel, 0.0)
    _, iou_mean, iou_min = _summary(mask_iou_pairs(ref["masks"][r], dut["masks"][d]), agree_if_empty)
    _, dice_mean, dice_min = _summary(mask_dice_pairs(ref["masks"][r], dut["masks"][d]), agree_if_empty)
    same = ref["classes"][r] == dut["classes"][d]
    _, agreement, _ = _summary(same.float(), agree_if_empty)
    return DetectionMetrics(
        num_ref=matching.num_ref,
        num_dut=matching.num_dut,
        matched=len(r),
        unmatched_fraction=(matching.unmatched_ref + matching.unmatched_dut) / total if total else 0.0,
        box_abs_error_px=px_max,
        box_abs_error_px_mean=px_mean,
        box_error=norm_max,
        box_error_mean=norm_mean,
        score_abs_error=_summary(score_abs, 0.0)[0],
        score_relative_error=rel_max,
        score_relative_error_mean=rel_mean,
        class_agreement=agreement,
        top5_class_overlap=top_k_class_overlap(ref["scores"], ref["classes"], dut["scores"], dut["classes"], 5),
        mask_iou=iou_mean,
        mask_iou_min=iou_min,
        dice=dice_mean,
        dice_min=dice_min,
        per_class=class_counts(ref["classes"], dut["classes"], ref["classes"][r][same]),
    )


def image_overlap(ref: dict[str, Tensor], dut: dict[str, Tensor], iou_threshold: float) -> float:
    """2 x same-class matched pairs / (ref + dut detections): how much two images' detections agree; 1 when both are empty."""
    total = len(ref["boxes"]) + len(dut["boxes"])
    if not total:
        return 1.0
    matching = match_boxes(ref["boxes"], dut["boxes"], iou_threshold, ref["classes"], dut["classes"])
    return 2 * len(matching.ref_index) / total


def image_assignment(ref: Sequence[dict[str, Tensor]], dut: Sequence[dict[str, Tensor]], iou_threshold: float,
                     window: int) -> list[int]:
    """For each target image, the reference image of its batch (``window`` consecutive images)
    whose detections its own overlap most (``image_overlap``); its own index on a tie."""
    assigned = []
    for i, found in enumerate(dut):
        first = i - i % window
        overlaps = {j: image_overlap(ref[j], found, iou_threshold) for j in range(first, min(first + window, len(ref)))}
        assigned.append(max(overlaps, key=lambda j: (overlaps[j], j == i)))
    return assigned


@dataclass(frozen=True)
class DetectionComparison:
    """A target's detections against the reference's over a set of images.

    ``per_image``: image i's ``DetectionMetrics`` against reference image i. ``assignment``:
    the reference image each target image agrees with most within its batch (``image_assignment``;
    i for every i unless results were mixed up). ``host``: the same comparison of the host's
    decoding of the target's raw tensors, for a target that post-processes on its device
    (None where the two are the same detections), so a gate can say whether the raw
    tensors or the device's post-processing made a difference.
    """

    per_image: list[DetectionMetrics]
    assignment: list[int]
    host: DetectionComparison | None = None

    @property
    def per_class(self) -> dict[int, ClassCounts]:
        """``ClassCounts`` summed over the images."""
        pooled: dict[int, ClassCounts] = {}
        for metrics in self.per_image:
            for c, counts in metrics.per_class.items():
                pooled[c] = pooled.get(c, ClassCounts(0, 0, 0)) + counts
        return dict(sorted(pooled.items()))


def compare_detections(ref: Sequence[dict[str, Tensor]], dut: Sequence[dict[str, Tensor]], iou_threshold: float,
                       window: int, host: Sequence[dict[str, Tensor]] | None = None) -> DetectionComparison:
    """``DetectionComparison`` of ``dut`` (and of ``host``, the host decoding, when it is another list) against ``ref``."""
    if len(ref) != len(dut):
        raise ValueError(f"compare_detections: {len(ref)} reference images but {len(dut)} target images")
    per_image = [detection_metrics(r, d, iou_threshold) for r, d in zip(ref, dut)]
    host_comparison = None if host is None or host is dut else compare_detections(ref, host, iou_threshold, window)
    return DetectionComparison(per_image, image_assignment(ref, dut, iou_threshold, window), host_comparison)

