"""Basis module (AdelaiDet's ProtoNet): K full-image basis maps at stride 4."""
from __future__ import annotations

from torch import Tensor, nn

from .configs import ModelConfig
from .layers import conv_block, resize_to


class Upsample2x(nn.Module):
    """Bilinear x2 (align_corners=False) with an explicit output size, for exporters."""

    def forward(self, x: Tensor) -> Tensor:
        return resize_to(x, (2 * x.shape[-2], 2 * x.shape[-1]), "bilinear")


class BasisModule(nn.Module):
    """Refine P3-P5, sum at stride 8, tower, x2 upsample, one more block, 1x1 to K bases.

    ``seg_head`` holds the training-only semantic head's weights; ``forward`` never runs it.

    Args:
        feats (list[Tensor[N, F, h_l, w_l]]): P3, P4, P5.

    Returns:
        Tensor[N, K, H/4, W/4]: bases.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # The released basis module uses SyncBN, inference-equivalent to BN, even when the
        # backbone is frozen.
        norm = "bn" if cfg.norm == "frozen_bn" else cfg.norm
        ch = cfg.basis_channels
        self.refine = nn.ModuleList(conv_block(cfg.fpn_channels, ch, norm, cfg.gn_groups) for _ in range(3))
        tower: list[nn.Module] = [conv_block(ch, ch, norm, cfg.gn_groups) for _ in range(cfg.basis_convs)]
        tower += [Upsample2x(), conv_block(ch, ch, norm, cfg.gn_groups), nn.Conv2d(ch, cfg.num_bases, 1)]
        self.tower = nn.Sequential(*tower)
        # AdelaiDet's auxiliary semantic head (BASIS_MODULE.LOSS_ON): trained on P3 against
        # the thing/background map, its output is never used at inference, but its weights
        # are in every released checkpoint, so it is built for those files to load strictly.
        # Always BN (not the module's norm) and flat, keys seg_head.{0,1,3,4,6}.*.
        self.seg_head = (
            nn.Sequential(
                *conv_block(cfg.fpn_channels, ch, "bn", cfg.gn_groups),
                *conv_block(ch, ch, "bn", cfg.gn_groups),
                nn.Conv2d(ch, cfg.num_classes + 1, 1),  # + background
            )
            if cfg.seg_head
            else None
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.refine[0](feats[0])
        size = x.shape[-2:]
        for refine, feat in zip(self.refine[1:], feats[1:3]):
            x = x + resize_to(refine(feat), size, "bilinear")
        return self.tower(x)
