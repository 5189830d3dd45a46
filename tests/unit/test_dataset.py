"""--bm-dataset: a user's COCO-format set for the sample batch, the detection and AP levels and int8 calibration.

Loading and its usage errors, the class map, the calibration/evaluation split, letterboxing and
the way back to the image's pixels, a hand-written COCO JSON read through pycocotools, and real
acceptance runs on a folder written by the project's own synthetic exporter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pytest_blendmask.data import EVAL_SEED
from pytest_blendmask.data.calibration import synthetic_calibration
from pytest_blendmask.data.coco import write_split
from pytest_blendmask.data.dataset import (
    DatasetError,
    calibration_count,
    class_map,
    dataset_calibration,
    letterbox,
    load_dataset,
    load_images,
    to_original,
)
from pytest_blendmask.evaluation import DatasetEval
from pytest_blendmask.model.configs import COCO_CATEGORY_IDS, get_config
from pytest_blendmask.precision.accuracy import coco_ap, detections_to_coco
from pytest_blendmask.settings import resolve_settings

REPO = Path(__file__).resolve().parents[2]
SIZE = 256  # the exported folder's image size, and the runs' --bm-input-size
LIMIT = 12  # evaluation images of the acceptance run


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COCO folder (annotations.json + images/) written by the project's synthetic exporter: 20 images of the evaluation stream."""
    root = tmp_path_factory.mktemp("exported")
    write_split(root, "user", 20, EVAL_SEED, SIZE)
    return root


def _copy(exported: Path, into: Path) -> Path:
    """A writable copy of the exported folder, to break."""
    (into / "images").mkdir(parents=True)
    for image in (exported / "images").iterdir():
        (into / "images" / image.name).write_bytes(image.read_bytes())
    (into / "annotations.json").write_text((exported / "annotations.json").read_text())
    return into


def _edit(folder: Path, change) -> None:
    coco = json.loads((folder / "annotations.json").read_text())
    change(coco)
    (folder / "annotations.json").write_text(json.dumps(coco))


# --- the option and its ini twin -------------------------------------------------------------

def test_the_option_loads_the_dataset_and_its_limit(pytester: pytest.Pytester, exported: Path) -> None:
    settings = resolve_settings(pytester.parseconfig(f"--bm-dataset={exported}", "--bm-dataset-limit=5"))
    assert settings.dataset.annotations == exported / "annotations.json"
    assert settings.dataset.image_dir == exported / "images"
    assert [im["id"] for im in settings.dataset.images] == list(range(1, 21))
    assert settings.dataset_limit == 5
    assert resolve_settings(pytester.parseconfig()).dataset is None


def test_the_ini_twins_are_relative_to_the_ini_file_and_the_command_line_wins(pytester: pytest.Pytester, exported: Path) -> None:
    project = pytester.mkdir("project")
    _copy(exported, project / "data")
    (project / "pytest.ini").write_text("[pytest]\nbm_dataset = data\nbm_dataset_limit = all\n")
    settings = resolve_settings(pytester.parseconfig("-c", str(project / "pytest.ini")))
    assert settings.dataset.annotations == project / "data" / "annotations.json"
    assert settings.dataset_limit is None
    settings = resolve_settings(pytester.parseconfig("-c", str(project / "pytest.ini"), f"--bm-dataset={exported}",
                                                     "--bm-dataset-limit=3"))
    assert (settings.dataset.annotations, settings.dataset_limit) == (exported / "annotations.json", 3)


@pytest.mark.parametrize("value", ["0", "-1", "many", "2.5"])
def test_a_bad_limit_is_a_usage_error(pytester: pytest.Pytester, exported: Path, value: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig(f"--bm-dataset={exported}", f"--bm-dataset-limit={value}"))
    assert str(info.value) == (f"--bm-dataset-limit: expected a positive number of images or all; got {value!r} "
                               "(from command line; ini key bm_dataset_limit)")


def test_a_limit_without_a_dataset_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_dataset_limit = 10\n")
    with pytest.raises(pytest.UsageError, match=r"^--bm-dataset-limit: applies to --bm-dataset only; give --bm-dataset PATH"):
        resolve_settings(pytester.parseconfig())


