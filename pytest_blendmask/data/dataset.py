"""A user's COCO-format dataset (``--bm-dataset``): loaded and checked once, split, letterboxed.

``load_dataset`` reads an annotation JSON and finds its image folder; every problem a user can
fix (a missing file, malformed JSON, an image listed but absent, no images) is a
``DatasetError`` naming the file and the fix. ``class_map`` pairs the dataset's categories with
the model's class ids; ``split`` keeps calibration and evaluation images apart:

- images are ordered by image id;
- the first ``calibration_count(n)`` of the ``n`` images (8, or half of a set smaller than 16)
  calibrate int8 targets and their noise floor;
- the rest are evaluation images, the first ``limit`` of them when a limit is given: the sample
  batch is their first two, the detection level their first ten, the AP level all of them.

Images are letterboxed to the model's input size (``letterbox``): scaled by one factor to fit,
then padded bottom/right with the model's pixel mean, so every batch has the size compiled
targets were built for. ``to_original`` maps detections back to the image's own pixels, where
the ground truth is.

torch is imported here at module level: import this module only when a dataset is given
(``pytest --help`` must not load torch).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .calibration import CalibrationSet

MAX_CALIBRATION_IMAGES = 8  # what the synthetic calibration set holds (atc/ort.py)
MIN_IMAGES = 2  # one to calibrate, one to evaluate
EXPORTER_LAYOUT = "a folder holding annotations.json and images/ (the layout pytest_blendmask.data.ensure_split writes)"
PLACEHOLDER_PREFIX = "class_"  # a model's class name "class_<i>" is no name: it matches any dataset name


class DatasetError(ValueError):
    """A dataset the gate cannot use; the message names the file and the fix."""


@dataclass(frozen=True, eq=False)
class CocoDataset:
    """A COCO-format dataset: its annotation file, its image folder, and the parsed annotations.

    ``images`` are in image-id order; ``categories`` in category-id order.
    """

    annotations: Path
    image_dir: Path
    coco: dict[str, Any]
    images: tuple[dict[str, Any], ...]
    categories: tuple[dict[str, Any], ...]

    def __repr__(self) -> str:
        return f"CocoDataset({str(self.annotations)!r}, {len(self.images)} images in {str(self.image_dir)!r})"

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.image_dir / image["file_name"]

    def split(self, limit: int | None = None) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
        """(calibration images, evaluation images): disjoint, both in image-id order (module docstring)."""
        k = calibration_count(len(self.images))
        return self.images[:k], self.images[k:][:limit]


def calibration_count(num_images: int) -> int:
    """How many of the first images calibrate: 8, or half of a smaller set (at least one evaluates)."""
    return min(MAX_CALIBRATION_IMAGES, num_images // 2)


def _fail(path: Path, problem: str, fix: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}; {fix}")


def _annotation_file(path: Path) -> Path:
    if path.is_dir():
        candidate = path / "annotations.json"
        if not candidate.is_file():
            raise _fail(candidate, "no such file", f"give the annotation JSON itself, or {EXPORTER_LAYOUT}")
        return candidate
    if not path.is_file():
        raise _fail(path, "no such file or folder", f"give a COCO annotation JSON (e.g. instances_val2017.json) or {EXPORTER_LAYOUT}")
    return path


def _image_dir_candidates(annotations: Path) -> list[Path]:
    """Where the images of an annotation file may be: ``images/`` beside it (our exporter), COCO's
    ``<root>/<split>/`` for ``<root>/annotations/instances_<split>.json``, or beside it."""
    candidates = [annotations.parent / "images"]
    if annotations.stem.startswith("instances_"):
        candidates.append(annotations.parent.parent / annotations.stem.removeprefix("instances_"))
    candidates.append(annotations.parent)
    return candidates


def _required_list(coco: Any, key: str, annotations: Path) -> list[Any]:
    if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
        raise _fail(annotations, f"no {key!r} list at the top level",
                    "a COCO instance annotation file has 'images', 'annotations' and 'categories' lists")
    return coco[key]


def _check_entries(entries: list[Any], keys: tuple[str, ...], what: str, annotations: Path) -> None:
    for index, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise _fail(annotations, f"{what}[{index}] has no {', '.join(missing)}",
                        f"every entry of {what!r} needs {', '.join(keys)}")


def load_dataset(path: Path) -> CocoDataset:
    """Read and check a COCO-format dataset: an annotation JSON, or a folder in our exporter's layout.

    Raises:
        DatasetError: a missing file, malformed JSON, a missing key, duplicate ids, zero (or
            one) image, an annotation of an unknown image or category, an image listed but
            absent; the message names the file and the fix.
    """
    annotations = _annotation_file(Path(path))
    try:
        coco = json.loads(annotations.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail(annotations, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                    "give a valid COCO annotation JSON") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(annotations, f"cannot be read: {exc}", "give a readable UTF-8 COCO annotation JSON") from None
    images = _required_list(coco, "images", annotations)
    categories = _required_list(coco, "categories", annotations)
    anns = _required_list(coco, "annotations", annotations)
    _check_entries(images, ("id", "file_name", "height", "width"), "images", annotations)
    _check_entries(categories, ("id", "name"), "categories", annotations)
    _check_entries(anns, ("image_id", "category_id", "bbox"), "annotations", annotations)
    if len(images) < MIN_IMAGES:
        raise _fail(annotations, f"{len(images)} image(s) listed", f"list at least {MIN_IMAGES} images: "
                    "the first calibrates int8 targets, the others are evaluated")
    for what, entries in (("image", images), ("category", categories)):
        ids = [e["id"] for e in entries]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise _fail(annotations, f"{what} id {duplicate} appears twice", f"give every {what} a distinct id")
    image_ids, category_ids = {im["id"] for im in images}, {c["id"] for c in categories}
    for ann in anns:
        if ann["image_id"] not in image_ids:
            raise _fail(annotations, f"an annotation refers to image id {ann['image_id']}, which 'images' does not list",
                        "list the image or drop its annotations")
        if ann["category_id"] not in category_ids:
            raise _fail(annotations, f"an annotation has category id {ann['category_id']}, which 'categories' does not list",
                        "list the category or drop its annotations")
    ordered = tuple(sorted(images, key=lambda im: im["id"]))
    image_dir = _find_image_dir(annotations, ordered)
    return CocoDataset(annotations, image_dir, coco, ordered, tuple(sorted(categories, key=lambda c: c["id"])))


def _find_image_dir(annotations: Path, images: Sequence[dict[str, Any]]) -> Path:
    candidates = _image_dir_candidates(annotations)
    first = images[0]["file_name"]
    image_dir = next((d for d in candidates if (d / first).is_file()), None)
    if image_dir is None:
        looked = ", ".join(str(d / first) for d in candidates)
        raise _fail(annotations, f"image {first!r} (id {images[0]['id']}) is absent: looked for {looked}",
                    f"put the images in {candidates[0]}")
    for image in images:
        if not (image_dir / image["file_name"]).is_file():
            raise _fail(annotations, f"image {image['file_name']!r} (id {image['id']}) is listed but absent from {image_dir}",
                        "add the file or drop the image and its annotations from the JSON")
    return image_dir


def class_map(dataset: CocoDataset, class_names: Sequence[str], category_ids: Sequence[int] | None) -> tuple[int, ...]:
    """The dataset's category id of each of the model's classes: ``result[class_id]``.

    Args:
        class_names: the model's, one per 0-based class id.
        category_ids: the category id the model gives each class (``ModelConfig.category_ids``:
            COCO's 80 ids 1..90 for the COCO configs, 1..6 for lite's shapes); None for a model
            that declares none: then the dataset's ids in increasing order are classes 0, 1, ...
            (detectron2's ``thing_dataset_id_to_contiguous_id``).

    Raises:
        DatasetError: the counts differ, a category id the model cannot produce, or a category
            whose name is not the model's name of that class; the message names both sides.
    """
    names = {c["id"]: str(c["name"]) for c in dataset.categories}
    file = dataset.annotations
    if len(names) != len(class_names):
        raise _fail(file, f"{len(names)} categories ({_list(names.values())}) but the model has {len(class_names)} "
                    f"classes ({_list(class_names)})", "give a dataset of the model's classes, or the model trained on this one")
    ids = tuple(category_ids) if category_ids is not None else tuple(sorted(names))
    unknown = [i for i in names if i not in ids]
    if unknown:
        raise _fail(file, f"category id {unknown[0]} ({names[unknown[0]]!r}) is one the model cannot produce "
                    f"(its category ids: {_list(map(str, ids))})", "renumber the categories to the model's ids")
    for class_id, (cat_id, model_name) in enumerate(zip(ids, class_names)):
        if not _same_name(names[cat_id], model_name):
            raise _fail(file, f"category id {cat_id} is {names[cat_id]!r} but the model's class {class_id} "
                        f"(category id {cat_id}) is {model_name!r}", "give a dataset of the model's classes, in its ids")
    return ids


def _same_name(dataset_name: str, model_name: str) -> bool:
    placeholder = model_name.startswith(PLACEHOLDER_PREFIX) and model_name[len(PLACEHOLDER_PREFIX):].isdigit()
    return placeholder or dataset_name.strip().lower() == model_name.strip().lower()


def _list(items: Any, most: int = 8) -> str:
    items = list(items)
    head = ", ".join(items[:most])
    return head if len(items) <= most else f"{head}, ... ({len(items)} in all)"


def read_bgr(path: Path) -> np.ndarray:
    """Any image PIL reads (grayscale, palette, RGBA, CMYK included) as uint8[H, W, 3] BGR."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


@dataclass(frozen=True)
class Letterboxed:
    """An image scaled into the model's input: ``image`` [3, H, W] BGR uint8, its content in the
    top-left ``content_hw`` (the rest is padding); ``original_hw`` the file's own size."""

    image: Tensor
    content_hw: tuple[int, int]
    original_hw: tuple[int, int]


def letterbox(bgr: np.ndarray, input_hw: tuple[int, int], pad_bgr: Sequence[float] = (0.0, 0.0, 0.0)) -> Letterboxed:
    """Scale ``bgr`` (uint8[h, w, 3]) by ``s = min(H / h, W / w)`` (bilinear) and pad it bottom/right
    with ``pad_bgr`` (rounded) to ``input_hw`` = (H, W)."""
    height, width = input_hw
    h, w = bgr.shape[:2]
    scale = min(height / h, width / w)
    content = (min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale))))
    if content != (h, w):
        rgb = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).resize(content[::-1], Image.BILINEAR)
        bgr = np.ascontiguousarray(np.asarray(rgb)[..., ::-1])
    out = torch.empty(3, height, width, dtype=torch.uint8)
    out[:] = torch.tensor([round(v) for v in pad_bgr], dtype=torch.uint8).view(3, 1, 1)
    out[:, : content[0], : content[1]] = torch.from_numpy(bgr).permute(2, 0, 1)
    return Letterboxed(out, content, (h, w))


