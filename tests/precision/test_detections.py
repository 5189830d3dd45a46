"""Level 2: detections of the device under test matched to the reference's."""
from __future__ import annotations

import pytest

from pytest_blendmask.precision.match import DETECTION_GATES, DetectionGate
from pytest_blendmask.runners import precision_of

pytestmark = pytest.mark.precision


@pytest.mark.parametrize("gate", DETECTION_GATES, ids=[g.field for g in DETECTION_GATES])
def test_detection_gate(dut_target, reference_target, target_run, detection_comparison, thresholds, bm_record, gate: DetectionGate):
    if sum(len(d["scores"]) for d in target_run(reference_target).detections) == 0:
        pytest.skip("the reference detects nothing on the sample batch (random weights?): no detection to compare")
    per_image = detection_comparison(dut_target)
    value, limit, passed = gate.measure(per_image, thresholds.detection[precision_of(dut_target)])
    counts = ", ".join(f"image {i}: {m.matched}/{m.num_ref} matched ({m.num_dut} on target)" for i, m in enumerate(per_image))
    detail = f"{gate.field} {value:.4g} vs limit {limit} ({counts})"
    bm_record("precision", dut_target.id, gate.field, value, limit, gate.unit, passed, op=gate.op, detail=detail)