# --- bad input: usage errors naming the file and the fix ---------------------------------------

def _missing_file(folder: Path) -> Path:
    (folder / "annotations.json").unlink()
    return folder


def _malformed(folder: Path) -> Path:
    (folder / "annotations.json").write_text('{"images": [')
    return folder


def _absent_image(folder: Path) -> Path:
    (folder / "images" / "000004.png").unlink()
    return folder


def _zero_images(folder: Path) -> Path:
    _edit(folder, lambda coco: coco.update(images=[], annotations=[]))
    return folder


def _unlisted_category(folder: Path) -> Path:
    _edit(folder, lambda coco: coco["annotations"][0].update(category_id=42))
    return folder


def _no_height(folder: Path) -> Path:
    _edit(folder, lambda coco: coco["images"][1].pop("height"))
    return folder


BAD_INPUTS = {
    "missing annotation file": (_missing_file, "annotations.json: no such file; give the annotation JSON itself, or a folder holding annotations.json and images/"),
    "malformed JSON": (_malformed, "annotations.json: malformed JSON: Expecting value at line 1 column 13; give a valid COCO annotation JSON"),
    "image listed but absent": (_absent_image, "annotations.json: image '000004.png' (id 5) is listed but absent from {folder}/images; add the file or drop the image and its annotations from the JSON"),
    "zero images": (_zero_images, "annotations.json: 0 image(s) listed; list at least 2 images"),
    "annotation of an unlisted category": (_unlisted_category, "annotations.json: an annotation has category id 42, which 'categories' does not list; list the category"),
    "image entry without height": (_no_height, "annotations.json: images[1] has no height; every entry of 'images' needs id, file_name, height, width"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_usage_error_naming_the_file_and_the_fix(pytester: pytest.Pytester, exported: Path, tmp_path: Path, case: str) -> None:
    breaks, expected = BAD_INPUTS[case]
    folder = breaks(_copy(exported, tmp_path / "data"))
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig(f"--bm-dataset={folder}"))
    message = str(info.value)
    assert message.startswith(f"--bm-dataset: {folder}/"), message
    assert expected.format(folder=folder) in message
    assert message.endswith("(from command line; ini key bm_dataset)")


def test_a_path_that_does_not_exist_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    with pytest.raises(pytest.UsageError) as info:
        resolve_settings(pytester.parseconfig(f"--bm-dataset={tmp_path / 'nowhere.json'}"))
    assert str(info.value).startswith(f"--bm-dataset: {tmp_path / 'nowhere.json'}: no such file or folder; give a COCO annotation JSON")


def test_an_image_whose_size_is_not_the_listed_one_is_named(exported: Path, tmp_path: Path) -> None:
    folder = _copy(exported, tmp_path / "data")
    _edit(folder, lambda coco: coco["images"][9].update(height=100))
    dataset = load_dataset(folder)
    with pytest.raises(DatasetError, match=r"image id 10 .* is 256x256 \(HxW\) but listed as 100x256; fix its height and width"):
        load_images(dataset, dataset.images[9:10], (SIZE, SIZE))


# --- classes ---------------------------------------------------------------------------------

def test_the_exporters_categories_are_lites_classes(exported: Path) -> None:
    lite = get_config("lite")
    assert class_map(load_dataset(exported), lite.class_names, lite.category_ids) == (1, 2, 3, 4, 5, 6)


def test_a_category_id_the_model_cannot_produce_is_named(exported: Path, tmp_path: Path) -> None:
    folder = _copy(exported, tmp_path / "data")
    _edit(folder, lambda coco: coco["categories"][5].update(id=7))
    _edit(folder, lambda coco: [a.update(category_id=7) for a in coco["annotations"] if a["category_id"] == 6])
    lite = get_config("lite")
    with pytest.raises(DatasetError) as info:
        class_map(load_dataset(folder), lite.class_names, lite.category_ids)
    assert str(info.value) == (f"{folder / 'annotations.json'}: category id 7 ('cross') is one the model cannot produce "
                               "(its category ids: 1, 2, 3, 4, 5, 6); renumber the categories to the model's ids")


def test_a_renamed_category_names_both_names(exported: Path, tmp_path: Path) -> None:
    folder = _copy(exported, tmp_path / "data")
    _edit(folder, lambda coco: coco["categories"][1].update(name="box"))
    lite = get_config("lite")
    with pytest.raises(DatasetError, match=r"category id 2 is 'box' but the model's class 1 \(category id 2\) is 'square'"):
        class_map(load_dataset(folder), lite.class_names, lite.category_ids)


def test_the_coco_configs_take_cocos_80_ids_in_order() -> None:
    r50 = get_config("R_50")
    assert (len(r50.class_names), len(r50.category_ids), r50.num_classes) == (80, 80, 80)
    assert r50.category_ids[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13) and r50.category_ids[-1] == 90
    assert (r50.class_names[0], r50.class_names[11], r50.class_names[-1]) == ("person", "stop sign", "toothbrush")


def test_a_class_count_mismatch_stops_the_session_naming_both(pytester: pytest.Pytester, exported: Path) -> None:
    pytester.makepyfile(test_never="def test_never():\n    raise AssertionError('must not run')\n")
    result = pytester.runpytest(f"--bm-dataset={exported}", "--bm-model=R_50", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: --bm-dataset: {exported}/annotations.json: 6 categories (circle, square, triangle, star, ring, cross) "
        "but the model has 80 classes (person, bicycle, car, motorcycle, airplane, bus, train, truck, ... (80 in all)); "
        "give a dataset of the model's classes, or the model trained on this one",
    ])


