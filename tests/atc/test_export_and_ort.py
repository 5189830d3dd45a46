"""ATC family, everywhere: ONNX export, ONNX Runtime as the offline compiler, AIPP, size/latency/AP."""
from __future__ import annotations

import time

import onnxruntime as ort
import pytest
import torch

from pytest_blendmask.atc.aipp import aipp_for_model, prepend_aipp
from pytest_blendmask.atc.export import OPSETS, export_onnx, load_checked, run_in_batches, scale_factor_resizes
from pytest_blendmask.atc.ort import CPU_PROVIDER, build_ort_runner, create_session, nodes_of_type, optimize_model
from pytest_blendmask.model import build_model
from pytest_blendmask.model.protocol import missing_for_detection
from pytest_blendmask.evaluation import evaluate, run_dataset, score
from pytest_blendmask.gates import OUTPUT_PARITY, judge
from pytest_blendmask.precision.compare import compare_outputs
from pytest_blendmask.targets import parse_target

pytestmark = pytest.mark.atc

AP_IMAGES = 50  # the first 50 evaluation images, as the precision family's AP gate
LATENCY_ROUNDS = 5
MEANINGFUL_AP = 5.0  # below this the reference is untrained and an AP drop says nothing


@pytest.fixture(scope="module")
def reference_raw(blendmask_model, sample_batch):
    with torch.inference_mode():
        return blendmask_model.forward_raw(sample_batch.tensor)


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("opset", OPSETS)
def test_export_runs_in_onnx_runtime_like_pytorch(blendmask_model, sample_batch, reference_raw, thresholds, bm_record, opset, dynamic_batch):
    hw = tuple(sample_batch.tensor.shape[-2:])
    exported = export_onnx(blendmask_model, hw, opset=opset, dynamic_batch=dynamic_batch)
    proto = load_checked(exported.path)
    assert list(exported.output_names) == list(reference_raw), "ONNX outputs must be forward_raw's tensors, in order"
    assert scale_factor_resizes(proto) == [], "scale-factor resizes break converters (spec section 10)"
    runner = build_ort_runner(exported)
    limits = thresholds.tensor["fp32"]
    parity = compare_outputs(reference_raw, run_in_batches(runner, sample_batch.tensor, exported.batch_limit), limits)
    target = f"onnx opset {opset} {'dynamic' if dynamic_batch else 'static'}"
    judge(bm_record, OUTPUT_PARITY, target, parity, limits, export_seconds=exported.export_seconds)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_graph_optimisation_folds_batchnorm(sample_batch, tmp_path, bm_record, norm):
    model = build_model("lite", norm=norm)
    exported = export_onnx(model, tuple(sample_batch.tensor.shape[-2:]), opset=11)
    before = len(nodes_of_type(load_checked(exported.path), "BatchNormalization"))
    optimised = optimize_model(exported.path, tmp_path / "optimised.onnx", level="all")
    left = len(nodes_of_type(optimised, "BatchNormalization"))
    assert before > 0, "the export must keep BatchNormalization for the compiler to fold"
    bm_record("atc", f"ort optimise ({norm})", "batchnorm_nodes_left", left, 0, "nodes", left == 0, op="<=",
              detail=f"{before} BatchNormalization nodes exported, {left} left after ORT_ENABLE_ALL")


