"""Offset layouts of deformable convolution, and converters to and from torchvision's.

A port meets deformable offsets in three layouts; each converter here moves one of them
to or from torchvision's, which ``torchvision.ops.deform_conv2d`` and the fallback
(``ops.deform_conv``) read. K = kh * kw kernel points, G offset groups.

**torchvision** (``torchvision.ops.deform_conv2d`` docstring and kernels): offset
``[N, 2*G*K, Ho, Wo]``, channel ``g*2K + 2k`` is dy and ``g*2K + 2k + 1`` is dx of kernel
point ``k = i*kw + j`` (row i, column j: row-major); mask ``[N, G*K, Ho, Wo]`` at ``g*K + k``.

**DCNv3, as seed 003 runs it** (its ``dcnv3_core_pytorch`` fallback, ``../shared/seeds/003_*``
section 4.2): channels last, offset ``[N, Ho, Wo, G*K*2]`` and mask ``[N, Ho, Wo, G*K]``.
Our reading of its code, which is what runs:

- ``sampling_locations + offset * offset_scale / spatial_norm`` with ``spatial_norm`` =
  ``[W_in, H_in]`` repeated: each pair is **(dx, dy)**, x first, at ``(g*K + p)*2``;
- the kernel grid comes from ``meshgrid(<kernel_w points>, <kernel_h points>, indexing='ij')``
  flattened, so point ``p = j*kh + i`` runs **column-major** (x outer, y inner);
- ``mask.view(N, Ho*Wo, group, P)``: mask at ``g*K + p``.

The seed's prose (section 2.2) instead says ``offset_h = offset[..., 2k]``,
``offset_w = offset[..., 2k+1]``: (h, w) pairs. Its code and its prose disagree; we follow
the code. The converters assume ``offset_scale = 1`` and ``remove_center = False``, under
which DCNv3's sampling point is torchvision's (its +0.5 reference point and
``grid_sample(align_corners=False)`` cancel). DCNv3's core has no kernel weights: it equals
``deform_conv2d`` with a ones kernel ``[C, 1, kh, kw]`` (groups = C), channels first.

**Ascend NPU** (``torch_npu.npu_deformable_conv2d``; hiascend API reference "(beta)
torch_npu.npu_deformable_conv2d", Ascend/op-plugin ``docs/context``): "offset (Tensor) - x-y
coordinate offsets and mask, a 4D tensor. Format NHWC: [batch, out_height, out_width,
deformable_groups * filter_height * filter_width * 3]". The documentation does not spell
the channel order out; we read it as the callers in Ascend's own ``torch_npu.contrib.module.
ModulatedDeformConv`` and mmcv's ``_npu_forward`` build it: torchvision's odd channels (all
dx), then its even ones (all dy), then the mask, each block in torchvision's ``g*K + k``
order. Those callers pass it channels-first, ``[N, 3*G*K, Ho, Wo]``, i.e.
``to_npu(...).permute(0, 3, 1, 2)``. Not checked on an NPU here.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _split(offset: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """torchvision's offset and mask as dy, dx, mask, each [N, G*K, Ho, Wo], and (Ho, Wo)."""
    n, channels, height, width = offset.shape
    groups_points = mask.shape[1]
    if mask.shape != (n, groups_points, height, width) or channels != 2 * groups_points:
        raise ValueError(f"expected offset [N, 2*G*K, Ho, Wo] and mask [N, G*K, Ho, Wo]; got {tuple(offset.shape)} "
                         f"and {tuple(mask.shape)}")
    pairs = offset.reshape(n, groups_points, 2, height, width)
    return pairs[:, :, 0], pairs[:, :, 1], mask, height, width


def _point_order(kh: int, kw: int) -> Tensor:
    """For each DCNv3 point p = j*kh + i, torchvision's index k = i*kw + j."""
    j, i = torch.meshgrid(torch.arange(kw), torch.arange(kh), indexing="ij")
    return (i * kw + j).reshape(-1)


def to_dcnv3(offset: Tensor, mask: Tensor, kernel_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """torchvision's (offset, mask) -> seed 003's DCNv3 (offset [N, Ho, Wo, G*K*2], mask [N, Ho, Wo, G*K])."""
    dy, dx, mask, height, width = _split(offset, mask)
    kh, kw = kernel_size
    n = offset.shape[0]
    order = _point_order(kh, kw).to(offset.device)
    dy, dx, mask = (t.reshape(n, -1, kh * kw, height, width)[:, :, order] for t in (dy, dx, mask))
    pairs = torch.stack((dx, dy), dim=3)  # [N, G, K, 2, Ho, Wo]
    return pairs.permute(0, 4, 5, 1, 2, 3).reshape(n, height, width, -1), mask.permute(0, 3, 4, 1, 2).reshape(
        n, height, width, -1
    )


def from_dcnv3(offset: Tensor, mask: Tensor, kernel_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Seed 003's DCNv3 (offset, mask) -> torchvision's (offset [N, 2*G*K, Ho, Wo], mask [N, G*K, Ho, Wo])."""
    n, height, width, groups_points = mask.shape
    kh, kw = kernel_size
    if offset.shape != (n, height, width, 2 * groups_points) or groups_points % (kh * kw):
        raise ValueError(f"expected DCNv3 offset [N, Ho, Wo, G*K*2] and mask [N, Ho, Wo, G*K] with K={kh * kw}; "
                         f"got {tuple(offset.shape)} and {tuple(mask.shape)}")
    inverse = torch.argsort(_point_order(kh, kw)).to(offset.device)
    pairs = offset.reshape(n, height, width, -1, kh * kw, 2)[:, :, :, :, inverse]
    mask = mask.reshape(n, height, width, -1, kh * kw)[:, :, :, :, inverse]
    tv_pairs = pairs.flip(-1)  # (dx, dy) -> (dy, dx)
    return (tv_pairs.permute(0, 3, 4, 5, 1, 2).reshape(n, 2 * groups_points, height, width),
            mask.permute(0, 3, 4, 1, 2).reshape(n, groups_points, height, width))


def to_npu(offset: Tensor, mask: Tensor) -> Tensor:
    """torchvision's (offset, mask) -> the NPU operator's packed offset [N, Ho, Wo, 3*G*K]: all dx, all dy, mask."""
    dy, dx, mask, _, _ = _split(offset, mask)
    return torch.cat((dx, dy, mask), dim=1).permute(0, 2, 3, 1)


def from_npu(packed: Tensor) -> tuple[Tensor, Tensor]:
    """The NPU operator's packed offset [N, Ho, Wo, 3*G*K] -> torchvision's (offset, mask)."""
    n, height, width, channels = packed.shape
    if channels % 3:
        raise ValueError(f"expected a packed offset [N, Ho, Wo, 3*G*K], got {tuple(packed.shape)}")
    dx, dy, mask = packed.permute(0, 3, 1, 2).chunk(3, dim=1)
    return torch.stack((dy, dx), dim=2).reshape(n, -1, height, width), mask.contiguous()