# --- calibration and evaluation images are kept apart ------------------------------------------

@pytest.mark.parametrize(("total", "calibrating"), [(2, 1), (3, 1), (15, 7), (16, 8), (20, 8), (5000, 8)])
def test_calibration_takes_the_first_images_up_to_eight(total: int, calibrating: int) -> None:
    assert calibration_count(total) == calibrating


@pytest.mark.parametrize("limit", [None, 1, 5, 12, 100])
def test_calibration_and_evaluation_images_are_disjoint(exported: Path, limit: int | None) -> None:
    dataset = load_dataset(exported)
    calibration, evaluation = dataset.split(limit)
    calibration_ids, evaluation_ids = [im["id"] for im in calibration], [im["id"] for im in evaluation]
    assert calibration_ids == list(range(1, 9))
    assert evaluation_ids == list(range(9, 21))[:limit]
    assert not set(calibration_ids) & set(evaluation_ids)
    data = DatasetEval(dataset, (SIZE, SIZE), (1, 2, 3, 4, 5, 6), limit)
    calibration_images = dataset_calibration(dataset).images((SIZE, SIZE))
    for image in data.letterboxed():
        assert not any(torch.equal(image.image, c) for c in calibration_images)


def test_the_dataset_calibration_set_has_its_own_name_and_cached_model(exported: Path, tmp_path: Path) -> None:
    from pytest_blendmask.atc.export import ExportedModel
    from pytest_blendmask.atc.ort import compiled_model_path

    dataset = load_dataset(exported)
    calibration = dataset_calibration(dataset)
    assert calibration.name == dataset_calibration(load_dataset(exported)).name  # a name, not an identity
    other = _copy(exported, tmp_path / "data")
    (other / "images" / "000000.png").write_bytes((other / "images" / "000001.png").read_bytes())
    assert dataset_calibration(load_dataset(other)).name != calibration.name
    model = ExportedModel(tmp_path / "m.onnx", 11, True, ("batch", 3, SIZE, SIZE), ("bases",), None)
    paths = {compiled_model_path(model, "int8", c).name for c in (calibration, synthetic_calibration(), None)}
    assert paths == {f"m.int8-qdq-conv-minmax-w7-{calibration.name}.onnx", "m.int8-qdq-conv-minmax-w7-n8-s1.onnx"}


def test_the_int8_floor_calibrates_on_the_set_it_is_given(monkeypatch: pytest.MonkeyPatch, exported: Path) -> None:
    from pytest_blendmask import noise_floor
    from pytest_blendmask.targets import parse_target

    seen = []
    monkeypatch.setattr(noise_floor, "calibration_batches", lambda model, hw, calibration: seen.append(calibration) or [])
    monkeypatch.setattr(noise_floor, "measure_floor", lambda *args: args[-1])
    calibration = dataset_calibration(load_dataset(exported))
    thresholds = type("T", (), {"tensor": {"int8": None}})()
    run = type("R", (), {"dump": None})()
    noise_floor.target_floor(parse_target("ort:int8"), None, torch.zeros(1, 3, SIZE, SIZE), run, thresholds, calibration)
    assert seen == [calibration]


