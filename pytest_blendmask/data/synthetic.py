"""Procedural instance-segmentation images: shapes on cluttered backgrounds, exact masks.

Every image is a pure function of ``(seed, index, height, width)``: its random stream is
``np.random.default_rng([seed, index])``, so any image of a split can be regenerated alone and
training can stream images without touching the disk. Bump ``GENERATOR_VERSION`` whenever the
output for a given key changes; cached splits and model cards carry it.

Images are uint8[H, W, 3] in **BGR** order, the detectron2 / AdelaiDet input format. Instances
are listed back to front; each mask holds only the pixels of that object left visible by the
objects painted after it, so masks of one image never overlap.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .shapes import NUM_CLASSES, random_fill, random_shape, rasterize, render_fill

GENERATOR_VERSION = 1

# Distinct seeds keep the evaluation images out of the training stream.
TRAIN_SEED = 1
EVAL_SEED = 20260003

MAX_OBJECTS = 8
# An object hidden or cut off below this many pixels cannot be recognised, so it is not
# annotated; placement (below) also refuses to hide more than MIN_VISIBLE_FRACTION of one.
MIN_VISIBLE_AREA = 30
MIN_VISIBLE_FRACTION = 0.3
_PLACEMENT_TRIES = 6
_MIN_SIDE = 32


class Instance(NamedTuple):
    """One annotated object: contiguous class id (0..NUM_CLASSES-1) and visible mask bool[H, W]."""

    class_id: int
    mask: np.ndarray


class Sample(NamedTuple):
    """One generated image (uint8[H, W, 3], BGR) and its instances, back to front."""

    image: np.ndarray
    instances: list[Instance]


class TrainSample(NamedTuple):
    """Arrays ready for ``torch.from_numpy`` (all C-contiguous), M instances.

    Attributes:
        image: uint8[H, W, 3], BGR.
        classes: int64[M], contiguous class ids.
        boxes: float32[M, 4], ``(x1, y1, x2, y2)`` pixel edges enclosing the mask
            (x2 = last column + 1), matching the COCO ``[x, y, w, h]`` of the same mask.
        masks: bool[M, H, W].
    """

    image: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


def generate_sample(seed: int, index: int, height: int = 512, width: int = 512) -> Sample:
    """Generate image ``index`` of the stream ``seed``.

    Painting order: gradient background, soft blobs and thin lines (clutter that is never
    annotated), 1..MAX_OBJECTS shapes (later ones occlude earlier ones), Gaussian noise.
    """
    if min(height, width) < _MIN_SIDE:
        raise ValueError(f"image side must be >= {_MIN_SIDE} px, got {height}x{width}")
    rng = np.random.default_rng([seed, index])
    image = _background(rng, height, width)
    _add_blobs(rng, image)
    _add_lines(rng, image)
    owner, classes = _add_objects(rng, image)
    sigma = rng.uniform(2.0, 9.0)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    bgr = np.ascontiguousarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)[..., ::-1])
    return Sample(bgr, [Instance(c, owner == k) for k, c in enumerate(classes)])


def iter_samples(
    seed: int = TRAIN_SEED, start: int = 0, count: int | None = None, size: int = 512
) -> Iterator[TrainSample]:
    """Stream square training images ``start, start + 1, ...`` of ``seed`` in memory.

    ``count=None`` streams forever, for iteration-based training schedules.
    """
    index = start
    while count is None or index < start + count:
        yield to_train_sample(generate_sample(seed, index, size, size))
        index += 1


def to_train_sample(sample: Sample) -> TrainSample:
    """Stack a ``Sample``'s instances into class, box and mask arrays."""
    height, width = sample.image.shape[:2]
    masks = np.zeros((len(sample.instances), height, width), dtype=bool)
    boxes = np.zeros((len(sample.instances), 4), dtype=np.float32)
    for i, inst in enumerate(sample.instances):
        masks[i] = inst.mask
        boxes[i] = mask_to_box(inst.mask)
    classes = np.array([inst.class_id for inst in sample.instances], dtype=np.int64)
    return TrainSample(sample.image, classes, boxes, masks)


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tightest ``(x1, y1, x2, y2)`` pixel-edge box around a non-empty bool[H, W] mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise ValueError("mask_to_box: empty mask has no box")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Linear gradient between two random colours in a random direction, float32[H, W, 3] RGB."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    xs = np.arange(width, dtype=np.float32)[None, :] * np.float32(math.cos(theta))
    ys = np.arange(height, dtype=np.float32)[:, None] * np.float32(math.sin(theta))
    t = xs + ys
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return c0 + t[..., None] * (c1 - c0)


