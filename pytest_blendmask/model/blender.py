"""Blender: per-instance attentions x RoI-aligned bases -> mask logits. No parameters."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

from .layers import resize_to


def blend(
    bases: Tensor, rois: Tensor, attns: Tensor, resolution: int, spatial_scale: float, *, sampling_ratio: int = 1,
    aligned: bool = True,
) -> Tensor:
    """Blend K bases cropped at each RoI with that instance's attention maps.

    Args:
        bases (Tensor[N, K, Hb, Wb]): basis maps from ``BasisModule``, in any float dtype.
        rois (Tensor[M, 5]): ``(image_idx, x1, y1, x2, y2)`` in network-input pixels, unclipped, float32.
        attns (Tensor[M, K * A * A]): attention logits gathered at each instance's location;
            channel index is ``base * A * A + row * A + col``.
        resolution (int): R, the side of the pooled bases and of the output masks.
        spatial_scale (float): input-pixel to basis-pixel scale (1/4).
        sampling_ratio, aligned: ``roi_align``'s; the defaults are the released pooler's
            (``ModelConfig.pooler_sampling_ratio`` and ``pooler_aligned`` say where from).

    Returns:
        Tensor[M, R, R]: mask logits, in the bases' dtype.
    """
    num_bases = bases.shape[1]
    if attns.shape[0] == 0:
        return bases.new_zeros((0, resolution, resolution))
    attn_size = int(round((attns.shape[1] / num_bases) ** 0.5))
    if num_bases * attn_size * attn_size != attns.shape[1]:
        raise ValueError(f"expected attns [M, K*A*A] with K={num_bases}, got {tuple(attns.shape)}")
    # The RoIs stay float32 (cast to half, a box edge moves by up to 1 px in bf16); the pooled
    # values go back to the bases' dtype, as torchvision's autocast wrapper of roi_align does.
    pooled = roi_align(
        bases.to(rois.dtype), rois, (resolution, resolution), spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio, aligned=aligned,
    ).to(bases.dtype)
    weights = attns.view(-1, num_bases, attn_size, attn_size).to(bases.dtype)
    # Upsample first, softmax second: the order the released model uses.
    weights = torch.softmax(resize_to(weights, (resolution, resolution), "bilinear"), dim=1)
    return (pooled * weights).sum(dim=1)
