"""COCO AP: result conversion, COCOeval wrapper, the evaluation driver and the eval command."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_blendmask import eval as eval_cli
from pytest_blendmask.data import ensure_split, generate_sample, load_split, to_train_sample
from pytest_blendmask.data.coco import categories, instance_annotations
from pytest_blendmask.data.synthetic import Instance
from pytest_blendmask.model import build_model
from pytest_blendmask.evaluation import evaluate
from pytest_blendmask.precision.accuracy import AccuracyResult, coco_ap, detections_to_coco

SIZE = 64
TINY_SPLIT_SEED = 7


def _rect(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Two images; image 2 holds two objects of different classes.
GT_OBJECTS = {1: [(0, _rect(4, 4, 24, 30))], 2: [(1, _rect(10, 10, 50, 40)), (3, _rect(30, 40, 60, 60))]}


def _gt() -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE} for i in GT_OBJECTS]
    annotations = []
    for image_id, objects in GT_OBJECTS.items():
        annotations += instance_annotations([Instance(c, m) for c, m in objects], image_id, len(annotations) + 1)
    return {"images": images, "annotations": annotations, "categories": categories()}


def _dets(objects: list[tuple[int, np.ndarray]], shift: int = 0) -> dict[str, torch.Tensor]:
    """Detections equal to ``objects`` (score 0.9), boxes and masks moved right by ``shift`` px."""
    masks = np.stack([np.roll(m, shift, axis=1) for _, m in objects])
    boxes = []
    for mask in masks:
        ys, xs = mask.nonzero()
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.full((len(objects),), 0.9),
        "classes": torch.tensor([c for c, _ in objects]),
        "masks": torch.from_numpy(masks),
    }


def _results(shift: int = 0, image_ids: tuple[int, ...] = (1, 2)) -> list[dict]:
    return [r for i in image_ids for r in detections_to_coco(_dets(GT_OBJECTS[i], shift), i)]


# pycocotools' decode passes copy=False to np.array, which numpy 2 deprecates: not ours.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_detections_to_coco_converts_boxes_classes_and_masks():
    mask = _rect(2, 3, 6, 8)
    dets = {
        "boxes": torch.tensor([[3.0, 2.0, 8.0, 6.0], [0.5, 1.0, 10.5, 4.0]]),
        "scores": torch.tensor([0.25, 0.75]),
        "classes": torch.tensor([0, 5]),
        "masks": torch.from_numpy(np.stack([mask, np.zeros_like(mask)])),
    }
    results = detections_to_coco(dets, image_id=9)
    # Best first; COCO xywh; category ids are class ids + 1.
    assert [r["score"] for r in results] == [0.75, 0.25]
    assert [r["category_id"] for r in results] == [6, 1]
    assert results[0]["bbox"] == [0.5, 1.0, 10.0, 3.0]
    assert results[1]["bbox"] == [3.0, 2.0, 5.0, 4.0]
    assert all(r["image_id"] == 9 for r in results)
    from pycocotools import mask as mask_utils

    assert np.array_equal(mask_utils.decode(results[1]["segmentation"]).astype(bool), mask)
    json.dumps(results)  # the entries must be JSON-serialisable (RLE counts as str)


def test_detections_to_coco_keeps_the_100_best():
    count = 150
    dets = {
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(count, 1),
        "scores": torch.rand(count, generator=torch.Generator().manual_seed(0)),
        "classes": torch.zeros(count, dtype=torch.int64),
        "masks": torch.zeros((count, 8, 8), dtype=torch.bool),
    }
    results = detections_to_coco(dets, image_id=1)
    assert len(results) == 100
    assert [r["score"] for r in results] == pytest.approx(dets["scores"].sort(descending=True).values[:100].tolist())


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_ap_perfect_predictions_score_100(iou_type):
    stats = coco_ap(_gt(), _results(), iou_type)
    assert stats["AP"] == pytest.approx(100.0)
    assert stats["AP50"] == pytest.approx(100.0)
    assert stats["AP75"] == pytest.approx(100.0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_ap_shifted_predictions_score_lower(iou_type):
    stats = coco_ap(_gt(), _results(shift=3), iou_type)
    assert 0.0 < stats["AP"] < 100.0
    # A 3-pixel shift keeps IoU >= 0.5 for these sizes: only the strict thresholds drop.
    assert stats["AP50"] == pytest.approx(100.0)
    assert stats["AP"] < stats["AP50"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_ap_of_no_predictions_is_zero(iou_type):
    stats = coco_ap(_gt(), [], iou_type)
    assert (stats["AP"], stats["AP50"], stats["AP75"]) == (0.0, 0.0, 0.0)


def test_coco_ap_restricted_to_image_ids_ignores_other_images():
    results = _results(image_ids=(1,))
    assert coco_ap(_gt(), results, "segm", image_ids=[1])["AP"] == pytest.approx(100.0)
    assert coco_ap(_gt(), results, "segm")["AP"] < 100.0


def test_coco_ap_undefined_area_ranges_are_nan():
    # Every ground-truth object here is small (area < 32^2) or medium: none is large.
    stats = coco_ap(_gt(), _results(), "bbox")
    assert np.isnan(stats["APl"])


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 128x128 synthetic images: small enough for a 2-core CI machine."""
    return ensure_split("unit", num_images=3, seed=TINY_SPLIT_SEED, size=128, root=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def lite_model() -> torch.nn.Module:
    return build_model("lite")


class GroundTruthModel:
    """Stands in for the model: real preprocessing, ground truth of the split as detections.

    It answers ``postprocess`` with the split's images in order, so ``evaluate`` can only
    score 100 if it feeds images and image ids through in the same order.
    """

    def __init__(self, model: torch.nn.Module, split: Path) -> None:
        # A DetectionModel (model/protocol.py): the evaluation decodes its raw tensors with postprocess.
        self.preprocess, self.forward_raw, self.class_names = model.preprocess, model.forward_raw, model.class_names
        info = sorted(load_split(split).coco["images"], key=lambda im: im["id"])
        self._samples = iter(
            to_train_sample(generate_sample(im["seed"], im["index"], im["height"], im["width"])) for im in info
        )

    def postprocess(self, raw: dict, sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in sizes:
            s = next(self._samples)
            out.append({
                "boxes": torch.from_numpy(s.boxes),
                "scores": torch.ones(len(s.classes)),
                "classes": torch.from_numpy(s.classes),
                "masks": torch.from_numpy(s.masks),
            })
        return out


def test_evaluate_scores_ground_truth_detections_100(lite_model, tiny_split):
    batches = []
    result = evaluate(
        # A compiled target's stand-in runner (batch -> raw tensors): decoded on the host by the model.
        GroundTruthModel(lite_model, tiny_split), "ort", tiny_split, limit=2, batch_size=1,
        run_raw=lambda batch: batches.append(batch.shape) or {},
    )
    assert batches == [(1, 3, 128, 128)] * 2
    assert (result.num_images, result.target) == (2, "ort")
    assert result.bbox_AP == pytest.approx(100.0)
    assert result.segm_AP == pytest.approx(100.0)


def test_evaluate_runs_the_model_on_the_first_images(lite_model, tiny_split):
    result = evaluate(lite_model, "cpu", tiny_split, limit=2)
    assert isinstance(result, AccuracyResult)
    assert (result.num_images, result.target) == (2, "cpu")
    for name in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert 0.0 <= getattr(result, name) <= 100.0, name
    assert result.seconds > 0


def test_evaluate_refuses_a_target_this_machine_lacks(lite_model, tiny_split):
    with pytest.raises(ValueError, match="npu:99 cannot run here: "):
        evaluate(lite_model, "npu:99", tiny_split, limit=1)


def test_eval_command_prints_one_json_object(tiny_split, capsys):
    assert eval_cli.main(["--target", "cpu", "--limit", "2", "--json", "--data", str(tiny_split)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"bbox_AP", "segm_AP", "num_images", "target", "weights", "seconds"} <= report.keys()
    assert (report["num_images"], report["target"]) == (2, "cpu")


def test_eval_command_prints_a_table(tiny_split, capsys):
    assert eval_cli.main(["--limit", "1", "--data", str(tiny_split)]) == 0
    out = capsys.readouterr().out
    assert "target cpu: 1 images" in out
    assert out.splitlines()[-2].startswith("bbox")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "tpu"], "argument --target: expected cpu*got 'tpu'"),
        (["--target", "ort"], "argument --target: this command runs eager targets*got 'ort'"),
        (["--target", "npu:99"], "--target npu:99: cannot run here: *"),
        (["--limit", "0"], "argument --limit: expected a positive integer; got '0'"),
        (["--weights", "missing.safetensors"], "--weights: file not found: missing.safetensors"),
        (["--data", "no-such-dir"], "--data: no annotations.json in no-such-dir"),
    ],
)
def test_eval_command_rejects_bad_options_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        eval_cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert fnmatch.fnmatch(err.splitlines()[-1], f"*error: {message}"), err


def test_eval_command_names_an_unreadable_weight_file(tmp_path, capsys):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SystemExit) as exc:
        eval_cli.main(["--weights", str(bad), "--limit", "1"])
    assert exc.value.code == 2
    assert f"--weights: {bad}: cannot read weights" in capsys.readouterr().err
