"""ATC family on an Ascend machine: atc compiles the ONNX model and the .om answers like PyTorch."""
from __future__ import annotations

import pytest
import torch

from pytest_blendmask.atc.atc import AtcOptions, compile_om
from pytest_blendmask.gates import OUTPUT_PARITY, judge
from pytest_blendmask.precision.compare import compare_outputs
from pytest_blendmask.targets import parse_target

pytestmark = pytest.mark.atc


@pytest.mark.parametrize("precision_mode", ["allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype"])
def test_atc_compiles(onnx_model, bm_settings, tmp_path, bm_record, precision_mode):
    reason = parse_target("om").skip_reason("compile")
    if reason is not None:
        pytest.skip(reason)
    options = AtcOptions(bm_settings.soc_version, precision_mode=precision_mode)
    result = compile_om(onnx_model.path, tmp_path / f"lite_{precision_mode}", tuple(onnx_model.input_shape[2:]), options)
    bm_record("atc", f"atc {precision_mode}", "compiled", float(result.ok), 1, "", result.ok, op=">=",
              detail="; ".join(map(str, result.log.failure_lines)) or f"fusions: {', '.join(sorted(result.applied_fusions))}",
              seconds=result.seconds)


@pytest.mark.npu
def test_om_outputs_match_pytorch(compiled_om, onnx_model, blendmask_model, sample_batch, thresholds, bm_record):
    from pytest_blendmask.atc.om import OmRunner

    runner = OmRunner(str(compiled_om.om_path), onnx_model.output_names)
    raw = runner(sample_batch.tensor[:1])
    with torch.inference_mode():
        reference = blendmask_model.forward_raw(sample_batch.tensor[:1])
    limits = thresholds.tensor["fp16"]
    judge(bm_record, OUTPUT_PARITY, "om", compare_outputs(reference, raw, limits), limits)
