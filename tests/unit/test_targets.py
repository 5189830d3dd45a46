"""Target specs, skip reasons, auto-selection and the eager runner."""
from __future__ import annotations

import importlib
import shutil
import sys
import types
from typing import ClassVar

import pytest
import torch

from pytest_blendmask import targets
from pytest_blendmask.targets import parse_target
from pytest_blendmask.targets.eager import EagerRunner, EagerTarget, to_device
from pytest_blendmask.targets.om import OmTarget
from pytest_blendmask.targets.ort import OrtTarget


@pytest.fixture(autouse=True)
def fresh_npu_probe():
    """Forget the cached torch_npu probe around each test, so that monkeypatches apply."""
    targets.probe_torch_npu.cache_clear()
    yield
    targets.probe_torch_npu.cache_clear()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu", EagerTarget("cpu", "fp32")),
        ("cpu:fp16", EagerTarget("cpu", "fp16")),
        ("cpu:bf16", EagerTarget("cpu", "bf16")),
        ("cuda:0", EagerTarget("cuda:0", "fp32")),
        ("cuda:1:fp16", EagerTarget("cuda:1", "fp16")),
        ("npu:0", EagerTarget("npu:0", "fp32")),
        ("npu:7:bf16", EagerTarget("npu:7", "bf16")),
        ("cpu:fp16:force", EagerTarget("cpu", "fp16", force=True)),
        ("npu:0:fp16:force", EagerTarget("npu:0", "fp16", force=True)),
        (" npu:0:fp16 ", EagerTarget("npu:0", "fp16")),
        ("ort", OrtTarget("fp32", "CPUExecutionProvider")),
        ("ort:fp16", OrtTarget("fp16", "CPUExecutionProvider")),
        ("ort:int8", OrtTarget("int8", "CPUExecutionProvider")),
        ("ort:cann", OrtTarget("fp32", "CANNExecutionProvider")),
        ("ort:cuda", OrtTarget("fp32", "CUDAExecutionProvider")),
        ("om", OmTarget("fp16")),
    ],
)
def test_parse_target_accepts_documented_forms(text: str, expected: targets.Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text", ["cpu", "cpu:fp16", "cpu:bf16", "cpu:fp16:force", "cuda:0", "cuda:1:fp16", "npu:0:bf16", "ort", "ort:fp16",
             "ort:int8", "ort:cann", "ort:cuda", "om"],
)
def test_target_id_round_trips(text: str) -> None:
    assert parse_target(text).id == text
    assert parse_target(parse_target(text).id) == parse_target(text)


@pytest.mark.parametrize(
    "text", ["tpu", "", "cuda", "npu", "cpu:0", "cpu:int8", "cuda:0:int8", "npu:x", "ort:bf16", "cpu:bf16:force",
             "cpu:force", "ort:fp16:force",
             "ort:cann:fp16", "om:fp16", "CPU"],
)
def test_parse_target_rejects_with_accepted_forms_and_value(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_target(text)
    assert str(info.value) == f"expected {targets.TARGET_FORMS}; got {text!r}"


@pytest.mark.parametrize("text", ["cpu", "cuda:0", "npu:12", " npu:3 "])
def test_parse_device_accepts(text: str) -> None:
    assert targets.parse_device(text) == text.strip()


@pytest.mark.parametrize("text", ["npu", "gpu:0", "cpu:0", "npu:0:fp16", ""])
def test_parse_device_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected cpu, cuda:N or npu:N"):
        targets.parse_device(text)


def _import_failing(monkeypatch: pytest.MonkeyPatch, module: str, error: Exception) -> None:
    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name == module:
            raise error
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)


