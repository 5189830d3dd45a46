"""Level 3: COCO box and mask AP of the target against the reference on the evaluation images.

The evaluation images are ``--bm-dataset``'s (after its calibration images, at most
``--bm-dataset-limit``), else the synthetic split's first 50, which only a model of the
synthetic shape classes (lite) can be judged on.

One test per accuracy gate (``pytest_blendmask.gates.ACCURACY_GATES``), each judged against
``[precision.accuracy.<precision>]`` of the thresholds file.
"""
from __future__ import annotations

import pytest

from pytest_blendmask.data import CLASS_NAMES
from pytest_blendmask.gates import ACCURACY_GATES, APPair, Gate, judge
from pytest_blendmask.model.protocol import missing_for_detection

pytestmark = [pytest.mark.precision, pytest.mark.bm_level("AP"), pytest.mark.slow]

MEANINGFUL_AP = 5.0  # below this the reference is untrained and an AP drop says nothing


def _id(gate: Gate) -> str:
    # The ids this test had when it was parametrized by (kind, field, key).
    return f"{gate.measure.kind}-{gate.measure.field}-{gate.limit.key}"


@pytest.mark.parametrize("gate", ACCURACY_GATES, ids=_id)
def test_ap_drop(blendmask_model, bm_dataset, dut_target, reference_target, coco_accuracy, thresholds, bm_record, gate: Gate):
    if (reason := missing_for_detection(blendmask_model)) is not None:
        pytest.skip(reason)
    if bm_dataset is None and tuple(blendmask_model.class_names) != CLASS_NAMES:
        pytest.skip(f"the evaluation split holds synthetic shapes ({len(CLASS_NAMES)} classes), not the model's "
                    f"{len(blendmask_model.class_names)} classes: give --bm-dataset PATH (a COCO-format set such as "
                    "val2017: annotation JSON and images) to gate AP")
    reference = coco_accuracy(reference_target)
    reference_ap = getattr(reference, gate.measure.field)
    if reference_ap < MEANINGFUL_AP:
        pytest.skip(f"reference {gate.measure.kind} AP {reference_ap:.1f} < {MEANINGFUL_AP}: the model is not trained (see --bm-weights)")
    pair = APPair(reference, coco_accuracy(dut_target))
    judge(bm_record, gate, dut_target.id, pair, thresholds.accuracy[dut_target.precision],
          postprocessing=dut_target.postprocessing)
