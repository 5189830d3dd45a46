"""Detector post-processing: rescale and clip boxes, paste and binarise the 56x56 masks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_THRESHOLD = 0.5


def paste_mask(mask: Tensor, box: Tensor, height: int, width: int) -> Tensor:
    """Paste one soft mask into its box of an ``height x width`` image and binarise at >= 0.5.

    Bilinear ``grid_sample`` (align_corners=False) with pixel centres at +0.5, evaluated only
    in a window one pixel around the box: outside it the sampled value is below half the
    mask's border value and can never reach the threshold.

    Args:
        mask (Tensor[R, R]): mask probabilities.
        box (Tensor[4]): xyxy in output pixels, clipped to the image.

    Returns:
        Tensor[height, width]: bool mask.
    """
    out = torch.zeros((height, width), dtype=torch.bool, device=mask.device)
    x0, y0, x1, y1 = (float(v) for v in box)
    wx0, wy0 = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    wx1, wy1 = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
    if wx1 <= wx0 or wy1 <= wy0:
        return out
    xs = (torch.arange(wx0, wx1, device=mask.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    ys = (torch.arange(wy0, wy1, device=mask.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1)[None]
    sampled = F.grid_sample(mask[None, None].float(), grid, align_corners=False)[0, 0]
    out[wy0:wy1, wx0:wx1] = sampled >= MASK_THRESHOLD
    return out


def detector_postprocess(
    boxes: Tensor, scores: Tensor, classes: Tensor, masks: Tensor, input_size: tuple[int, int], output_size: tuple[int, int]
) -> dict[str, Tensor]:
    """Map one image's detections from network-input to output pixels.

    Args:
        boxes (Tensor[M, 4]): xyxy in network-input pixels (unclipped).
        scores (Tensor[M]), classes (Tensor[M]): per detection.
        masks (Tensor[M, R, R]): mask probabilities, computed on the unclipped boxes.
        input_size: (h, w) of the resized, unpadded network input.
        output_size: (H, W) of the image the caller wants results for.

    Returns:
        dict: ``boxes`` [K, 4] (scaled, clipped), ``scores`` [K], ``classes`` [K] int64,
        ``masks`` bool [K, H, W]; boxes left empty by clipping are dropped.
    """
    out_h, out_w = output_size
    scale = boxes.new_tensor([out_w / input_size[1], out_h / input_size[0]] * 2)
    boxes = boxes * scale
    boxes = torch.stack(
        (boxes[:, 0].clamp(0, out_w), boxes[:, 1].clamp(0, out_h), boxes[:, 2].clamp(0, out_w), boxes[:, 3].clamp(0, out_h)),
        dim=1,
    )
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes, masks = boxes[keep], scores[keep], classes[keep], masks[keep]
    if len(boxes):
        pasted = torch.stack([paste_mask(m, b, out_h, out_w) for m, b in zip(masks, boxes)])
    else:
        pasted = torch.zeros((0, out_h, out_w), dtype=torch.bool, device=boxes.device)
    return {"boxes": boxes, "scores": scores, "classes": classes.long(), "masks": pasted}
