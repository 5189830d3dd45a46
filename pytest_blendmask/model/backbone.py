"""ResNet bottom-up network (detectron2 layout: stride on conv1, projection only in block 0)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from .configs import ModelConfig
from .layers import Conv2dNorm, make_norm

STAGE_NAMES = ("res2", "res3", "res4", "res5")


class ModulatedDeformConvNorm(nn.Module):
    """DCNv2 3x3 conv (no bias) + norm, fed by its sibling ``conv2_offset``.

    The 27 offset channels are 18 interleaved (dy, dx) offsets, the layout
    ``torchvision.ops.deform_conv2d`` expects, followed by 9 mask logits. ``deform_conv`` is
    the operator called, torchvision's unless ``ops.selection.use_deform_conv`` swaps it.
    """

    deform_conv = staticmethod(deform_conv2d)

    def __init__(self, channels: int, stride: int, norm: nn.Module) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=1)
        self.norm = norm

    def forward(self, x: Tensor, offset_mask: Tensor) -> Tensor:
        offset, mask = offset_mask[:, :18], offset_mask[:, 18:].sigmoid()
        out = self.deform_conv(x, offset, self.weight, stride=self.stride, padding=1, mask=mask)
        return self.norm(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; ``deform`` swaps conv2 for DCNv2 (dcni3 layout)."""

    def __init__(self, cfg: ModelConfig, in_ch: int, width: int, out_ch: int, stride: int, deform: bool) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return make_norm(cfg.norm, c, cfg.gn_groups)

        self.shortcut = Conv2dNorm(in_ch, out_ch, 1, norm(out_ch), stride=stride) if in_ch != out_ch else None
        self.conv1 = Conv2dNorm(in_ch, width, 1, norm(width), stride=stride)
        if deform:
            self.conv2_offset = nn.Conv2d(width, 27, 3, padding=1)
            nn.init.zeros_(self.conv2_offset.weight)
            nn.init.zeros_(self.conv2_offset.bias)
            self.conv2 = ModulatedDeformConvNorm(width, 1, norm(width))
        else:
            self.conv2_offset = None
            self.conv2 = Conv2dNorm(width, width, 3, norm(width), padding=1)
        self.conv3 = Conv2dNorm(width, out_ch, 1, norm(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        if self.conv2_offset is None:
            out = F.relu_(self.conv2(out))
        else:
            out = F.relu_(self.conv2(out, self.conv2_offset(out)))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


class Stem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max-pool: stride 4."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.conv1 = Conv2dNorm(3, cfg.stem_width, 7, make_norm(cfg.norm, cfg.stem_width, cfg.gn_groups), stride=2, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """Stem + res2..res5.

    Args:
        x (Tensor[N, 3, H, W]): normalised images, H and W multiples of 32.

    Returns:
        dict[str, Tensor]: ``res3`` [N, C3, H/8, W/8], ``res4`` [N, C4, H/16, W/16],
        ``res5`` [N, C5, H/32, W/32]. res2 runs but is not returned (not an FPN input).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.stem = Stem(cfg)
        in_ch = cfg.stem_width
        for i, (name, blocks, width, out_ch, deform) in enumerate(
            zip(STAGE_NAMES, cfg.stage_blocks, cfg.bottleneck_widths, cfg.out_widths, cfg.deform_stages)
        ):
            stage = []
            for b in range(blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                # dcni3: inside a deformable stage only every `deform_interval`-th block deforms.
                stage.append(Bottleneck(cfg, in_ch, width, out_ch, stride, deform and b % cfg.deform_interval == 0))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*stage))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        outs = {}
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            outs[name] = x
        return {k: outs[k] for k in ("res3", "res4", "res5")}
