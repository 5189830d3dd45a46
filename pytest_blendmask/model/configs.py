"""Named BlendMask configurations: the released R_50 / R_101 layouts and the shrunk `lite`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

NORMS = ("frozen_bn", "bn", "gn")
COCO_CLASS_COUNT = 80
SHAPE_CLASS_NAMES = ("circle", "square", "triangle", "star", "ring", "cross")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the network's layout and its inference constants.

    ``norm`` switches every normalisation slot at once: ``frozen_bn`` is the released model
    (FrozenBN backbone, BN basis module, GN head), ``bn`` makes all of them BatchNorm (the
    head gets one BN per FPN level, as AdelaiDet's BN head does) and ``gn`` makes all of them
    GroupNorm. Seed 000's "GN -> BN" optimisation step is ``gn`` -> ``bn``.
    """

    name: str
    stage_blocks: tuple[int, int, int, int]
    stem_width: int = 64
    bottleneck_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    deform_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)
    deform_interval: int = 3
    fpn_channels: int = 256
    top_levels: int = 2
    num_classes: int = COCO_CLASS_COUNT
    class_names: tuple[str, ...] = tuple(f"class_{i}" for i in range(COCO_CLASS_COUNT))
    head_convs: int = 4
    gn_groups: int = 32
    basis_channels: int = 128
    basis_convs: int = 3
    num_bases: int = 4
    attn_size: int = 14
    bottom_resolution: int = 56
    pooler_scale: float = 0.25
    score_threshold: float = 0.05
    pre_nms_topk: int = 1000
    nms_threshold: float = 0.6
    post_nms_topk: int = 100
    prior_prob: float = 0.01
    norm: str = "frozen_bn"
    input_size: int = 640
    pixel_mean: tuple[float, float, float] = (103.530, 116.280, 123.675)  # BGR
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size_divisibility: int = 32

    @property
    def out_widths(self) -> tuple[int, ...]:
        """Output channels of res2..res5 (4x the bottleneck width)."""
        return tuple(4 * w for w in self.bottleneck_widths)

    @property
    def fpn_levels(self) -> tuple[int, ...]:
        """FPN levels as log2(stride): P3..P5 plus the top block's levels."""
        return tuple(range(3, 6 + self.top_levels))

    @property
    def fpn_strides(self) -> tuple[int, ...]:
        return tuple(2**level for level in self.fpn_levels)

    @property
    def attn_channels(self) -> int:
        """Channels of the attention conv: K bases x A x A (784 for the released model)."""
        return self.num_bases * self.attn_size**2


_CONFIGS = {
    "R_50": ModelConfig(name="R_50", stage_blocks=(3, 4, 6, 3)),
    "R_101": ModelConfig(name="R_101", stage_blocks=(3, 4, 23, 3)),
    "R_101_dcni3": ModelConfig(
        name="R_101_dcni3", stage_blocks=(3, 4, 23, 3), deform_stages=(False, True, True, True)
    ),
    # Same rules, shrunk so a 512x512 forward fits the 2-core CI machine's budget.
    "lite": ModelConfig(
        name="lite",
        stage_blocks=(1, 1, 2, 1),
        stem_width=32,
        bottleneck_widths=(16, 32, 64, 128),
        fpn_channels=64,
        num_classes=len(SHAPE_CLASS_NAMES),
        class_names=SHAPE_CLASS_NAMES,
        head_convs=2,
        gn_groups=16,
        basis_channels=64,
        basis_convs=2,
        input_size=512,
    ),
}
CONFIG_NAMES = tuple(_CONFIGS)


def get_config(name: str, norm: str | None = None) -> ModelConfig:
    """The named configuration, with ``norm`` overridden when given."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown BlendMask config {name!r}; expected one of {', '.join(CONFIG_NAMES)}")
    cfg = _CONFIGS[name]
    if norm is None:
        return cfg
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    return dataclasses.replace(cfg, norm=norm)
