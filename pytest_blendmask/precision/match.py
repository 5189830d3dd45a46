"""One-to-one matching of detections from a target under test to the reference's."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou


@dataclass(frozen=True)
class Matching:
    """Pairs (ref_index[i], dut_index[i]) with their box IoU, best pairs first."""

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
    ref_boxes: Tensor, dut_boxes: Tensor, iou_threshold: float, ref_classes: Tensor | None = None, dut_classes: Tensor | None = None
) -> Matching:
    """Greedy one-to-one matching by descending box IoU; pairs below ``iou_threshold`` stay unmatched.

    With classes given, only same-class pairs may match (a class flip then shows as two
    unmatched detections instead of hiding inside a matched pair).

    Args:
        ref_boxes (Tensor[M, 4]), dut_boxes (Tensor[D, 4]): xyxy boxes.
        ref_classes (Tensor[M]), dut_classes (Tensor[D]): optional class ids.
    """
    iou = box_iou(ref_boxes.float(), dut_boxes.float())
    if ref_classes is not None and dut_classes is not None:
        iou = torch.where(ref_classes[:, None] == dut_classes[None, :], iou, torch.zeros_like(iou))
    ref_idx, dut_idx, ious = [], [], []
    if iou.numel():
        order = torch.argsort(iou.flatten(), descending=True)
        used_ref, used_dut = set(), set()
        for flat in order.tolist():
            value = float(iou.view(-1)[flat])
            if value < iou_threshold:
                break
            r, d = divmod(flat, iou.shape[1])
            if r in used_ref or d in used_dut:
                continue
            used_ref.add(r)
            used_dut.add(d)
            ref_idx.append(r)
            dut_idx.append(d)
            ious.append(value)
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
