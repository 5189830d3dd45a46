"""FCOS and BlendMask training losses (AdelaiDet ``FCOSOutputs.fcos_losses`` and ``Blender``).

Notation: P positive locations, C classes, R blender resolution (56).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, roi_align, sigmoid_focal_loss

from ..model.blender import blend

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def focal_loss(logits: Tensor, labels: Tensor, num_classes: int, num_pos: float) -> Tensor:
    """sum over locations and classes of sigmoid focal loss (alpha 0.25, gamma 2) / max(num_pos, 1).

    Args:
        logits (Tensor[L, C]): class logits; labels (Tensor[L]): class id, ``num_classes`` = background.
    """
    onehot = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
    loss = sigmoid_focal_loss(logits, onehot, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="sum")
    return loss / max(num_pos, 1.0)


def ltrb_to_boxes(reg: Tensor) -> Tensor:
    """Distances (l, t, r, b) [P, 4] -> boxes (-l, -t, r, b) [P, 4] around the location."""
    return torch.cat((-reg[:, :2], reg[:, 2:]), dim=1)


def giou_loss(pred_reg: Tensor, target_reg: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i * (1 - GIoU(pred_i, target_i)) / max(sum_i w_i, 1e-6), on positives only.

    Args:
        pred_reg, target_reg (Tensor[P, 4]): (l, t, r, b) distances from the same location.
        weights (Tensor[P]): centre-ness targets.
    """
    if pred_reg.numel() == 0:
        return pred_reg.sum() * 0
    loss = generalized_box_iou_loss(ltrb_to_boxes(pred_reg), ltrb_to_boxes(target_reg), reduction="none")
    return (loss * weights).sum() / weights.sum().clamp(min=1e-6)


def ctrness_loss(ctr_logits: Tensor, ctr_targets: Tensor, num_pos: float) -> Tensor:
    """sum of BCE-with-logits(centre-ness logit, centre-ness target) over positives / max(num_pos, 1)."""
    if ctr_logits.numel() == 0:
        return ctr_logits.sum() * 0
    return F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="sum") / max(num_pos, 1.0)


def mask_targets(gt_masks: Tensor, rois: Tensor, resolution: int) -> Tensor:
    """Ground-truth masks cropped to their boxes and resized: roi_align (aligned) then >= 0.5.

    Args:
        gt_masks (Tensor[M, H, W]): masks of the instances the rois belong to, one per roi.
        rois (Tensor[M, 4]): xyxy boxes in the masks' pixels.

    Returns:
        Tensor[M, R, R]: float 0/1 targets.
    """
    if len(rois) == 0:
        return gt_masks.new_zeros((0, resolution, resolution), dtype=torch.float32)
    idx = torch.arange(len(rois), device=rois.device, dtype=rois.dtype)[:, None]
    pooled = roi_align(gt_masks[:, None].float(), torch.cat((idx, rois), dim=1), (resolution, resolution), 1.0, 0, True)
    return (pooled[:, 0] >= 0.5).float()


def mask_loss(
    bases: Tensor,
    rois: Tensor,
    attns: Tensor,
    targets: Tensor,
    weights: Tensor,
    resolution: int,
    spatial_scale: float,
) -> Tensor:
    """BlendMask loss: sum_i w_i * mean_pixels BCE(blend_i, target_i) / max(sum_i w_i, 1e-6).

    Args:
        bases (Tensor[N, K, Hb, Wb]); rois (Tensor[P, 5]) ground-truth boxes of the positives'
        instances as (image_idx, x1, y1, x2, y2); attns (Tensor[P, K*A*A]) attention at each
        positive location; targets (Tensor[P, R, R]) from ``mask_targets``; weights (Tensor[P])
        centre-ness targets.
    """
    if len(rois) == 0:
        return bases.sum() * 0 + attns.sum() * 0
    logits = blend(bases, rois, attns, resolution, spatial_scale)
    per_roi = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(1, 2))
    return (per_roi * weights).sum() / weights.sum().clamp(min=1e-6)