def load_images(dataset: CocoDataset, images: Sequence[dict[str, Any]], input_hw: tuple[int, int],
                pad_bgr: Sequence[float] = (0.0, 0.0, 0.0)) -> list[Letterboxed]:
    """The ``images`` (entries of ``dataset.images``) read and letterboxed to ``input_hw``.

    Raises:
        DatasetError: an image whose size is not the one its entry lists.
    """
    out = []
    for image in images:
        bgr = read_bgr(dataset.image_path(image))
        if bgr.shape[:2] != (image["height"], image["width"]):
            raise _fail(dataset.annotations, f"image id {image['id']} ({dataset.image_path(image)}) is "
                        f"{bgr.shape[0]}x{bgr.shape[1]} (HxW) but listed as {image['height']}x{image['width']}",
                        "fix its height and width in the JSON")
        out.append(letterbox(bgr, input_hw, pad_bgr))
    return out


def to_original(dets: dict[str, Tensor], content_hw: tuple[int, int], original_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Detections made on a letterboxed image, in the original image's pixels.

    Boxes are clipped to the content and scaled by original / content per axis; masks are cut
    to the content and resized to the original size (nearest), so that they score against the
    dataset's own annotations.
    """
    (ch, cw), (oh, ow) = content_hw, original_hw
    boxes = dets["boxes"].float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw) * (ow / cw)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch) * (oh / ch)
    out = {**dets, "boxes": boxes}
    if "masks" in dets:
        masks = dets["masks"][:, :ch, :cw]
        if (ch, cw) != (oh, ow) and len(masks):
            masks = F.interpolate(masks[:, None].float(), size=(oh, ow), mode="nearest")[:, 0] > 0.5
        elif not len(masks):
            masks = masks.new_zeros((0, oh, ow))
        out["masks"] = masks
    return out


def fingerprint(dataset: CocoDataset, images: Sequence[dict[str, Any]]) -> str:
    """A short digest of ``images``' ids, file names and bytes: names what was calibrated on."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image['id']}:{image['file_name']}:".encode())
        digest.update(dataset.image_path(image).read_bytes())
    return digest.hexdigest()[:12]


def dataset_calibration(dataset: CocoDataset, pad_bgr: Sequence[float] = (0.0, 0.0, 0.0)) -> CalibrationSet:
    """The dataset's calibration images (``split``'s first part), letterboxed at the input size asked for."""
    images, _ = dataset.split()

    def load(input_hw: tuple[int, int]) -> list[Tensor]:
        return [lb.image for lb in load_images(dataset, images, input_hw, pad_bgr)]

    return CalibrationSet(f"coco{fingerprint(dataset, images)}-n{len(images)}", load)
