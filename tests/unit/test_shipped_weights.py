"""The shipped ``lite`` weights reproduce their model card (issue 3's CI check).

Training records, next to the AP on the whole evaluation split, the AP on its first 50
images; this re-measures those in about 15 s. Both numbers are deterministic functions of
the weights, the model code and the data generator, so a drift in any of them shows here.
The tolerance covers only floating-point differences between CPUs (other SIMD widths and
thread counts change the order of sums, which can move a score across the 100-detection
cut or a threshold): 0.5 AP points.
"""
from __future__ import annotations

import json

import pytest

from pytest_blendmask.model import build_model, load_weights
from pytest_blendmask.evaluation import evaluate
from pytest_blendmask.settings import packaged_file

AP_TOLERANCE = 0.5  # AP points

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def card() -> dict:
    path = packaged_file("weights/lite.json")
    assert path is not None, "pytest_blendmask/weights/lite.json is not packaged"
    return json.loads(path.read_text())


def test_card_describes_the_shipped_file(card):
    weights = packaged_file(f"weights/{card['weights_file']}")
    assert weights is not None and weights.stat().st_size <= 25 * 2**20
    assert card["model"] == "lite" and card["eval"]["num_images"] == 200
    assert card["command"].startswith("python -m pytest_blendmask.train ")
    model = load_weights(build_model("lite"), weights)
    assert list(model.cfg.class_names) == card["class_names"]


def test_shipped_weights_reproduce_the_card_ap_on_the_first_images(card):
    expected = card["eval_first_images"]
    model = load_weights(build_model("lite"), packaged_file(f"weights/{card['weights_file']}")).eval()
    result = evaluate(model, "cpu", limit=expected["num_images"])
    assert result.num_images == expected["num_images"]
    assert result.bbox_AP == pytest.approx(expected["bbox_AP"], abs=AP_TOLERANCE)
    assert result.segm_AP == pytest.approx(expected["segm_AP"], abs=AP_TOLERANCE)
