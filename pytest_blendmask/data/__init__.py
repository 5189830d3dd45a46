"""Synthetic instance-segmentation data: shapes with exact masks, COCO export, cached splits.

``generate_sample`` makes one image (BGR uint8) and its instance masks from ``(seed, index)``;
``iter_samples`` streams training arrays in memory; ``ensure_split`` writes (once) and returns
a cached COCO-format split, the evaluation set by default; ``load_split`` reads one back;
``synthetic_calibration`` is the default int8 calibration set (``calibration.py``). A user's
COCO-format dataset is ``dataset.py`` (imported on its own: it loads torch).
"""
from .calibration import CalibrationSet, synthetic_calibration
from .coco import (
    ANNOTATIONS_FILE,
    EVAL_NUM_IMAGES,
    EVAL_SIZE,
    Split,
    categories,
    category_id,
    default_data_root,
    encode_mask,
    ensure_split,
    load_split,
    read_image,
)
from .shapes import CLASS_NAMES, NUM_CLASSES
from .synthetic import (
    EVAL_SEED,
    GENERATOR_VERSION,
    MIN_VISIBLE_AREA,
    TRAIN_SEED,
    Instance,
    Sample,
    TrainSample,
    generate_sample,
    iter_samples,
    mask_to_box,
    to_train_sample,
)

__all__ = [
    "ANNOTATIONS_FILE",
    "CalibrationSet",
    "CLASS_NAMES",
    "EVAL_NUM_IMAGES",
    "EVAL_SEED",
    "EVAL_SIZE",
    "GENERATOR_VERSION",
    "MIN_VISIBLE_AREA",
    "NUM_CLASSES",
    "TRAIN_SEED",
    "Instance",
    "Sample",
    "Split",
    "TrainSample",
    "categories",
    "category_id",
    "default_data_root",
    "encode_mask",
    "ensure_split",
    "generate_sample",
    "iter_samples",
    "load_split",
    "mask_to_box",
    "read_image",
    "synthetic_calibration",
    "to_train_sample",
]
