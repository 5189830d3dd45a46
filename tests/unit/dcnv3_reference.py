"""A DCNv3 core as seed 003 describes it (``../shared/seeds/003_*`` section 4.2), for checking
the layout converters: written here from the seed's construction, not copied.

Normalised sampling locations: a reference point ``(dilation*(k-1))//2 + 0.5 + stride*o``
over the padded size, plus the kernel grid (x outer, y inner) over the padded size, plus
``offset / [W, H]``; then ``grid_sample(bilinear, zeros, align_corners=False)`` per group and
a mask-weighted sum over the points. No kernel weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dcnv3_core(x: Tensor, offset: Tensor, mask: Tensor, kernel: tuple[int, int], stride: int, pad: int, dilation: int,
               group: int) -> Tensor:
    """Input [N, H, W, C], offset [N, Ho, Wo, G*K*2], mask [N, Ho, Wo, G*K] -> [N, Ho, Wo, C]."""
    n, _, _, channels = x.shape
    kh, kw = kernel
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    _, hp, wp, _ = padded.shape
    _, ho, wo, _ = offset.shape
    points = kh * kw
    cy, cx = (dilation * (kh - 1)) // 2, (dilation * (kw - 1)) // 2
    ref_y = (cy + 0.5 + stride * torch.arange(ho, dtype=x.dtype)) / hp
    ref_x = (cx + 0.5 + stride * torch.arange(wo, dtype=x.dtype)) / wp
    ry, rx = torch.meshgrid(ref_y, ref_x, indexing="ij")
    reference = torch.stack((rx, ry), -1).reshape(1, ho, wo, 1, 1, 2)
    gx, gy = torch.meshgrid(-cx + dilation * torch.arange(kw, dtype=x.dtype), -cy + dilation * torch.arange(kh, dtype=x.dtype),
                            indexing="ij")
    kernel_grid = torch.stack((gx.reshape(-1) / wp, gy.reshape(-1) / hp), -1).reshape(1, 1, 1, 1, points, 2)
    norm = torch.tensor([wp, hp], dtype=x.dtype)
    locations = reference + kernel_grid + offset.reshape(n, ho, wo, group, points, 2) / norm
    grids = (2 * locations - 1).permute(0, 3, 1, 2, 4, 5).reshape(n * group, ho * wo, points, 2)
    per_group = padded.permute(0, 3, 1, 2).reshape(n * group, channels // group, hp, wp)
    sampled = F.grid_sample(per_group, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.reshape(n, ho * wo, group, points).permute(0, 2, 1, 3).reshape(n * group, 1, ho * wo, points)
    out = (sampled * weights).sum(-1).reshape(n, channels, ho, wo)
    return out.permute(0, 2, 3, 1)
