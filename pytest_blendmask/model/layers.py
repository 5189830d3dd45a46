"""Building blocks shared by the backbone, the basis module and the head: norms and conv+norm."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def padded_size(sizes: list[tuple[int, int]], divisibility: int) -> tuple[int, int]:
    """(H, W) of a batch of images of ``sizes`` zero-padded bottom/right to multiples of ``divisibility``."""
    return tuple(math.ceil(max(side) / divisibility) * divisibility for side in zip(*sizes))  # type: ignore[return-value]


def pad_batch(images: list[Tensor], divisibility: int) -> Tensor:
    """``images`` ([C, h_i, w_i], already normalised) zero-padded bottom/right into one ``[N, C, H, W]`` batch."""
    height, width = padded_size([(int(im.shape[-2]), int(im.shape[-1])) for im in images], divisibility)
    return torch.stack([F.pad(im, (0, width - im.shape[-1], 0, height - im.shape[-2])) for im in images])


class FrozenBatchNorm2d(nn.Module):
    """Inference-only batch norm whose statistics and affine parameters are buffers.

    Same state as the released checkpoints (weight, bias, running_mean, running_var; no
    num_batches_tracked). It runs through ``F.batch_norm`` so that an ONNX export carries a
    BatchNormalization node that graph optimisers can fold into the preceding conv.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, channels: int, gn_groups: int) -> nn.Module:
    """A norm layer by name: ``frozen_bn``, ``bn`` or ``gn``."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(gn_groups, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; expected frozen_bn, bn or gn")


class Conv2dNorm(nn.Conv2d):
    """A conv followed by its norm, stored as the child ``norm`` (detectron2's key layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: nn.Module, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=False, **kwargs)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


def conv_block(in_channels: int, out_channels: int, norm: str, gn_groups: int) -> nn.Sequential:
    """3x3 conv (no bias), norm, ReLU: keys ``.0.weight`` and ``.1.*`` as in AdelaiDet's basis module."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        make_norm(norm, out_channels, gn_groups),
        nn.ReLU(inplace=True),
    )


def resize_to(x: Tensor, size: tuple[int, int] | torch.Size, mode: str) -> Tensor:
    """Resize to an explicit size: scale-factor resizes break some converters (spec section 10)."""
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)
