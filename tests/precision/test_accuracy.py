"""Level 3: COCO box and mask AP of the target against the reference on the evaluation split."""
from __future__ import annotations

import pytest

from pytest_blendmask.precision.accuracy import evaluate
from pytest_blendmask.runners import precision_of

pytestmark = [pytest.mark.precision, pytest.mark.slow]

EVAL_IMAGES = 50  # the first 50 of the 200-image split: AP to about +-1 point, ~1 min per target on 2 cores
MEANINGFUL_AP = 5.0  # below this the reference is untrained and an AP drop says nothing


@pytest.fixture(scope="session")
def accuracy_of(blendmask_model, compiled_target):
    cache = {}

    def get(spec):
        if spec.id not in cache:
            run_raw = None if spec.kind == "eager" else compiled_target(spec)
            cache[spec.id] = evaluate(blendmask_model, spec, limit=EVAL_IMAGES, run_raw=run_raw)
        return cache[spec.id]

    return get


@pytest.mark.parametrize("kind, field, key", [("box", "bbox_AP", "max_box_ap_drop"), ("mask", "segm_AP", "max_mask_ap_drop")])
def test_ap_drop(dut_target, reference_target, accuracy_of, thresholds, bm_record, kind, field, key):
    reference = accuracy_of(reference_target)
    if getattr(reference, field) < MEANINGFUL_AP:
        pytest.skip(f"reference {kind} AP {getattr(reference, field):.1f} < {MEANINGFUL_AP}: the model is not trained (see --bm-weights)")
    target = accuracy_of(dut_target)
    drop = getattr(reference, field) - getattr(target, field)
    limit = getattr(thresholds.accuracy[precision_of(dut_target)], key)
    bm_record("precision", dut_target.id, f"{kind}_ap_drop", drop, limit, "AP points", drop <= limit, op="<=",
              detail=f"{kind} AP: reference {getattr(reference, field):.2f}, {dut_target.id} {getattr(target, field):.2f} "
              f"on {target.num_images} images", reference_ap=getattr(reference, field), target_ap=getattr(target, field))
