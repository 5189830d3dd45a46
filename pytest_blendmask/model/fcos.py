"""FCOS head: shared towers and predictors, run once per FPN level."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .configs import ModelConfig
from .layers import make_norm


def _tower(cfg: ModelConfig, num_convs: int, num_levels: int) -> nn.Sequential:
    """``num_convs`` x [3x3 conv with bias, norm, ReLU] at indices 0, 3, 6, ...

    A BN head keeps one BatchNorm per FPN level in the norm slot (keys ``<slot>.<level>.*``),
    because BN statistics differ across levels while GN's do not.
    """
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        conv = nn.Conv2d(cfg.fpn_channels, cfg.fpn_channels, 3, padding=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        if cfg.norm == "bn":
            norm: nn.Module = nn.ModuleList(nn.BatchNorm2d(cfg.fpn_channels) for _ in range(num_levels))
        else:
            norm = make_norm("gn", cfg.fpn_channels, cfg.gn_groups)
        layers += [conv, norm, nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _run_tower(tower: nn.Sequential, x: Tensor, level_index: int) -> Tensor:
    for layer in tower:
        x = layer[level_index](x) if isinstance(layer, nn.ModuleList) else layer(x)
    return x


class FCOSHead(nn.Module):
    """Classification / box / centre-ness predictors on top of the towers.

    Each level runs the share tower (``share_convs``, empty in R_50), then the cls and box
    towers on its output (``head_convs`` each, empty in the real-time models).

    Args:
        x (Tensor[N, F, h, w]): one FPN level.
        level_index (int): position of that level in the pyramid (selects a BN head's norms).

    Returns:
        tuple: logits [N, C, h, w], box regression [N, 4, h, w] (ReLU'd, in units of the
        level's stride), centre-ness logits [N, 1, h, w], and the box tower's output
        [N, F, h, w] that the attention conv reads.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        levels = len(cfg.fpn_levels)
        self.cls_tower = _tower(cfg, cfg.head_convs, levels)
        self.bbox_tower = _tower(cfg, cfg.head_convs, levels)
        self.share_tower = _tower(cfg, cfg.share_convs, levels)
        self.cls_logits = nn.Conv2d(cfg.fpn_channels, cfg.num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(cfg.fpn_channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(cfg.fpn_channels, 1, 3, padding=1)
        for conv in (self.cls_logits, self.bbox_pred, self.ctrness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        # Focal-loss prior: every location starts as background with probability 1 - prior.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - cfg.prior_prob) / cfg.prior_prob))

    def forward(self, x: Tensor, level_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = _run_tower(self.share_tower, x, level_index)
        cls_feat = _run_tower(self.cls_tower, x, level_index)
        box_feat = _run_tower(self.bbox_tower, x, level_index)
        return self.cls_logits(cls_feat), F.relu(self.bbox_pred(box_feat)), self.ctrness(box_feat), box_feat


class FCOS(nn.Module):
    """Container named ``proposal_generator`` in the checkpoint; holds ``fcos_head``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fcos_head = FCOSHead(cfg)
