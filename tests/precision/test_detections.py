"""Level 2: detections of the device under test matched to the reference's."""
from __future__ import annotations

import pytest

from pytest_blendmask.runners import precision_of

pytestmark = pytest.mark.precision

# (metric field, thresholds key, direction, unit, aggregate over images)
GATES = [
    ("box_error", "max_box_error", "<=", "fraction of image side", max),
    ("score_relative_error", "max_score_relative_error", "<=", "", max),
    ("class_agreement", "min_class_agreement", ">=", "", min),
    ("top5_class_overlap", "min_top5_class_overlap", ">=", "", min),
    ("mask_iou", "min_mask_iou", ">=", "", min),
    ("unmatched_fraction", "max_unmatched_fraction", "<=", "", max),
]


@pytest.mark.parametrize("field, key, op, unit, worst", GATES, ids=[g[0] for g in GATES])
def test_detection_gate(dut_target, reference_target, target_run, detection_comparison, thresholds, bm_record, field, key, op, unit, worst):
    if sum(len(d["scores"]) for d in target_run(reference_target).detections) == 0:
        pytest.skip("the reference detects nothing on the sample batch (random weights?): no detection to compare")
    per_image = detection_comparison(dut_target)
    value = worst(getattr(m, field) for m in per_image)
    limit = getattr(thresholds.detection[precision_of(dut_target)], key)
    passed = value <= limit if op == "<=" else value >= limit
    counts = ", ".join(f"image {i}: {m.matched}/{m.num_ref} matched ({m.num_dut} on target)" for i, m in enumerate(per_image))
    bm_record("precision", dut_target.id, field, value, limit, unit, passed, op=op, detail=f"{field} {value:.4g} vs limit {limit} ({counts})")
