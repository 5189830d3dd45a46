"""Synthetic splits on disk in COCO instance-segmentation format, generated on demand, cached.

A split directory holds ``annotations.json`` (COCO: images, annotations with RLE masks,
categories) and ``images/NNNNNN.png``. PNG files store **RGB**, as the PNG format and every
image viewer expect; ``read_image`` returns the BGR array the model takes, identical to what
``generate_sample`` produced.

COCO category ids are ``class_id + 1`` (``category_id``), because COCO tools treat ids as
labels starting at 1; the model's contiguous class ids are 0-based.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..cache_dir import cache_root
from .shapes import CLASS_NAMES
from .synthetic import EVAL_SEED, GENERATOR_VERSION, Instance, generate_sample

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
EVAL_NUM_IMAGES = 200
EVAL_SIZE = 512


class Split(NamedTuple):
    """A loaded split: the COCO dict and the image paths in image-id order."""

    coco: dict[str, Any]
    image_paths: list[Path]


def category_id(class_id: int) -> int:
    """COCO category id of a contiguous class id."""
    return class_id + 1


def categories() -> list[dict[str, Any]]:
    """The COCO ``categories`` list of the synthetic classes."""
    return [
        {"id": category_id(i), "name": name, "supercategory": "shape"}
        for i, name in enumerate(CLASS_NAMES)
    ]


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a bool[H, W] mask, with ``counts`` as str so it is JSON-serialisable."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def instance_annotations(
    instances: list[Instance], image_id: int, first_id: int
) -> list[dict[str, Any]]:
    """COCO annotations of one image's instances, ids ``first_id, first_id + 1, ...``.

    ``bbox`` and ``area`` come from pycocotools on the RLE itself, so they agree with what
    COCOeval computes from the same segmentation.
    """
    anns = []
    for offset, inst in enumerate(instances):
        rle = encode_mask(inst.mask)
        anns.append({
            "id": first_id + offset,
            "image_id": image_id,
            "category_id": category_id(inst.class_id),
            "segmentation": rle,
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
        })
    return anns


def write_split(out_dir: Path, name: str, num_images: int, seed: int, size: int) -> None:
    """Generate images ``0..num_images-1`` of ``seed`` at ``size`` x ``size`` into ``out_dir``.

    Not atomic by itself; ``ensure_split`` calls it on a temporary directory.
    """
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        sample = generate_sample(seed, index, size, size)
        file_name = f"{index:06d}.png"
        _write_png(out_dir / IMAGES_DIR / file_name, sample.image)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size,
                       "seed": seed, "index": index})
        annotations += instance_annotations(sample.instances, image_id, len(annotations) + 1)
    coco = {
        "info": {
            "description": f"pytest-blendmask synthetic shapes, split {name!r}",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "numpy_version": np.__version__,
            "channel_order_on_disk": "RGB",
        },
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    (out_dir / ANNOTATIONS_FILE).write_text(json.dumps(coco))


def default_data_root() -> Path:
    """Where splits are cached: ``data`` under ``cache_dir.cache_root()`` (``$BM_CACHE_DIR``, else ``.bm_cache``)."""
    return cache_root() / "data"


def split_dir_name(name: str, num_images: int, seed: int, size: int) -> str:
    """Cache directory name; every input of the content is in it, so a stale split is never reused."""
    return f"{name}-v{GENERATOR_VERSION}-s{seed}-n{num_images}-{size}"


def ensure_split(
    name: str = "eval",
    num_images: int = EVAL_NUM_IMAGES,
    seed: int = EVAL_SEED,
    size: int = EVAL_SIZE,
    root: Path | None = None,
) -> Path:
    """Return the directory of the split, generating it first if it is not cached.

    The split is written to a temporary sibling directory and renamed into place, so an
    interrupted run leaves no half-written split behind. If another process (an xdist worker)
    finished the same split first, its copy is kept and ours discarded.

    Args:
        root: directory holding the cached splits; ``default_data_root()`` when None.
    """
    root = Path(root) if root is not None else default_data_root()
    final = root / split_dir_name(name, num_images, seed, size)
    if (final / ANNOTATIONS_FILE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp's private 0700 would survive the rename
        write_split(tmp, name, num_images, seed, size)
        try:
            tmp.rename(final)
        except OSError:
            # Lost the race to a concurrent writer: its split is identical, use it.
            if not (final / ANNOTATIONS_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_split(path: Path) -> Split:
    """Read a split directory written by ``ensure_split``.

    For pycocotools, wrap the dict: ``c = COCO(); c.dataset = split.coco; c.createIndex()``,
    or pass ``path / ANNOTATIONS_FILE`` to ``COCO``.
    """
    path = Path(path)
    coco = json.loads((path / ANNOTATIONS_FILE).read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])
    return Split(coco, [path / IMAGES_DIR / im["file_name"] for im in images])


def read_image(path: Path) -> np.ndarray:
    """Read a split's PNG (RGB on disk) as the model's input layout, uint8[H, W, 3] BGR."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


def _write_png(path: Path, bgr: np.ndarray) -> None:
    # compress_level=1: the noise makes images nearly incompressible, so higher levels cost
    # several times the encode time for a few percent of disk.
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).save(path, compress_level=1)
