"""Profile parsing and fallback classification on recorded rows, and one real CPU profile.

The CSV snippets follow torch_npu 2.x's ASCEND_PROFILER_OUTPUT files: the byte-order mark,
the column names of ``torch_npu/profiler/analysis/prof_common_func/_csv_headers.py``, the
tab CANN appends to timestamps, quoted shape lists, and an AI CPU row of the form
``aclnnCumsum_CumsumAiCpu_Cumsum,Cumsum,dynamic,AI_CPU`` seen in a published profile.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pytest_blendmask.model import build_model, load_weights
from pytest_blendmask.perf.profile import (
    KernelStat,
    OpStat,
    ai_cpu_kernels,
    host_fallbacks,
    ops_from_key_averages,
    ops_table,
    parse_kernel_details,
    parse_operator_details,
    postprocess_ops,
    profile_callable,
    top_ops,
    top_table,
    write_summary,
)
from pytest_blendmask.perf.workload import build_workload, detections_per_image, synthetic_jpegs
from pytest_blendmask.settings import packaged_file

KERNEL_DETAILS = (
    "\ufeffStep Id,Device_id,Name,Type,OP State,Accelerator Core,Start Time(us),Duration(us),Wait Time(us),"
    "Block Dim,Mix Block Dim,HF32 Eligible,Input Shapes,Input Data Types,Input Formats,Output Shapes,"
    "Output Data Types,Output Formats\n"
    '1,0,aclnnConvolution_Conv2D_Conv2D,Conv2D,static,AI_CORE,1732000000000001.000\t,812.5,0.2,24,0,NO,'
    '"1,3,640,640;64,3,7,7",FLOAT16;FLOAT16,NCHW;NCHW,"1,64,320,320",FLOAT16,NC1HWC0\n'
    '1,0,aclnnConvolution_Conv2D_Conv2D,Conv2D,static,AI_CORE,1732000000000900.000\t,400.0,0.1,24,0,NO,'
    '"1,64,160,160;64,64,3,3",FLOAT16;FLOAT16,NCHW;NCHW,"1,64,160,160",FLOAT16,NC1HWC0\n'
    '1,0,aclnnAdd_AddAiCore_Add,Add,dynamic,AI_VECTOR_CORE,1732000000001400.000\t,12.25,0.0,40,0,N/A,'
    '"1,64,160,160;1,64,160,160",FLOAT16;FLOAT16,ND;ND,"1,64,160,160",FLOAT16,ND\n'
    '1,0,aclnnNonMaxSuppression_NonMaxSuppressionV3AiCpu_NonMaxSuppressionV3,NonMaxSuppressionV3,dynamic,AI_CPU,'
    '1732000000001500.000\t,1530.0,3.0,1,0,N/A,"1000,4;1000",FLOAT;FLOAT,ND;ND,"100",INT32,ND\n'
    '1,0,aclnnCumsum_CumsumAiCpu_Cumsum,Cumsum,dynamic,AI_CPU,1732000000003100.000\t,210.5,0.0,1,0,N/A,'
    '"1000",INT64,ND,"1000",INT64,ND\n'
    '1,0,aclnnCumsum_CumsumAiCpu_Cumsum,Cumsum,dynamic,AI_CPU,1732000000003400.000\t,190.0,0.0,1,0,N/A,'
    '"1000",INT64,ND,"1000",INT64,ND\n'
)

OPERATOR_DETAILS = (
    "\ufeffName,Input Shapes,Call Stack,Host Self Duration(us),Host Total Duration(us),"
    "Device Self Duration(us),Device Total Duration(us)\n"
    'aten::conv2d,"1,3,640,640;64,3,7,7",,9.0,120.0,0,812.5\n'
    'aten::convolution,"1,3,640,640;64,3,7,7",,30.0,111.0,812.5,812.5\n'
    'aten::convolution,"1,64,160,160;64,64,3,3",,25.0,90.0,400.0,400.0\n'
    "aten::view,,,4.0,4.0,0,0\n"
    'torchvision::nms,"1000,4;1000",,8200.0,8400.0,0,15.0\n'
    "torchvision::roi_align,,,2600.0,2650.0,0,0\n"
    "aten::item,,,900.0,905.0,0,0\n"
    "aten::add,,,11.0,11.0,12.25,12.25\n"
)


def test_parse_kernel_details_sums_per_type_and_core() -> None:
    kernels = parse_kernel_details(KERNEL_DETAILS)
    assert kernels == [
        KernelStat("NonMaxSuppressionV3", "AI_CPU", 1, 1530.0),
        KernelStat("Conv2D", "AI_CORE", 2, 1212.5),
        KernelStat("Cumsum", "AI_CPU", 2, 400.5),
        KernelStat("Add", "AI_VECTOR_CORE", 1, 12.25),
    ]


def test_ai_cpu_kernels_are_the_ones_on_ai_cpu() -> None:
    assert [(k.op_type, k.calls) for k in ai_cpu_kernels(parse_kernel_details(KERNEL_DETAILS))] == [
        ("NonMaxSuppressionV3", 1), ("Cumsum", 2),
    ]


def test_parse_operator_details_sums_calls_per_operator() -> None:
    ops = {op.name: op for op in parse_operator_details(OPERATOR_DETAILS)}
    assert ops["aten::convolution"] == OpStat("aten::convolution", 2, 55.0, 1212.5)
    assert ops["torchvision::nms"] == OpStat("torchvision::nms", 1, 8200.0, 0.0)


@pytest.mark.parametrize(
    ("parse", "text", "missing"),
    [
        (parse_kernel_details, "Name,Type,Duration(us)\nx,Conv2D,1\n", "Accelerator Core"),
        (parse_operator_details, "Name,Host Self Duration(us)\naten::add,1\n", "Device Self Duration(us)"),
    ],
)
def test_parsers_name_a_missing_column(parse, text: str, missing: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=rf"missing column\(s\) \['{re.escape(missing)}'\]; found"):
        parse(text)


def test_host_fallbacks_flag_kernel_less_host_compute_only() -> None:
    flagged = host_fallbacks(parse_operator_details(OPERATOR_DETAILS))
    # nms and roi_align: no device self time, most of the host time. Not flagged: aten::item
    # (waits for the device), aten::view and aten::conv2d (dispatch only), convolution (has kernels).
    assert [op.name for op in flagged] == ["torchvision::nms", "torchvision::roi_align"]


def test_host_fallbacks_threshold_is_a_share_of_host_time() -> None:
    ops = [OpStat("aten::convolution", 10, 100.0, 5000.0), OpStat("aten::nonzero_cpu", 1, 3.0, 0.0)]
    assert host_fallbacks(ops) == [ops[1]]  # 3 of 103 us: 2.9 % >= 2 %
    assert host_fallbacks(ops, min_share=0.05) == []


def test_top_ops_rank_operators_by_the_chosen_self_time() -> None:
    ops = [
        OpStat("aten::convolution", 4, 50.0, 900.0),
        OpStat("torchvision::nms", 1, 800.0, 0.0),
        OpStat("cudaLaunchKernel", 40, 5000.0, 0.0),  # a runtime call, not an operator
        OpStat("aten::add", 2, 10.0, 20.0),
    ]
    assert [op.name for op in top_ops(ops, by_device=True)] == ["aten::convolution", "aten::add"]
    assert [op.name for op in top_ops(ops, by_device=False)] == ["torchvision::nms", "aten::convolution", "aten::add"]
    assert len(top_ops([OpStat(f"aten::op{i}", 1, float(i + 1), 0.0) for i in range(15)], by_device=False)) == 10


def test_top_table_reports_per_iteration_times_and_shares() -> None:
    ops = [OpStat("aten::convolution", 8, 60.0, 3000.0), OpStat("aten::add", 4, 40.0, 1000.0)]
    assert top_table(ops, by_device=True, iterations=2).splitlines() == [
        "| # | operator | calls/iter | device self ms/iter | share |",
        "| ---: | --- | ---: | ---: | ---: |",
        "| 1 | `aten::convolution` | 4 | 1.500 | 75.0% |",
        "| 2 | `aten::add` | 2 | 0.500 | 25.0% |",
    ]


def test_postprocess_ops_are_the_torchvision_operators_recorded() -> None:
    ops = parse_operator_details(OPERATOR_DETAILS)
    assert [op.name for op in postprocess_ops(ops, by_device=False)] == ["torchvision::nms", "torchvision::roi_align"]
    assert postprocess_ops([op for op in ops if not op.name.startswith("torchvision::")], by_device=False) == []


def test_ops_table_ranks_a_row_among_all_operators() -> None:
    ops = [OpStat("aten::convolution", 2, 900.0, 0.0), OpStat("aten::add", 2, 80.0, 0.0),
           OpStat("torchvision::nms", 1, 20.0, 0.0), OpStat("torchvision::roi_align", 1, 0.0, 0.0)]
    rows = ops_table(postprocess_ops(ops, by_device=False), ops, by_device=False, iterations=1).splitlines()[2:]
    assert rows == ["| 3 | `torchvision::nms` | 1 | 0.020 | 2.0% |", "| - | `torchvision::roi_align` | 1 | 0.000 | 0.0% |"]


def test_ops_from_key_averages_reads_self_times() -> None:
    events = [SimpleNamespace(key="aten::mm", count=3, self_cpu_time_total=12.5, self_device_time_total=40.0)]
    assert ops_from_key_averages(events) == [OpStat("aten::mm", 3, 12.5, 40.0)]


def test_cpu_profile_writes_trace_table_and_summary(tmp_path: Path) -> None:
    a = torch.randn(64, 64)

    def work() -> torch.Tensor:
        return torch.relu(a @ a).sum()

    summary = profile_callable(work, torch.device("cpu"), iterations=3, out_dir=tmp_path)
    assert summary.top_by == "host" and summary.iterations == 3
    assert "aten::mm" in [op.name for op in summary.top]
    assert (summary.host_fallbacks, summary.ai_cpu) == (None, None)  # the CPU is the host; no AI CPU
    assert json.loads(Path(summary.trace).read_text())["traceEvents"]
    assert summary.table.splitlines()[0] == "| # | operator | calls/iter | host self ms/iter | share |"
    written = json.loads(write_summary(summary, tmp_path).read_text())
    assert written["device"] == "cpu" and (tmp_path / "top_ops.md").read_text().startswith("| # |")


def test_a_cpu_profile_of_the_shipped_lite_model_lists_nms_and_roi_align(tmp_path: Path) -> None:
    model = load_weights(build_model("lite"), packaged_file("weights/lite.safetensors")).eval()
    size = (256, 256)
    work = build_workload(model, synthetic_jpegs(1, size), size, torch.device("cpu"), "fp32", streams=False)

    def forward_and_postprocess() -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            return model.postprocess(work.model_only(), [size], [size])

    assert detections_per_image(forward_and_postprocess())[0] > 10
    summary = profile_callable(forward_and_postprocess, torch.device("cpu"), iterations=1, out_dir=tmp_path)
    names = [op.name for op in summary.postprocess]
    assert {"torchvision::nms", "torchvision::roi_align"} <= set(names)
    assert all(f"`{name}`" in summary.postprocess_table for name in names)
    assert summary.postprocess_ms() > 0 and "torchvision::nms" in summary.postprocess_text()
    write_summary(summary, tmp_path)
    assert "Post-processing operators (torchvision):\n\n| # |" in (tmp_path / "top_ops.md").read_text()
