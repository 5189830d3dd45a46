"""FCOS decoding: threshold, top-k, boxes from locations, class-aware NMS.

It runs wherever its raw tensors are (the host's float32 copy, or a device's own in fp16 or
bf16). Scores and attentions keep the raw tensors' dtype, as a device running the model in
half precision computes them; coordinates (locations, distances, boxes) are float32 in any
case: a box edge near 300 px is off by 1/8 px in fp16 and 1 px in bf16, which
``precision/op_standards.py`` counts as a port bug (``max_position_error``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .configs import ModelConfig


@dataclass(frozen=True)
class Proposals:
    """Detections of one image before the blender, in network-input pixels.

    boxes [M, 4] xyxy (unclipped), scores [M], classes [M] int64, attns [M, K*A*A].
    """

    boxes: Tensor
    scores: Tensor
    classes: Tensor
    attns: Tensor


def locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Centres of a level's cells, (x*s + s//2, y*s + s//2), row-major.

    Returns:
        Tensor[h * w, 2]: (x, y) per cell.
    """
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1) + stride // 2


def _flatten(x: Tensor) -> Tensor:
    """[N, C, h, w] -> [N, h*w, C]."""
    n, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(n, -1, c)


def _decode_level(
    logits: Tensor, bbox_reg: Tensor, ctrness: Tensor, attns: Tensor, stride: int, cfg: ModelConfig
) -> list[Proposals]:
    """Candidates of one FPN level for every image of the batch."""
    locs = locations(logits.shape[2], logits.shape[3], stride, logits.device)
    # Score is multiplied by centre-ness before the threshold (THRESH_WITH_CTR=True).
    probs = _flatten(logits).sigmoid() * _flatten(ctrness).sigmoid()
    regs, feats = _flatten(bbox_reg).to(locs.dtype) * stride, _flatten(attns)
    out = []
    for p, reg, feat in zip(probs, regs, feats):
        candidates = p > cfg.score_threshold
        scores = p[candidates]
        loc_idx, classes = candidates.nonzero(as_tuple=True)
        if scores.numel() > cfg.pre_nms_topk:
            scores, keep = scores.topk(cfg.pre_nms_topk, sorted=False)
            loc_idx, classes = loc_idx[keep], classes[keep]
        xy, ltrb = locs[loc_idx], reg[loc_idx]
        boxes = torch.cat((xy - ltrb[:, :2], xy + ltrb[:, 2:]), dim=1)
        out.append(Proposals(boxes, scores.sqrt(), classes, feat[loc_idx]))
    return out


def _select_over_levels(per_level: list[Proposals], cfg: ModelConfig) -> Proposals:
    """Class-aware NMS over all levels, then at most ``post_nms_topk`` by score (ties kept)."""
    merged = Proposals(*(torch.cat([getattr(p, f) for p in per_level]) for f in ("boxes", "scores", "classes", "attns")))
    # The NMS kernels take one dtype: the scores only order the boxes, so they follow them.
    keep = batched_nms(merged.boxes, merged.scores.to(merged.boxes.dtype), merged.classes, cfg.nms_threshold)
    kept = Proposals(merged.boxes[keep], merged.scores[keep], merged.classes[keep], merged.attns[keep])
    count = kept.scores.numel()
    if count > cfg.post_nms_topk:
        # kthvalue keeps every detection tied with the cut-off, as the released model does.
        cutoff = torch.kthvalue(kept.scores.cpu(), count - cfg.post_nms_topk + 1).values.item()
        mask = kept.scores >= cutoff
        kept = Proposals(kept.boxes[mask], kept.scores[mask], kept.classes[mask], kept.attns[mask])
    return kept


def decode(raw: dict[str, Tensor], cfg: ModelConfig) -> list[Proposals]:
    """Per-image proposals from the raw head outputs of every level, descending score."""
    per_image: list[list[Proposals]] = [[] for _ in range(raw["bases"].shape[0])]
    for level, stride in zip(cfg.fpn_levels, cfg.fpn_strides):
        level_props = _decode_level(
            raw[f"logits_p{level}"], raw[f"bbox_reg_p{level}"], raw[f"ctrness_p{level}"], raw[f"top_feats_p{level}"], stride, cfg
        )
        for image_props, props in zip(per_image, level_props):
            image_props.append(props)
    return [_select_over_levels(levels, cfg) for levels in per_image]