# --- images: letterbox and back ------------------------------------------------------------------

def test_letterbox_keeps_the_aspect_and_pads_bottom_right() -> None:
    bgr = np.full((100, 200, 3), 200, np.uint8)
    boxed = letterbox(bgr, (256, 256), pad_bgr=(103.53, 116.28, 123.675))
    assert tuple(boxed.image.shape) == (3, 256, 256) and boxed.image.dtype == torch.uint8
    assert (boxed.content_hw, boxed.original_hw) == ((128, 256), (100, 200))
    assert int(boxed.image[:, :128].min()) == 200
    assert boxed.image[:, 128:, 0].T.tolist()[0] == [104, 116, 124]


def test_detections_go_back_to_the_images_pixels() -> None:
    dets = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 300.0]]), "scores": torch.tensor([0.9]),
            "classes": torch.tensor([0]), "masks": torch.zeros(1, 256, 256, dtype=torch.bool)}
    dets["masks"][0, 20:60, 10:50] = True
    back = to_original(dets, (128, 256), (100, 200))
    assert back["boxes"].tolist() == [[pytest.approx(7.8125), pytest.approx(15.625), pytest.approx(39.0625), pytest.approx(100.0)]]
    assert tuple(back["masks"].shape) == (1, 100, 200)
    ys, xs = torch.nonzero(back["masks"][0], as_tuple=True)
    assert (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) == (16, 46, 8, 39)  # nearest: source row/column floor(i * 1.28)


# --- a hand-written COCO JSON, through pycocotools -------------------------------------------------

def _hand_written(root: Path) -> Path:
    """Two images (a grayscale PNG 60x80 and an RGB JPEG 90x45), two categories with COCO's ids 1 and 3, polygons."""
    (root / "val").mkdir(parents=True)
    Image.fromarray(np.full((60, 80), 90, np.uint8), mode="L").save(root / "val" / "gray.png")
    Image.fromarray(np.full((90, 45, 3), (10, 120, 240), np.uint8)).save(root / "val" / "color.jpg", quality=95)
    coco = {
        "images": [{"id": 7, "file_name": "color.jpg", "height": 90, "width": 45},
                   {"id": 3, "file_name": "gray.png", "height": 60, "width": 80}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0,
             "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [5, 40, 20, 40], "area": 800, "iscrowd": 0,
             "segmentation": [[5, 40, 25, 40, 25, 80, 5, 80]]},
        ],
    }
    (root / "annotations").mkdir()
    path = root / "annotations" / "instances_val.json"
    path.write_text(json.dumps(coco))
    return path