def _add_blobs(rng: np.random.Generator, image: np.ndarray) -> None:
    """Blend 2..7 soft-edged elliptical blobs into ``image``.

    Their Gaussian fall-off has no edge, which keeps them visibly unlike the hard-edged
    shapes: they are distractors, not unlabelled objects.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    for _ in range(rng.integers(2, 8)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        sx, sy = rng.uniform(0.03, 0.15, size=2) * side
        theta = rng.uniform(0, math.pi)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        peak = rng.uniform(0.25, 0.7)
        reach = 3 * max(sx, sy)
        x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
        y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        alpha = (peak * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)))[..., None]
        patch = image[y0:y1, x0:x1]
        patch += alpha * (colour - patch)


def _add_lines(rng: np.random.Generator, image: np.ndarray) -> None:
    """Draw 1..5 thin (1-3 px) straight lines across ``image``; too thin to pass for a shape."""
    height, width = image.shape[:2]
    for _ in range(rng.integers(1, 6)):
        (xa, xb), (ya, yb) = rng.uniform(0, width, size=2), rng.uniform(0, height, size=2)
        half = rng.uniform(0.5, 1.5)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        x0, x1 = max(0, int(min(xa, xb) - 2)), min(width, int(max(xa, xb) + 3))
        y0, y1 = max(0, int(min(ya, yb) - 2)), min(height, int(max(ya, yb) + 3))
        px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        # Distance from each pixel centre to the segment: project, clamp to the ends.
        dx, dy = xb - xa, yb - ya
        t = np.clip(((px - xa) * dx + (py - ya) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        on_line = (px - xa - t * dx) ** 2 + (py - ya - t * dy) ** 2 <= half * half
        image[y0:y1, x0:x1][on_line] = colour


def _add_objects(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Paint up to MAX_OBJECTS shapes into ``image`` (RGB float32), back to front.

    A placement is retried when the new shape would show fewer than MIN_VISIBLE_AREA pixels
    itself, or would leave an earlier object fewer than MIN_VISIBLE_AREA pixels or less than
    MIN_VISIBLE_FRACTION of its area; after _PLACEMENT_TRIES the object is skipped. So every
    painted object stays recognisable and is annotated, and no unannotated fragment is left.

    Returns:
        owner: int16[H, W], index of the object that shows at each pixel, -1 for background.
        classes: class id of each object, in painting order.
    """
    height, width = image.shape[:2]
    owner = np.full((height, width), -1, dtype=np.int16)
    classes: list[int] = []
    colours: list[np.ndarray] = []
    full_area: list[int] = []
    visible: list[int] = []
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        class_id = int(rng.integers(NUM_CLASSES))
        for _ in range(_PLACEMENT_TRIES):
            shape = random_shape(rng, class_id, height, width)
            mask = rasterize(shape, height, width)
            area = int(np.count_nonzero(mask))
            hidden = np.bincount(owner[mask] + 1, minlength=len(classes) + 1)[1:]
            left = np.asarray(visible, dtype=np.int64) - hidden
            floor = np.maximum(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * np.asarray(full_area))
            if area >= MIN_VISIBLE_AREA and np.all(left >= floor):
                break
        else:
            continue
        centre = image[min(int(shape.cy), height - 1), min(int(shape.cx), width - 1)]
        beneath = [colours[j] for j in np.flatnonzero(hidden)]
        fill = random_fill(rng, [centre.copy(), *beneath])
        ys, xs = np.nonzero(mask)
        image[ys, xs] = render_fill(fill, ys, xs, rng)
        owner[mask] = len(classes)
        classes.append(class_id)
        colours.append(np.asarray(fill.colour))
        full_area.append(area)
        visible = [*left.tolist(), area]
    return owner, classes
