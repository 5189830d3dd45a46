"""FCOS target assignment: which ground-truth box each location of each FPN level regresses.

Follows AdelaiDet ``FCOSOutputs._get_ground_truth`` / ``compute_targets_for_locations``:
a location is positive for a box when it lies in the box's centre region (radius
``radius`` strides around the box centre, clipped to the box: ``CENTER_SAMPLE=True``,
``POS_RADIUS=1.5``) and its largest regression distance max(l, t, r, b) falls in the level's
size-of-interest range; a location claimed by several boxes takes the smallest-area one.

Shapes: L locations over all levels of one image, M ground-truth instances.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.decode import locations

INF = 1e8
# AdelaiDet SIZES_OF_INTEREST=[64, 128, 256, 512]: P3 [0, 64], P4 [64, 128], ..., P7 [512, inf].
SIZES_OF_INTEREST = (64, 128, 256, 512)
POS_RADIUS = 1.5


def level_ranges(sizes_of_interest: tuple[float, ...] = SIZES_OF_INTEREST) -> list[tuple[float, float]]:
    """Per-level [lo, hi] bounds of max(l, t, r, b): ``[0, s0], [s0, s1], ..., [s_last, INF]``."""
    bounds = (-1.0, *map(float, sizes_of_interest), INF)
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass(frozen=True)
class Targets:
    """Targets of one image over all L locations, levels concatenated P3..P7, row-major.

    labels [L] int64 (``num_classes`` = background), reg [L, 4] (l, t, r, b in units of
    the level's stride), gt_index [L] int64 (-1 for background), ctrness [L] (0 for background),
    locations [L, 2] (x, y input px), strides [L].
    """

    labels: Tensor
    reg: Tensor
    gt_index: Tensor
    ctrness: Tensor
    locations: Tensor
    strides: Tensor


def all_locations(shapes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Locations [L, 2], their stride [L] and their level index [L] over every level."""
    locs, strs, lvls = [], [], []
    for i, ((h, w), s) in enumerate(zip(shapes, strides)):
        loc = locations(h, w, s, device)
        locs.append(loc)
        strs.append(torch.full((len(loc),), float(s), device=device))
        lvls.append(torch.full((len(loc),), i, dtype=torch.int64, device=device))
    return torch.cat(locs), torch.cat(strs), torch.cat(lvls)


def centerness_target(reg: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for reg [P, 4] (l, t, r, b)."""
    lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-12)) * (
        tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-12)
    )
    return ratio.clamp(min=0).sqrt()


def assign(
    boxes: Tensor,
    classes: Tensor,
    shapes: list[tuple[int, int]],
    strides: tuple[int, ...],
    num_classes: int,
    sizes_of_interest: tuple[float, ...] = SIZES_OF_INTEREST,
    radius: float = POS_RADIUS,
) -> Targets:
    """FCOS targets of one image.

    Args:
        boxes (Tensor[M, 4]): ground-truth xyxy in input pixels.
        classes (Tensor[M]): contiguous class ids 0..num_classes-1.
        shapes: (h, w) of each level's feature map; strides: each level's stride.

    Returns:
        Targets over all L locations.
    """
    device = boxes.device
    locs, strs, lvls = all_locations(shapes, strides, device)
    ranges = torch.tensor(level_ranges(sizes_of_interest), device=device)[lvls]  # [L, 2]
    num_locs = len(locs)
    if len(boxes) == 0:
        return Targets(
            torch.full((num_locs,), num_classes, dtype=torch.int64, device=device),
            locs.new_zeros((num_locs, 4)),
            torch.full((num_locs,), -1, dtype=torch.int64, device=device),
            locs.new_zeros(num_locs),
            locs,
            strs,
        )
    xs, ys = locs[:, 0:1], locs[:, 1:2]  # [L, 1]
    x0, y0, x1, y1 = boxes.float().unbind(dim=1)  # [M] each
    reg = torch.stack((xs - x0, ys - y0, x1 - xs, y1 - ys), dim=2)  # [L, M, 4]

    # Centre region: radius * stride around the box centre, never outside the box.
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = strs[:, None] * radius
    cx0, cy0 = torch.maximum(cx - r, x0), torch.maximum(cy - r, y0)
    cx1, cy1 = torch.minimum(cx + r, x1), torch.minimum(cy + r, y1)
    in_center = (xs > cx0) & (ys > cy0) & (xs < cx1) & (ys < cy1)  # [L, M]

    max_reg = reg.max(dim=2).values
    cared = (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])

    area = ((x1 - x0) * (y1 - y0))[None].expand(num_locs, -1).clone()
    area[~(in_center & cared)] = INF
    min_area, gt_index = area.min(dim=1)
    positive = min_area < INF

    labels = classes.to(torch.int64)[gt_index]
    labels[~positive] = num_classes
    reg_t = reg[torch.arange(num_locs, device=device), gt_index] / strs[:, None]
    ctr = torch.zeros(num_locs, device=device)
    ctr[positive] = centerness_target(reg_t[positive])
    gt_index = torch.where(positive, gt_index, torch.full_like(gt_index, -1))
    return Targets(labels, reg_t, gt_index, ctr, locs, strs)