def test_a_hand_written_coco_json_loads_and_scores_through_pycocotools(tmp_path: Path) -> None:
    annotations = _hand_written(tmp_path)
    dataset = load_dataset(annotations)
    assert dataset.image_dir == tmp_path / "val"  # COCO's layout: <root>/annotations/instances_<split>.json -> <root>/<split>
    assert [im["id"] for im in dataset.images] == [3, 7]
    calibration, evaluation = dataset.split()
    assert ([im["id"] for im in calibration], [im["id"] for im in evaluation]) == ([3], [7])
    reference = COCO(str(annotations))  # pycocotools reads the same file
    assert sorted(reference.getImgIds()) == [3, 7] and sorted(reference.getCatIds()) == [1, 3]
    ids = class_map(dataset, ("person", "car"), None)  # no declared ids: the dataset's, in increasing order
    assert ids == (1, 3)
    boxed = load_images(dataset, dataset.images, (64, 64))
    assert [tuple(b.image.shape) for b in boxed] == [(3, 64, 64)] * 2  # the grayscale PNG has three channels
    assert [b.content_hw for b in boxed] == [(48, 64), (64, 32)]
    assert torch.equal(boxed[0].image[:, 0, 0], torch.tensor([90, 90, 90], dtype=torch.uint8))
    # Perfect detections made in the letterboxed frame (the ground truth scaled into it) score AP 100 once mapped back.
    results = []
    for image, box in zip(dataset.images, boxed):
        ann = reference.loadAnns(reference.getAnnIds(imgIds=image["id"]))[0]
        scale_y, scale_x = box.content_hw[0] / image["height"], box.content_hw[1] / image["width"]
        x, y, w, h = ann["bbox"]
        mask = torch.from_numpy(reference.annToMask(ann)).bool()
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=box.content_hw)[0, 0] > 0.5
        padded = torch.zeros(64, 64, dtype=torch.bool)
        padded[: box.content_hw[0], : box.content_hw[1]] = mask
        dets = {"boxes": torch.tensor([[x * scale_x, y * scale_y, (x + w) * scale_x, (y + h) * scale_y]]),
                "scores": torch.tensor([0.9]), "classes": torch.tensor([ids.index(ann["category_id"])]),
                "masks": padded[None]}
        results += detections_to_coco(to_original(dets, box.content_hw, box.original_hw), image["id"], category_ids=ids)
    assert [r["category_id"] for r in results] == [1, 3]
    assert coco_ap(dataset.coco, results, "bbox")["AP"] == pytest.approx(100.0)
    segm = coco_ap(dataset.coco, results, "segm")
    # The masks went down to the letterbox and back up (nearest): exact at IoU 0.75, a pixel off at 0.95 on these tiny images.
    assert (segm["AP50"], segm["AP75"]) == (pytest.approx(100.0), pytest.approx(100.0)) and segm["AP"] >= 85.0
    # The same detections with class ids taken for category ids (class + 1) score nothing: the map matters.
    wrong = [{**r, "category_id": ids.index(r["category_id"]) + 1} for r in results]
    assert coco_ap(dataset.coco, wrong, "bbox")["AP"] < 60.0


# --- real acceptance runs --------------------------------------------------------------------

def _suite(args: list[str], root: Path) -> tuple[subprocess.CompletedProcess, dict]:
    command = [sys.executable, "-m", "pytest", str(REPO / "tests" / "precision" / "test_accuracy.py"), "-m", "precision",
               "--bm-report-dir", str(root / "reports"), "-p", "no:cacheprovider", "-q", "-rs", *args]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    report = root / "reports" / "FINAL_REPORT.json"
    return result, json.loads(report.read_text()) if report.is_file() else {}


@pytest.mark.slow
def test_a_run_on_an_exported_coco_folder_gates_ap_on_it(exported: Path, tmp_path: Path) -> None:
    # lite on ort at 256: ~1 min on 2 busy cores.
    result, report = _suite(["--bm-model", "lite", "--bm-input-size", str(SIZE), "--bm-target", "ort",
                             "--bm-dataset", str(exported), "--bm-dataset-limit", str(LIMIT)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout, result.stdout[-3000:]
    assert report["environment"]["data"] == (f"{exported}/annotations.json (20 images in {exported}/images: "
                                             f"8 calibrate, {LIMIT} evaluated)")
    ap = [r for r in report["records"]["precision"] if r["metric"] in ("box_ap_drop", "mask_ap_drop")]
    assert sorted(r["metric"] for r in ap) == ["box_ap_drop", "mask_ap_drop"]
    for record in ap:
        assert record["passed"] and record["target"] == "ort"
        assert record["detail"].endswith(f"on {LIMIT} images"), record["detail"]
        assert record["extra"]["reference_ap"] > 20.0, record["detail"]  # the shipped lite weights detect the exported shapes


@pytest.mark.slow
def test_without_a_dataset_the_ap_gate_of_a_coco_model_skips_saying_give_bm_dataset(tmp_path: Path) -> None:
    result, _ = _suite(["--bm-model", "R_50", "--bm-input-size", "64", "--bm-target", "ort"], tmp_path)
    assert "2 skipped" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert "blendmask verdict: FAIL (judged: none; not run: AP" in result.stdout  # nothing judged is no pass
    assert ("the evaluation split holds synthetic shapes (6 classes), not the model's 80 classes: "
            "give --bm-dataset PATH") in result.stdout