def test_aipp_folded_model_equals_pytorch_preprocessing(blendmask_model, sample_batch, onnx_model, thresholds, tmp_path, bm_record):
    if not (hasattr(blendmask_model, "pixel_mean") and hasattr(blendmask_model, "pixel_std")):
        pytest.skip(f"{type(blendmask_model).__name__} declares no pixel_mean/pixel_std: AIPP folds a per-channel "
                    "mean/std normalisation of BGR pixels, and this model's preprocessing is not one")
    hw = tuple(sample_batch.tensor.shape[-2:])
    aipp = aipp_for_model(blendmask_model.pixel_mean, blendmask_model.pixel_std, hw, "BGR")
    with_aipp = prepend_aipp(load_checked(onnx_model.path), aipp)
    path = tmp_path / "aipp.onnx"
    path.write_bytes(with_aipp.SerializeToString())
    session = create_session(path, CPU_PROVIDER)
    image = sample_batch.images[0].permute(1, 2, 0).numpy()[None]  # uint8 NHWC, BGR
    outputs = dict(zip(onnx_model.output_names, session.run(None, {"image": image})))
    with torch.inference_mode():
        reference = blendmask_model.forward_raw(sample_batch.tensor[:1])
    limits = thresholds.tensor["fp32"]
    parity = compare_outputs(reference, {k: torch.from_numpy(v) for k, v in outputs.items()}, limits)
    judge(bm_record, OUTPUT_PARITY, "aipp", parity, limits)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_size_latency_and_accuracy(blendmask_model, sample_batch, onnx_model, coco_accuracy, bm_dataset, calibration_set,
                                   thresholds, bm_record, precision):
    runner = build_ort_runner(onnx_model, precision=precision, model=blendmask_model, calibration=calibration_set)
    one = sample_batch.tensor[:1]
    runner(one)  # warm-up: session initialisation is not inference
    start = time.perf_counter()
    for _ in range(LATENCY_ROUNDS):
        runner(one)
    latency_ms = (time.perf_counter() - start) / LATENCY_ROUNDS * 1e3
    size_mb = runner.model_path.stat().st_size / 2**20
    bm_record("atc", f"ort:{precision}", "model_size", size_mb, None, "MB", True)
    bm_record("atc", f"ort:{precision}", "latency_bs1", latency_ms, None, "ms", True)
    if (reason := missing_for_detection(blendmask_model)) is not None:
        pytest.skip(reason)
    fp32_reference_ap = coco_accuracy(parse_target("cpu"), AP_IMAGES)
    if fp32_reference_ap.bbox_AP < MEANINGFUL_AP:
        pytest.skip(f"PyTorch fp32 box AP {fp32_reference_ap.bbox_AP:.1f} < {MEANINGFUL_AP}: untrained weights, an AP drop says nothing")
    target = parse_target(f"ort:{precision}" if precision != "fp32" else "ort")
    run_raw = lambda batch: run_in_batches(runner, batch, onnx_model.batch_limit)  # noqa: E731
    if bm_dataset is not None:  # the images coco_accuracy scored the reference on
        result = score(run_dataset(blendmask_model, target, bm_dataset, run_raw, AP_IMAGES))
    else:
        result = evaluate(blendmask_model, target, limit=AP_IMAGES, run_raw=run_raw)
    drop = fp32_reference_ap.bbox_AP - result.bbox_AP
    limit = thresholds.accuracy[precision].max_box_ap_drop
    bm_record("atc", f"ort:{precision}", "box_ap_drop", drop, limit, "AP points", drop <= limit, op="<=",
              detail=f"{size_mb:.2f} MB, {latency_ms:.1f} ms/image (batch 1), box AP {result.bbox_AP:.2f} / mask AP "
              f"{result.segm_AP:.2f} vs PyTorch fp32 {fp32_reference_ap.bbox_AP:.2f} / {fp32_reference_ap.segm_AP:.2f}",
              size_mb=size_mb, latency_ms=latency_ms, bbox_AP=result.bbox_AP, segm_AP=result.segm_AP)


@pytest.mark.parametrize("provider", ["CANNExecutionProvider", "CUDAExecutionProvider"])
def test_accelerated_provider_does_not_fall_back_to_cpu(onnx_model, bm_record, provider):
    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} not in onnxruntime.get_available_providers() {ort.get_available_providers()}: "
                    "install onnxruntime-cann (with CANN sourced) or onnxruntime-gpu")
    runner = build_ort_runner(onnx_model, provider=provider)
    bm_record("atc", f"ort {provider}", "silent_cpu_fallback", float(runner.fallback is not None), 0, "", runner.fallback is None,
              op="<=", detail=runner.fallback or "provider active")
