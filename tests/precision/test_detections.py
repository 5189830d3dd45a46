"""Level 2: detections of the device under test matched to the reference's.

Over the detection images (``fixtures.DETECTION_IMAGES``), two at a time: an eager target's
from its whole pipeline on its device, a compiled target's decoded on the host. One test
per detection gate (``pytest_blendmask.gates.DETECTION_GATES``), each judged against
``[precision.detection.<precision>]`` of the thresholds file; a failing gate's detail says
whether the host's decoding of the same raw tensors fails too.
"""
from __future__ import annotations

import pytest

from pytest_blendmask.gates import DETECTION_GATES, Gate, judge
from pytest_blendmask.model.protocol import missing_for_detection

pytestmark = [pytest.mark.precision, pytest.mark.bm_level("detection")]


@pytest.mark.parametrize("gate", DETECTION_GATES, ids=[g.name for g in DETECTION_GATES])
def test_detection_gate(blendmask_model, dut_target, reference_target, detection_run, detection_comparison, thresholds,
                        bm_record, gate: Gate):
    if (reason := missing_for_detection(blendmask_model)) is not None:
        pytest.skip(reason)
    if sum(len(d["scores"]) for d in detection_run(reference_target).detections) == 0:
        pytest.skip("the reference detects nothing on the detection images (random weights?): no detection to compare")
    judge(bm_record, gate, dut_target.id, detection_comparison(dut_target), thresholds.detection[dut_target.precision],
          postprocessing=dut_target.postprocessing)
