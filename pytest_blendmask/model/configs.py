"""Named BlendMask configurations: AdelaiDet's released model zoo and the shrunk `lite`.

Each released name is the AdelaiDet config file it mirrors (``configs/BlendMask/<name>.yaml``);
the comments in ``_CONFIGS`` give the yaml key each setting comes from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

NORMS = ("frozen_bn", "bn", "gn")
COCO_CLASS_COUNT = 80
# COCO 2017's 80 thing categories in category-id order, and their ids (1..90, with gaps): the
# classes the released weights detect, class id i being COCO category COCO_CATEGORY_IDS[i]
# (detectron2's contiguous ids, which AdelaiDet's weights were trained with).
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
SHAPE_CLASS_NAMES = ("circle", "square", "triangle", "star", "ring", "cross")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the network's layout and its inference constants.

    ``norm`` switches every normalisation slot at once: ``frozen_bn`` is FrozenBN backbone,
    BN basis module and GN head (the released R_50, R_101 and 550 models), ``bn`` makes all of
    them BatchNorm (the head gets one BN per FPN level, as AdelaiDet's BN head does; the
    released RT bn-head model) and ``gn`` makes all of them GroupNorm. Seed 000's "GN -> BN"
    optimisation step is ``gn`` -> ``bn``.
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
    class_names: tuple[str, ...] = COCO_CLASS_NAMES
    category_ids: tuple[int, ...] = COCO_CATEGORY_IDS  # the dataset category id of each class id
    head_convs: int = 4  # convs of the cls tower and of the box tower each
    share_convs: int = 0  # convs of the tower both read, run first
    gn_groups: int = 32
    basis_channels: int = 128
    basis_convs: int = 3
    num_bases: int = 4
    seg_head: bool = True  # the auxiliary semantic head of BASIS_MODULE.LOSS_ON (training only)
    attn_size: int = 14
    bottom_resolution: int = 56
    pooler_scale: float = 0.25
    pooler_sampling_ratio: int = 1  # BLENDMASK.POOLER_SAMPLING_RATIO
    pooler_aligned: bool = True  # BLENDMASK.POOLER_TYPE: ROIAlignV2, roi_align(aligned=True)
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


_R_50_BLOCKS = (3, 4, 6, 3)  # RESNETS.DEPTH: 50
_R_101_BLOCKS = (3, 4, 23, 3)  # RESNETS.DEPTH: 101

_CONFIGS = {
    "R_50": ModelConfig(name="R_50", stage_blocks=_R_50_BLOCKS),
    "R_101": ModelConfig(name="R_101", stage_blocks=_R_101_BLOCKS),
    "R_101_dcni3": ModelConfig(
        name="R_101_dcni3", stage_blocks=_R_101_BLOCKS, deform_stages=(False, True, True, True)
    ),
    # Keys the real-time yamls leave unset (bases, attention size, FPN width, test thresholds,
    # BASIS_MODULE.LOSS_ON: True from Base-BlendMask) keep the values R_50 has.
    "550_R_50_3x": ModelConfig(
        name="550_R_50_3x",
        stage_blocks=_R_50_BLOCKS,
        top_levels=1,  # Base-550: FCOS.TOP_LEVELS: 1 (P3-P6, no p7 conv)
        head_convs=0,  # Base-550: FCOS.NUM_CLS_CONVS: 0, NUM_BOX_CONVS: 0
        share_convs=3,  # Base-550: FCOS.NUM_SHARE_CONVS: 3
        basis_convs=2,  # Base-550: BASIS_MODULE.NUM_CONVS: 2
        input_size=550,  # Base-550: INPUT.MIN_SIZE_TEST: 550 (MAX_SIZE_TEST: 916)
    ),
    "RT_R_50_4x_bn-head_syncbn_shtw": ModelConfig(
        name="RT_R_50_4x_bn-head_syncbn_shtw",
        stage_blocks=_R_50_BLOCKS,
        top_levels=0,  # Base-RT: FCOS.TOP_LEVELS: 0 (P3-P5, no top block)
        head_convs=0,  # RT_R_50_4x_syncbn_shtw: FCOS.NUM_CLS_CONVS: 0, NUM_BOX_CONVS: 0
        share_convs=3,  # RT_R_50_4x_syncbn_shtw: FCOS.NUM_SHARE_CONVS: 3
        basis_convs=2,  # RT_R_50_4x_syncbn_shtw: BASIS_MODULE.NUM_CONVS: 2
        # RESNETS.NORM: SyncBN with FREEZE_AT: -1 (RT_R_50_4x_syncbn_shtw), FCOS.NORM: SyncBN
        # (this file), BASIS_MODULE.NORM: SyncBN (default): SyncBN is BN at inference.
        norm="bn",
        input_size=512,  # Base-RT: INPUT.MIN_SIZE_TEST: 512 (MAX_SIZE_TEST: 736)
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
        category_ids=tuple(range(1, len(SHAPE_CLASS_NAMES) + 1)),  # data/coco.py category_id
        head_convs=2,
        gn_groups=16,
        basis_channels=64,
        basis_convs=2,
        seg_head=False,  # trained here without the auxiliary semantic loss
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
