"""ATC family on an Ascend machine: atc compiles the ONNX model and the .om answers like PyTorch."""
from __future__ import annotations

import pytest
import torch

from pytest_blendmask.atc.atc import AtcOptions, compile_om
from pytest_blendmask.precision.metrics import relative_l2_error
from pytest_blendmask.targets import TargetSpec, availability

pytestmark = pytest.mark.atc


@pytest.mark.parametrize("precision_mode", ["allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype"])
def test_atc_compiles(onnx_model, bm_settings, tmp_path, bm_record, precision_mode):
    reason = availability(TargetSpec("om", None))
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
    errors = {name: relative_l2_error(raw[name], reference[name]) for name in reference}
    worst = max(errors, key=errors.get)
    limit = thresholds.tensor["fp16"].max_relative_l2_error
    bm_record("atc", "om", "worst_output_relative_l2_error", errors[worst], limit, "", errors[worst] <= limit, op="<=",
              detail=f"worst output {worst}")
