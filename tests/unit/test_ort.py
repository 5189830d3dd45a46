"""ONNX Runtime as the offline compiler: sessions and providers, BN folding, fp16, int8, runners."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from pytest_blendmask.atc.export import export_onnx, load_checked
from pytest_blendmask.atc.ort import (
    CPU_PROVIDER,
    INT8_RECIPE,
    OrtProviderError,
    CalibrationReader,
    build_ort_runner,
    compiled_model_path,
    cpu_fallback,
    create_session,
    nodes_of_type,
    optimize_model,
)
from pytest_blendmask.data.calibration import synthetic_calibration
from pytest_blendmask.model import build_model, load_weights
from pytest_blendmask.settings import packaged_file

from .atc_support import (  # noqa: F401  (pytest finds the fixtures by name)
    FP32_REL_L2,
    IMAGE_HW,
    bgr_images,
    lite_model,
    lite_onnx,
    onnx_cache,
    reference_raw,
    relative_l2_per_output,
    to_chw,
)

CALIBRATION_IMAGES = 4  # enough to exercise the calibration flow; the acceptance suite uses more
# Loose on purpose: these catch a broken conversion (a wrong scale, channel or output order
# gives errors near 1), not a precision regression, which the precision family gates.
FP16_REL_L2 = 1e-2
# int8 runs the trained weights: at random init the centre-ness and attention heads output
# near-zero values (std 0.01 weights) whose relative error is quantisation noise over no
# signal (median 0.153 over outputs, ctrness_p7 0.70). Trained, 4 calibration images:
# median 0.018, worst 0.056 (bases).
INT8_MEDIAN_REL_L2 = 0.05
INT8_WORST_REL_L2 = 0.15


@pytest.fixture(scope="module")
def trained_lite() -> torch.nn.Module:
    return load_weights(build_model("lite"), packaged_file("weights/lite.safetensors")).eval()


@pytest.fixture(scope="module")
def two_image_batch(lite_model) -> torch.Tensor:
    batch, _ = lite_model.preprocess([to_chw(im) for im in bgr_images(2)])
    return batch


@pytest.fixture(scope="module")
def reference(lite_model, two_image_batch) -> dict[str, torch.Tensor]:
    return reference_raw(lite_model, two_image_batch)


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
def test_fp32_runner_answers_like_pytorch(lite_model, onnx_cache, two_image_batch, reference, dynamic_batch):
    exported = export_onnx(lite_model, IMAGE_HW, opset=11, dynamic_batch=dynamic_batch, cache_dir=onnx_cache)
    runner = build_ort_runner(exported, "fp32")
    assert runner.fallback is None
    # A static export runs the two-image batch one image at a time, a dynamic one in one go.
    assert runner.batch_limit == (None if dynamic_batch else 1)
    got = runner(two_image_batch)
    assert list(got) == list(reference)
    errors = relative_l2_per_output(got, reference)
    assert max(errors.values()) <= FP32_REL_L2, errors


def test_fp16_runner_is_half_the_size_and_close(lite_onnx, two_image_batch, reference):
    runner = build_ort_runner(lite_onnx, "fp16")
    proto = load_checked(runner.model_path)
    assert runner.model_path == compiled_model_path(lite_onnx, "fp16")
    assert {i.type.tensor_type.elem_type for i in proto.graph.input} == {onnx.TensorProto.FLOAT}, "fp32 in, fp32 out"
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    assert runner.model_path.stat().st_size < 0.6 * lite_onnx.path.stat().st_size
    errors = relative_l2_per_output(runner(two_image_batch), reference)
    assert max(errors.values()) <= FP16_REL_L2, errors


def test_int8_runner_quantizes_convolutions_calibrated_on_synthetic_images(trained_lite, two_image_batch, onnx_cache):
    exported = export_onnx(trained_lite, IMAGE_HW, opset=11, cache_dir=onnx_cache)
    runner = build_ort_runner(exported, "int8", model=trained_lite, calibration=synthetic_calibration(CALIBRATION_IMAGES))
    assert runner.model_path.name.endswith(f".int8-{INT8_RECIPE}-n{CALIBRATION_IMAGES}-s1.onnx")
    proto = load_checked(runner.model_path)
    assert len(nodes_of_type(proto, "QuantizeLinear")) > 0 and len(nodes_of_type(proto, "DequantizeLinear")) > 0
    assert runner.model_path.stat().st_size < 0.4 * exported.path.stat().st_size
    got = runner(two_image_batch)
    assert all(torch.isfinite(t).all() for t in got.values())
    errors = relative_l2_per_output(got, reference_raw(trained_lite, two_image_batch))
    assert np.median(list(errors.values())) <= INT8_MEDIAN_REL_L2, errors
    assert max(errors.values()) <= INT8_WORST_REL_L2, errors


def test_int8_needs_the_model_for_calibration(lite_onnx, tmp_path):
    exported = dataclasses.replace(lite_onnx, path=tmp_path / lite_onnx.path.name)
    with pytest.raises(ValueError, match="int8 needs the PyTorch model: its preprocess prepares the calibration images"):
        build_ort_runner(exported, "int8")


def test_unknown_precision_is_rejected(lite_onnx):
    with pytest.raises(ValueError, match=r"precision: expected one of \('fp32', 'fp16', 'int8'\); got 'bf16'"):
        build_ort_runner(lite_onnx, "bf16")


def test_converted_model_is_reused_from_the_cache(lite_onnx):
    first = build_ort_runner(lite_onnx, "fp16").model_path
    before = first.stat().st_mtime_ns
    assert build_ort_runner(lite_onnx, "fp16").model_path.stat().st_mtime_ns == before


def test_calibration_reader_yields_preprocessed_training_images_then_stops(lite_model):
    reader = CalibrationReader(lite_model, IMAGE_HW, synthetic_calibration(2))
    feeds = [reader.get_next(), reader.get_next()]
    assert reader.get_next() is None
    for feed in feeds:
        assert list(feed) == ["input"]
        assert feed["input"].shape == (1, 3, *IMAGE_HW) and feed["input"].dtype == np.float32
    # Normalised: the mean is subtracted, so the pixels are no longer all positive.
    assert feeds[0]["input"].min() < 0 < feeds[0]["input"].max()
    assert not np.array_equal(feeds[0]["input"], feeds[1]["input"])


def test_onnx_runtime_folds_every_batch_norm_of_the_bn_config(onnx_cache, tmp_path):
    bn_model = build_model("lite", norm="bn")
    exported = export_onnx(bn_model, IMAGE_HW, opset=11, cache_dir=onnx_cache)
    assert len(nodes_of_type(load_checked(exported.path), "BatchNormalization")) > 0
    optimized = optimize_model(exported.path, tmp_path / "optimized.onnx", "all")
    assert nodes_of_type(onnx.load(str(optimized)), "BatchNormalization") == []


def test_unavailable_provider_is_refused_with_the_package_to_install(lite_onnx):
    if "CANNExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has the CANN provider")
    with pytest.raises(OrtProviderError, match=r"CANNExecutionProvider not in onnxruntime\.get_available_providers\(\) .*; install onnxruntime-cann"):
        create_session(lite_onnx.path, "CANNExecutionProvider")


@pytest.mark.parametrize(
    ("active", "fell_back"),
    [(["CUDAExecutionProvider", CPU_PROVIDER], False), ([CPU_PROVIDER], True)],
    ids=["kept", "fell-back"],
)
def test_silent_cpu_fallback_is_reported(active, fell_back):
    session = SimpleNamespace(get_providers=lambda: active)
    message = cpu_fallback(session, "CUDAExecutionProvider")
    if fell_back:
        assert message == (
            "CUDAExecutionProvider was requested but the session runs on ['CPUExecutionProvider']: "
            "ONNX Runtime fell back to the CPU without an error"
        )
    else:
        assert message is None