@pytest.mark.parametrize(
    "error",
    [
        OSError("libhccl.so: cannot open shared object file: No such file or directory"),
        ImportError("libascendcl.so: cannot open shared object file"),
        RuntimeError("ERR00008 PTA resource not found"),
    ],
)
def test_torch_npu_import_failure_becomes_skip_reason(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    _import_failing(monkeypatch, "torch_npu", error)
    reason = parse_target("npu:0:fp16").skip_reason()
    assert reason == (
        f"torch_npu not importable: {error}; install CANN 8.x, "
        "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` and `pip install pytest-blendmask[npu]`"
    )


def _fake_torch_npu(monkeypatch: pytest.MonkeyPatch, available: bool, count: int) -> None:
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    npu = types.SimpleNamespace(is_available=lambda: available, device_count=lambda: count)
    monkeypatch.setattr(torch, "npu", npu, raising=False)


def test_torch_npu_without_visible_card(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_npu(monkeypatch, available=False, count=0)
    assert parse_target("npu:0").skip_reason() == (
        "torch_npu imported but torch.npu.is_available() is False (no NPU driver or card visible)"
    )


def test_npu_index_beyond_visible_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_npu(monkeypatch, available=True, count=2)
    assert parse_target("npu:1").skip_reason() is None
    assert parse_target("npu:3").skip_reason() == "npu:3 not present: 2 NPU device(s)"


def test_cuda_build_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    assert parse_target("cuda:0").skip_reason() == (
        f"CUDA not available: torch {torch.__version__} built with CUDA 12.1 "
        "but torch.cuda.is_available() is False (no driver/GPU)"
    )


def test_cpu_only_torch_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert parse_target("cuda:0").skip_reason() == (
        f"CUDA not available: torch {torch.__version__} built without CUDA"
    )


def test_cuda_index_beyond_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parse_target("cuda:3").skip_reason() == "cuda:3 not present: 1 CUDA device(s)"


@pytest.mark.parametrize("text", ["cpu", "cpu:fp16", "cpu:bf16"])
def test_cpu_targets_always_available(text: str) -> None:
    assert parse_target(text).skip_reason() is None


def test_ort_provider_missing_names_provider_and_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert parse_target("ort").skip_reason() is None
    assert parse_target("ort:int8").skip_reason() is None
    assert parse_target("ort:cann").skip_reason() == (
        "ONNX Runtime provider CANNExecutionProvider not in get_available_providers() "
        "['CPUExecutionProvider']; install onnxruntime-cann instead of onnxruntime"
    )


def test_ort_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert parse_target("ort").skip_reason().startswith("onnxruntime not installed: ")


def test_om_needs_atc_then_ais_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert parse_target("om").skip_reason().startswith("`atc` not on PATH; install CANN 8.x")
    assert parse_target("om").skip_reason("compile").startswith("`atc` not on PATH; install CANN 8.x")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/local/bin/{name}")
    _import_failing(monkeypatch, "ais_bench.infer.interface", ImportError("No module named 'ais_bench'"))
    assert parse_target("om").skip_reason().startswith(
        "ais_bench not importable: No module named 'ais_bench'; "
    )
    # A CANN toolkit host without an NPU compiles with atc alone.
    assert parse_target("om").skip_reason("compile") is None


def _fake_skip_reasons(monkeypatch: pytest.MonkeyPatch, reason_of) -> None:
    for kind in targets.KINDS:
        monkeypatch.setattr(kind, "skip_reason", lambda self, need="run": reason_of(self))


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ({"npu:0", "cuda:0"}, ["npu:0", "ort"]),
        ({"cuda:0"}, ["cuda:0", "ort"]),
        (set(), ["cpu:fp16", "ort"]),
    ],
)
def test_auto_targets_prefer_npu_then_cuda_then_cpu_fp16(
    monkeypatch: pytest.MonkeyPatch, available: set[str], expected: list[str]
) -> None:
    _fake_skip_reasons(monkeypatch, lambda t: None if t.id in available else "absent")
    assert [t.id for t in targets.auto_targets()] == expected


