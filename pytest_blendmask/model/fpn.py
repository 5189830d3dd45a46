"""Feature pyramid on top of the ResNet: P3-P5 top-down, then P6/P7 from P5 where the config has them."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import ResNet
from .configs import ModelConfig
from .layers import resize_to


class TopBlock(nn.Module):
    """P6 = p6(P5), P7 = p7(ReLU(P6)); fed by P5, not res5.

    ``levels`` (FCOS.TOP_LEVELS) keeps both (2), P6 only (1, the 550 models) or neither (0, RT).
    """

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if levels >= 1 else None
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if levels >= 2 else None

    def forward(self, p5: Tensor) -> list[Tensor]:
        if self.p6 is None:
            return []
        p6 = self.p6(p5)
        return [p6] if self.p7 is None else [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Backbone + FPN, named ``backbone`` in the checkpoint.

    Args:
        x (Tensor[N, 3, H, W]): normalised images, H and W multiples of 32.

    Returns:
        list[Tensor]: L feature maps [N, F, H/s, W/s] for strides s = 8, 16, ..., 2**(L+2).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.bottom_up = ResNet(cfg)
        for level, in_ch in zip((3, 4, 5), cfg.out_widths[1:]):
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(in_ch, cfg.fpn_channels, 1))
            self.add_module(f"fpn_output{level}", nn.Conv2d(cfg.fpn_channels, cfg.fpn_channels, 3, padding=1))
        self.top_block = TopBlock(cfg.fpn_channels, cfg.top_levels)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.bottom_up(x)
        outs = []
        top_down = None
        for level in (5, 4, 3):
            lateral = getattr(self, f"fpn_lateral{level}")(feats[f"res{level}"])
            top_down = lateral if top_down is None else lateral + resize_to(top_down, lateral.shape[-2:], "nearest")
            outs.insert(0, getattr(self, f"fpn_output{level}")(top_down))
        return outs + self.top_block(outs[-1])
