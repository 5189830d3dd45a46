"""Deformable convolution (DCNv1, modulated DCNv2) in plain PyTorch, for devices without a kernel.

Same signature and semantics as ``torchvision.ops.deform_conv2d``: output channel o at
output cell (ho, wo) is

    bias[o] + sum_{c, k} weight[o, c, i_k, j_k] * mask[g, k] * x_c(py, px),
    py = ho * stride_h - pad_h + i_k * dilation_h + dy[g, k],
    px = wo * stride_w - pad_w + j_k * dilation_w + dx[g, k],

with k = i_k * kw + j_k the kernel point, g the offset group of channel c, and x_c(py, px)
the bilinear interpolation of the input channel, where corners outside the map count as 0
(so a point at or beyond one pixel outside samples 0, as torchvision's kernels do).

The sampling is an explicit four-corner gather in pixel units, not ``grid_sample``:
normalising coordinates to [-1, 1] and back costs about ``W * eps`` of a pixel, more
than the fp32 operator standard allows.

Half-precision inputs are computed in float32 and the result is rounded back, the way
torchvision's own autocast wrappers run its ops; float64 stays float64, so the fallback
can be checked against the float64 reference exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair


def _output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def bilinear_columns(x: Tensor, py: Tensor, px: Tensor, weight: Tensor) -> Tensor:
    """Sum of ``weight``-scaled bilinear samples of ``x`` at (py, px), zero outside the map.

    Args:
        x (Tensor[N, G, Cg, H, W]): the input, split into G offset groups.
        py, px (Tensor[N, G, P]): sampling positions in pixels (row, column).
        weight (Tensor[N, G, P]): a factor per point (the modulation mask, or ones).

    Returns:
        Tensor[N, G, Cg, P]: ``weight * x(py, px)`` per channel and point.
    """
    n, g, cg, height, width = x.shape
    flat = x.reshape(n, g, cg, height * width)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    out = x.new_zeros((n, g, cg, py.shape[-1]))
    for cy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for cx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
            index = (cy.clamp(0, height - 1) * width + cx.clamp(0, width - 1)).long()
            values = flat.gather(-1, index[:, :, None, :].expand(n, g, cg, -1))
            out += values * (wy * wx * inside * weight)[:, :, None, :]
    return out


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = (1, 1),
    padding: int | tuple[int, int] = (0, 0),
    dilation: int | tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """``torchvision.ops.deform_conv2d`` built from bilinear sampling and one matmul.

    Args:
        input (Tensor[N, C, H, W]): the feature map.
        offset (Tensor[N, 2 * G * kh * kw, Ho, Wo]): (dy, dx) per offset group g and kernel
            point k at channels ``g * 2 * kh * kw + 2 * k`` and ``+ 1`` (torchvision's layout).
        weight (Tensor[Cout, C / groups, kh, kw]): the kernel; groups = C / weight.shape[1].
        bias (Tensor[Cout], optional).
        stride, padding, dilation: int or (h, w).
        mask (Tensor[N, G * kh * kw, Ho, Wo], optional): modulation (DCNv2) at ``g * kh * kw + k``;
            None is DCNv1.

    Returns:
        Tensor[N, Cout, Ho, Wo], in ``input``'s dtype.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    points = kh * kw
    offset_groups = offset.shape[1] // (2 * points)
    out_h, out_w = _output_size(height, kh, sh, ph, dh), _output_size(width, kw, sw, pw, dw)
    if offset_groups == 0 or offset.shape != (n, 2 * offset_groups * points, out_h, out_w):
        raise ValueError(
            f"expected offset [N, 2*G*kh*kw, Ho, Wo] = [{n}, 2*G*{points}, {out_h}, {out_w}], got {tuple(offset.shape)}"
        )
    if channels % offset_groups or channels % group_channels:
        raise ValueError(
            f"input channels {channels} must divide into {offset_groups} offset groups and groups of {group_channels}"
        )
    if mask is not None and mask.shape != (n, offset_groups * points, out_h, out_w):
        raise ValueError(f"expected mask [{n}, {offset_groups * points}, {out_h}, {out_w}], got {tuple(mask.shape)}")
    compute = torch.promote_types(input.dtype, torch.float32)
    # Under the target's autocast the matmul would drop back to half precision.
    with torch.autocast(input.device.type, enabled=False):
        x = input.to(compute).reshape(n, offset_groups, channels // offset_groups, height, width)
        dy, dx = offset.to(compute).reshape(n, offset_groups, points, 2, out_h * out_w).unbind(3)
        rows = torch.arange(out_h, device=input.device, dtype=compute) * sh - ph
        cols = torch.arange(out_w, device=input.device, dtype=compute) * sw - pw
        ki = torch.arange(kh, device=input.device, dtype=compute).repeat_interleave(kw) * dh
        kj = torch.arange(kw, device=input.device, dtype=compute).repeat(kh) * dw
        base_y = (ki[:, None, None] + rows[None, :, None]).expand(points, out_h, out_w).reshape(points, -1)
        base_x = (kj[:, None, None] + cols[None, None, :]).expand(points, out_h, out_w).reshape(points, -1)
        scale = torch.ones_like(dy) if mask is None else mask.to(compute).reshape(n, offset_groups, points, out_h * out_w)
        columns = bilinear_columns(
            x, (base_y + dy).flatten(2), (base_x + dx).flatten(2), scale.flatten(2)
        )  # [N, G, C/G, K * L]
        groups = channels // group_channels
        columns = columns.reshape(n, groups, group_channels * points, out_h * out_w)
        kernel = weight.to(compute).reshape(groups, out_channels // groups, group_channels * points)
        out = torch.matmul(kernel, columns).reshape(n, out_channels, out_h, out_w)
        if bias is not None:
            out = out + bias.to(compute)[:, None, None]
    return out.to(input.dtype)