def test_describe_targets_names_skipped_and_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    reasons = {"npu:0": "no npu", "cuda:0": "no cuda", "ort:cann": "no cann"}
    _fake_skip_reasons(monkeypatch, lambda t: reasons.get(t.id))
    for knob in targets.NPU_ENV_KNOBS:
        monkeypatch.delenv(knob, raising=False)
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "2")

    auto = targets.describe_targets([parse_target("cpu:fp16"), parse_target("ort")], auto=True)
    assert auto == [
        "targets: cpu:fp16, ort (auto: none given)",
        "not chosen: npu:0: no npu",
        "not chosen: cuda:0: no cuda",
        "npu env: TASK_QUEUE_ENABLE=2 PYTORCH_NPU_ALLOC_CONF=<unset> "
        "ASCEND_RT_VISIBLE_DEVICES=<unset> ASCEND_LAUNCH_BLOCKING=<unset>",
    ]
    explicit = targets.describe_targets([parse_target("cpu"), parse_target("ort:cann")], auto=False)
    assert explicit[:2] == ["targets: cpu, ort:cann (from --bm-target)", "skipped: ort:cann: no cann"]


def test_npu_environment_records_every_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    env = targets.npu_environment()
    assert set(env) == set(targets.NPU_ENV_KNOBS)
    assert env["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
    assert env["ASCEND_RT_VISIBLE_DEVICES"] is None


class _ConvNet(torch.nn.Module):
    """Smallest model with the BlendMask entry point the runner calls."""

    # Class-level, so that it also sees the calls on the runner's deep copy.
    conv_dtypes: ClassVar[list[torch.dtype]] = []

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.conv(images)
        self.conv_dtypes.append(out.dtype)
        return {"bases": out}


@pytest.mark.parametrize(
    ("text", "conv_dtype", "tolerance"),
    [("cpu", torch.float32, 0.0), ("cpu:fp16", torch.float16, 1e-2), ("cpu:bf16", torch.bfloat16, 5e-2)],
)
def test_eager_runner_autocasts_and_returns_float32(
    monkeypatch: pytest.MonkeyPatch, text: str, conv_dtype: torch.dtype, tolerance: float
) -> None:
    monkeypatch.setattr(_ConvNet, "conv_dtypes", [])
    model = _ConvNet()
    batch = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.conv(batch)

    spec = parse_target(text)
    raw = EagerRunner(to_device(model, spec), spec)(batch)

    assert _ConvNet.conv_dtypes == [conv_dtype]
    assert raw["bases"].dtype == torch.float32 and raw["bases"].device.type == "cpu"
    torch.testing.assert_close(raw["bases"], expected, atol=tolerance, rtol=tolerance)


def test_to_device_refuses_other_kinds() -> None:
    with pytest.raises(ValueError, match="only eager targets run as a PyTorch model on a device, got ort"):
        to_device(_ConvNet(), parse_target("ort"))


@pytest.mark.parametrize(("text", "floor"), [
    ("cpu", "fp64"), ("cpu:fp16", "autocast_fp16"), ("cpu:bf16", "autocast_bf16"), ("cpu:fp16:force", "half"),
])
def test_an_eager_target_names_the_emulation_of_its_floor(text: str, floor: str) -> None:
    target = parse_target(text)
    assert (target.floor, target.precision) == (floor, target.dtype)


def test_a_forced_target_runs_every_operator_of_its_copy_in_fp16_and_leaves_the_model_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.GroupNorm(2, 4)).eval()
    model.forward_raw = lambda x: {"y": model(x)}
    target = parse_target("cpu:fp16:force")
    device_model = to_device(model, target)
    assert {p.dtype for p in device_model.parameters()} == {torch.float16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    runner = EagerRunner(device_model, target)
    device_model.forward_raw = lambda x: {"y": device_model(x)}
    assert runner.forward(torch.randn(1, 3, 4, 4))["y"].dtype == torch.float16  # GroupNorm too, unlike autocast


def test_graph_targets_are_held_to_the_floor_of_their_precision() -> None:
    assert [parse_target(spec).floor for spec in ("ort", "ort:fp16", "ort:int8")] == ["fp64", "half", "int8"]
    om = parse_target("om")
    assert om.floor is None and om.local_errors(object(), None, None, None, None) is None
