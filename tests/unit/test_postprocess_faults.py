"""The detection gates against faults in the device's post-processing only.

The reference is the shipped lite model on the CPU; the device under test is a ``cpu``
target loaded from that same model, whose *device copy* alone is made faulty after loading
(a changed constant of its ``cfg``, or a wrapped ``postprocess``), as a port would get a
post-processing constant or kernel wrong. The detections come from ``Target.detect`` over
the acceptance suite's ten detection images, two at a time, and are judged by the
acceptance suite's detection gates with the fp16 limits (the looser ones: the fault, not
the rounding, must be what fails). Each fault must fail its named gate, and the record
must say that the host's decoding of the same raw tensors passes.

``roi_align``'s sampling ratio 1 -> 2 is not here: it moves the worst image's mask IoU to
0.9986, within fp16 rounding's 0.999, so no detection limit that serves fp16 separates it;
the operator level does (tests/unit/test_ops_faults.py, 3951x the fp16 roi_align standard).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pytest_blendmask.data import EVAL_SEED, generate_sample
from pytest_blendmask.evaluation import run_images
from pytest_blendmask.gates import DETECTION_GATES, evaluate
from pytest_blendmask.model import build_model, load_weights
from pytest_blendmask.precision.match import compare_detections
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.settings import packaged_file
from pytest_blendmask.targets import parse_target

CPU, FP16 = parse_target("cpu"), parse_target("cpu:fp16")
LIMITS = load_thresholds().detection["fp16"]
IMAGES, BATCH, SIZE = 10, 2, 512  # fixtures.DETECTION_IMAGES, SAMPLE_IMAGES; lite's input size
DEVICE_ONLY = "the device's post-processing made the difference"


@pytest.fixture(scope="module")
def trained():
    model = load_weights(build_model("lite"), packaged_file("weights/lite.safetensors"))
    images = [torch.from_numpy(generate_sample(EVAL_SEED, i, SIZE, SIZE).image).permute(2, 0, 1).contiguous()
              for i in range(IMAGES)]
    return model, images, run_images(model, CPU, None, images, BATCH)


def failed_gates(model, images, reference, target=CPU, fault=None) -> dict[str, str]:
    """The detection gates that fail on ``target`` loaded from ``model`` and then given ``fault``, with their details."""
    runner = target.load(model)
    if fault is not None:
        fault(runner.model)
    run = run_images(model, target, runner, images, BATCH)
    comparison = compare_detections(reference.detections, run.detections, LIMITS.match_iou, BATCH, run.host_detections)
    verdicts = (evaluate(gate, comparison, LIMITS) for gate in DETECTION_GATES)
    return {v.gate.name: v.detail for v in verdicts if not v.passed}


def set_cfg(**changes):
    def fault(device_model):
        device_model.cfg = dataclasses.replace(device_model.cfg, **changes)
    return fault


def wrap_postprocess(change_raw=None, change_results=None):
    """Make the device copy's ``postprocess`` see changed raw tensors or return changed results."""
    def fault(device_model):
        original = device_model.postprocess

        def postprocess(raw, image_sizes, output_sizes=None):
            results = original(change_raw(raw) if change_raw else raw, image_sizes, output_sizes)
            return change_results(results) if change_results else results

        device_model.postprocess = postprocess
    return fault


def shift_masks_one_pixel(results):
    return [{**r, "masks": torch.roll(r["masks"], shifts=1, dims=-1)} for r in results]


def silence_class(raw, silenced=2):
    """Class ``silenced``'s logits at every level set far below the score threshold."""
    changed = dict(raw)
    for name, logits in raw.items():
        if name.startswith("logits_"):
            changed[name] = logits.clone()
            changed[name][:, silenced] = -30.0
    return changed


def swap_pairs(results):
    """Each batch's two images' results exchanged, as a port that mixes up its batch index would."""
    return [results[1], results[0]] + results[2:] if len(results) == 2 else results


FAULTS = [
    # (fault, inject into the device copy, the gate that must fail)
    ("NMS IoU threshold 0.6 -> 0.7", set_cfg(nms_threshold=0.7), "unmatched_fraction"),
    ("NMS IoU threshold 0.6 -> 0.5", set_cfg(nms_threshold=0.5), "class_match"),
    ("score threshold 0.05 -> 0.1", set_cfg(score_threshold=0.1), "unmatched_fraction"),
    ("pre-NMS top-k 1000 -> 20", set_cfg(pre_nms_topk=20), "unmatched_fraction"),
    ("post-NMS top-k 100 -> 50", set_cfg(post_nms_topk=50), "unmatched_fraction"),
    ("roi_align aligned=False", set_cfg(pooler_aligned=False), "mask_iou"),
    ("mask pasted one pixel off", wrap_postprocess(change_results=shift_masks_one_pixel), "mask_iou"),
    ("class 2's logits silenced", wrap_postprocess(change_raw=silence_class), "class_match"),
    ("the two images of each batch swapped", wrap_postprocess(change_results=swap_pairs), "misassigned_images"),
]


@pytest.mark.parametrize("fault, inject, gate", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_device_post_processing_fault_fails_its_gate(trained, fault, inject, gate):
    model, images, reference = trained
    failed = failed_gates(model, images, reference, fault=inject)
    assert gate in failed, f"{fault}: failed gates {failed}"
    assert failed[gate].endswith(DEVICE_ONLY), failed[gate]


def test_the_reference_model_is_untouched_by_a_device_fault(trained):
    model, images, reference = trained
    failed_gates(model, images, reference, fault=set_cfg(nms_threshold=0.3))
    assert model.cfg.nms_threshold == 0.6 and "postprocess" not in vars(model)


def test_a_clean_fp16_device_pipeline_passes_over_ten_images(trained):
    model, images, reference = trained
    assert sum(len(d["scores"]) for d in reference.detections) >= 100
    assert failed_gates(model, images, reference, target=FP16) == {}
