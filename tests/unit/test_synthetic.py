"""Tests of the synthetic data set: determinism, exact masks, COCO export, the split cache."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO

from pytest_blendmask.data import (
    ANNOTATIONS_FILE,
    CLASS_NAMES,
    GENERATOR_VERSION,
    MIN_VISIBLE_AREA,
    NUM_CLASSES,
    category_id,
    default_data_root,
    ensure_split,
    generate_sample,
    iter_samples,
    load_split,
    mask_to_box,
    read_image,
)
from pytest_blendmask.data import coco as coco_mod
from pytest_blendmask.data.shapes import Shape, rasterize

SIZE = 96  # small images keep the suite fast; the generator has no size-specific paths


def _sample_bytes(seed: int, index: int) -> bytes:
    sample = generate_sample(seed, index, SIZE, SIZE)
    parts = [sample.image.tobytes()]
    for inst in sample.instances:
        parts += [bytes([inst.class_id]), np.packbits(inst.mask).tobytes()]
    return b"".join(parts)


def test_same_seed_and_index_give_identical_bytes() -> None:
    assert _sample_bytes(3, 7) == _sample_bytes(3, 7)


@pytest.mark.parametrize("other", [(3, 8), (4, 7)], ids=["other-index", "other-seed"])
def test_other_seed_or_index_gives_another_image(other: tuple[int, int]) -> None:
    assert _sample_bytes(3, 7) != _sample_bytes(*other)


def test_image_is_contiguous_bgr_uint8() -> None:
    image = generate_sample(0, 0, 64, 80).image
    assert image.shape == (64, 80, 3)
    assert image.dtype == np.uint8
    # torch.from_numpy rejects the negative strides an un-copied RGB->BGR flip would leave.
    assert image.flags.c_contiguous


def test_tiny_image_is_rejected_with_its_size() -> None:
    with pytest.raises(ValueError, match="16x64"):
        generate_sample(0, 0, 16, 64)


def _analytic_area(class_id: int, r: float, k: float) -> float:
    name = CLASS_NAMES[class_id]
    return {
        "circle": math.pi * r * r,
        "square": 2 * r * r,  # side r * sqrt(2)
        "triangle": 3 * math.sqrt(3) / 4 * r * r,
        "star": 5 * r * (r * k) * math.sin(math.pi / 5),  # ten triangles (r, r*k, 36 deg)
        "ring": math.pi * r * r * (1 - k * k),
        "cross": 2 * (2 * r) * (2 * r * k) - (2 * r * k) ** 2,
    }[name]


@pytest.mark.parametrize("class_id", range(NUM_CLASSES), ids=CLASS_NAMES)
@pytest.mark.parametrize("angle", [0.0, 0.7])
def test_rasterised_area_matches_the_geometry(class_id: int, angle: float) -> None:
    inner = {"star": 0.45, "ring": 0.6, "cross": 0.3}.get(CLASS_NAMES[class_id], 0.0)
    shape = Shape(class_id, cx=100.3, cy=99.6, radius=80.0, angle=angle, inner=inner)
    mask = rasterize(shape, 200, 200)
    expected = _analytic_area(class_id, 80.0, inner)
    assert abs(mask.sum() - expected) / expected < 0.01
    # The centre pixel is inside every class but the ring, whose centre is the hole.
    assert mask[99, 100] == (CLASS_NAMES[class_id] != "ring")


def test_shape_cut_by_the_border_keeps_only_pixels_inside_the_image() -> None:
    shape = Shape(0, cx=0.0, cy=0.0, radius=20.0, angle=0.0, inner=0.0)
    mask = rasterize(shape, 50, 50)
    ys, xs = np.nonzero(mask)
    assert ((xs + 0.5) ** 2 + (ys + 0.5) ** 2 <= 400).all()
    assert abs(mask.sum() - math.pi * 400 / 4) < 0.05 * math.pi * 400 / 4


def _samples(n: int, seed: int = 11) -> list:
    return [generate_sample(seed, i, SIZE, SIZE) for i in range(n)]


def test_masks_are_visible_pixels_only_disjoint_and_large_enough() -> None:
    for sample in _samples(30):
        assert 1 <= len(sample.instances)
        stacked = np.stack([inst.mask for inst in sample.instances])
        # A pixel belongs to at most one instance: the occluded object loses it.
        assert stacked.sum(axis=0).max() == 1
        assert (stacked.sum(axis=(1, 2)) >= MIN_VISIBLE_AREA).all()


def test_objects_do_overlap_in_some_images() -> None:
    def touching(a: np.ndarray, b: np.ndarray) -> bool:
        grown = a | np.roll(a, 1, 0) | np.roll(a, -1, 0) | np.roll(a, 1, 1) | np.roll(a, -1, 1)
        return bool((grown & b).any())

    pairs = sum(
        touching(a.mask, b.mask)
        for s in _samples(30)
        for i, a in enumerate(s.instances)
        for b in s.instances[i + 1:]
    )
    assert pairs >= 3


def test_all_classes_appear_within_50_images() -> None:
    seen = {inst.class_id for s in _samples(50, seed=5) for inst in s.instances}
    assert seen == set(range(NUM_CLASSES))


def test_iter_samples_streams_the_same_images_as_arrays() -> None:
    samples = list(iter_samples(seed=2, start=10, count=3, size=SIZE))
    assert len(samples) == 3
    for i, ts in enumerate(samples):
        ref = generate_sample(2, 10 + i, SIZE, SIZE)
        assert np.array_equal(ts.image, ref.image)
        m = len(ref.instances)
        assert ts.classes.dtype == np.int64 and ts.classes.shape == (m,)
        assert ts.boxes.dtype == np.float32 and ts.boxes.shape == (m, 4)
        assert ts.masks.dtype == np.bool_ and ts.masks.shape == (m, SIZE, SIZE)
        for arr in ts:
            assert arr.flags.c_contiguous
        for box, mask in zip(ts.boxes, ts.masks):
            x1, y1, x2, y2 = box.astype(int)
            assert mask[y1:y2, x1:x2].sum() == mask.sum()  # the box encloses the mask
            assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()  # and is tight


def test_mask_to_box_of_empty_mask_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(np.zeros((4, 4), dtype=bool))


def test_coco_split_round_trips_masks_images_and_boxes(tmp_path) -> None:
    path = ensure_split("unit", num_images=4, seed=9, size=SIZE, root=tmp_path)
    coco = COCO(str(path / ANNOTATIONS_FILE))
    split = load_split(path)
    assert [c["name"] for c in split.coco["categories"]] == list(CLASS_NAMES)
    assert split.coco["info"]["generator_version"] == GENERATOR_VERSION
    assert len(split.image_paths) == 4
    for index, image_path in enumerate(split.image_paths):
        sample = generate_sample(9, index, SIZE, SIZE)
        # PNG is lossless and RGB on disk; read_image gives back the generator's BGR array.
        assert np.array_equal(read_image(image_path), sample.image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
        assert len(anns) == len(sample.instances)
        for ann, inst in zip(anns, sample.instances):
            assert np.array_equal(coco.annToMask(ann).astype(bool), inst.mask)
            assert ann["category_id"] == category_id(inst.class_id)
            x1, y1, x2, y2 = mask_to_box(inst.mask)
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert ann["area"] == inst.mask.sum()
            assert ann["iscrowd"] == 0


def test_a_shorter_split_is_the_start_of_a_longer_one(tmp_path) -> None:
    # The acceptance suite generates only the images it evaluates (the first 50 of the card's 200).
    short, long = (load_split(ensure_split("unit", num_images=n, seed=3, size=64, root=tmp_path)) for n in (2, 3))
    assert [p.read_bytes() for p in short.image_paths] == [p.read_bytes() for p in long.image_paths[:2]]
    assert short.coco["images"] == long.coco["images"][:2]
    assert short.coco["annotations"] == [a for a in long.coco["annotations"] if a["image_id"] <= 2]


def test_second_call_reuses_the_cache_without_generating(tmp_path, monkeypatch) -> None:
    first = ensure_split("unit", num_images=2, seed=1, size=64, root=tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("cached split was regenerated")

    monkeypatch.setattr(coco_mod, "generate_sample", fail)
    assert ensure_split("unit", num_images=2, seed=1, size=64, root=tmp_path) == first
    assert first.name == f"unit-v{GENERATOR_VERSION}-s1-n2-64"


def test_interrupted_write_leaves_no_partial_split(tmp_path, monkeypatch) -> None:
    real_write = coco_mod._write_png
    calls = []

    def write_then_crash(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C mid-generation raises
        real_write(path, image)

    monkeypatch.setattr(coco_mod, "_write_png", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_split("unit", num_images=5, seed=1, size=64, root=tmp_path)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(coco_mod, "_write_png", real_write)
    path = ensure_split("unit", num_images=5, seed=1, size=64, root=tmp_path)
    assert len(json.loads((path / ANNOTATIONS_FILE).read_text())["images"]) == 5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_default_data_root_follows_bm_cache_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BM_CACHE_DIR", str(tmp_path))
    assert default_data_root() == tmp_path / "data"
