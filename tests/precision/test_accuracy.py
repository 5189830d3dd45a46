"""Level 3: COCO box and mask AP of the target against the reference on the evaluation split."""
from __future__ import annotations

import pytest

from pytest_blendmask.runners import precision_of

pytestmark = [pytest.mark.precision, pytest.mark.slow]

MEANINGFUL_AP = 5.0  # below this the reference is untrained and an AP drop says nothing


@pytest.mark.parametrize("kind, field, key", [("box", "bbox_AP", "max_box_ap_drop"), ("mask", "segm_AP", "max_mask_ap_drop")])
def test_ap_drop(dut_target, reference_target, coco_accuracy, thresholds, bm_record, kind, field, key):
    reference = coco_accuracy(reference_target)
    if getattr(reference, field) < MEANINGFUL_AP:
        pytest.skip(f"reference {kind} AP {getattr(reference, field):.1f} < {MEANINGFUL_AP}: the model is not trained (see --bm-weights)")
    target = coco_accuracy(dut_target)
    drop = getattr(reference, field) - getattr(target, field)
    limit = getattr(thresholds.accuracy[precision_of(dut_target)], key)
    bm_record("precision", dut_target.id, f"{kind}_ap_drop", drop, limit, "AP points", drop <= limit, op="<=",
              detail=f"{kind} AP: reference {getattr(reference, field):.2f}, {dut_target.id} {getattr(target, field):.2f} "
              f"on {target.num_images} images", reference_ap=getattr(reference, field), target_ap=getattr(target, field))
