"""Targets: the ways to run the model, their availability on this machine, and the eager runner.

A target spec is a string (DESIGN.md "Targets"): ``cpu``, ``cpu:fp16``, ``cpu:bf16``,
``cuda:N[:fp16|bf16]``, ``npu:N[:fp16|bf16]``, ``ort[:fp16|int8|cann|cuda]`` or ``om``.
Nothing here imports torch, onnxruntime or torch_npu at module level: the plugin imports
this module for ``pytest --help``, which must not load CUDA or CANN.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import os
import re
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Kind = Literal["eager", "ort", "om"]
Dtype = Literal["fp32", "fp16", "bf16", "int8"]

TARGET_FORMS = (
    "cpu[:fp16|bf16], cuda:N[:fp16|bf16], npu:N[:fp16|bf16], ort[:fp16|int8|cann|cuda] or om"
)

# Environment variables that change how torch_npu runs (anchors.md section 6): the task
# queue level changes overlap and peak memory, the allocator config changes fragmentation,
# the visible devices renumber cards, and launch blocking turns the task queue off.
NPU_ENV_KNOBS = (
    "TASK_QUEUE_ENABLE",
    "PYTORCH_NPU_ALLOC_CONF",
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_LAUNCH_BLOCKING",
)

NPU_INSTALL_HINT = (
    "install CANN 8.x, `source /usr/local/Ascend/ascend-toolkit/set_env.sh` "
    "and `pip install pytest-blendmask[npu]`"
)

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cann": "CANNExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
_ORT_QUALIFIERS = {provider: short for short, provider in ORT_PROVIDERS.items()}
ORT_PROVIDER_PACKAGES = {
    "CANNExecutionProvider": "onnxruntime-cann",
    "CUDAExecutionProvider": "onnxruntime-gpu",
}

_EAGER_RE = re.compile(r"(?P<dev>cpu|(?:cuda|npu):\d+)(?::(?P<dtype>fp16|bf16))?")
_ORT_RE = re.compile(r"ort(?::(?P<opt>fp16|int8|cann|cuda))?")
_DEVICE_RE = re.compile(r"cpu|(?:cuda|npu):\d+")


@dataclass(frozen=True)
class TargetSpec:
    """One way to run the model: eager PyTorch on a device, ONNX Runtime, or an ATC .om."""

    kind: Kind
    device: str | None = None  # "cpu", "cuda:0", "npu:0" for eager targets
    dtype: Dtype = "fp32"
    provider: str | None = None  # ONNX Runtime execution provider for ort targets

    @property
    def id(self) -> str:
        """The canonical spec string, used as the test id and in reports."""
        if self.kind == "eager":
            assert self.device is not None
            return self.device if self.dtype == "fp32" else f"{self.device}:{self.dtype}"
        if self.kind == "ort":
            if self.provider != ORT_PROVIDERS["cpu"]:
                return f"ort:{_ORT_QUALIFIERS[self.provider]}"
            return "ort" if self.dtype == "fp32" else f"ort:{self.dtype}"
        return "om"


def parse_target(spec: str) -> TargetSpec:
    """Parse a target spec string; ValueError lists the accepted forms and the value."""
    text = spec.strip()
    if m := _EAGER_RE.fullmatch(text):
        return TargetSpec("eager", m["dev"], m["dtype"] or "fp32")
    if m := _ORT_RE.fullmatch(text):
        opt = m["opt"]
        if opt in ORT_PROVIDERS:
            return TargetSpec("ort", dtype="fp32", provider=ORT_PROVIDERS[opt])
        return TargetSpec("ort", dtype=opt or "fp32", provider=ORT_PROVIDERS["cpu"])
    if text == "om":
        # ATC's default precision mode compiles float32 operators to float16.
        return TargetSpec("om", dtype="fp16")
    raise ValueError(f"expected {TARGET_FORMS}; got {spec!r}")


def parse_device(spec: str) -> str:
    """Validate a device spec (cpu, cuda:N, npu:N) and return it stripped."""
    text = spec.strip()
    if not _DEVICE_RE.fullmatch(text):
        raise ValueError(f"expected cpu, cuda:N or npu:N; got {spec!r}")
    return text


@functools.lru_cache(maxsize=None)
def probe_torch_npu() -> str | None:
    """None if torch_npu imports and sees an NPU, else why not (cached for the process)."""
    try:
        importlib.import_module("torch_npu")
    except (ImportError, OSError, RuntimeError) as exc:
        # Without CANN sourced the import fails with ImportError (libhccl.so) or OSError;
        # a broken CANN can raise RuntimeError. All of them mean "no NPU here".
        return f"torch_npu not importable: {exc}; {NPU_INSTALL_HINT}"
    import torch

    if not torch.npu.is_available():
        return "torch_npu imported but torch.npu.is_available() is False (no NPU driver or card visible)"
    return None


def npu_environment() -> dict[str, str | None]:
    """The NPU environment knobs as set in this process (None where unset)."""
    return {name: os.environ.get(name) for name in NPU_ENV_KNOBS}


def _device_index_reason(device: str, present: int, what: str) -> str | None:
    index = int(device.split(":")[1])
    return None if index < present else f"{device} not present: {present} {what} device(s)"


def _cuda_reason(device: str, dtype: Dtype) -> str | None:
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"CUDA not available: torch {torch.__version__} built without CUDA"
        return (
            f"CUDA not available: torch {torch.__version__} built with CUDA {torch.version.cuda} "
            "but torch.cuda.is_available() is False (no driver/GPU)"
        )
    reason = _device_index_reason(device, torch.cuda.device_count(), "CUDA")
    if reason is None and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        major, minor = torch.cuda.get_device_capability(device)
        reason = f"{device} has no bf16 support (compute capability {major}.{minor})"
    return reason


def _npu_reason(device: str) -> str | None:
    reason = probe_torch_npu()
    if reason is None:
        import torch

        reason = _device_index_reason(device, torch.npu.device_count(), "NPU")
    return reason


def _ort_reason(provider: str) -> str | None:
    try:
        import onnxruntime
    except ImportError as exc:
        return f"onnxruntime not installed: {exc}; `pip install onnxruntime`"
    # get_available_providers, not get_all_providers: the latter lists providers this
    # build merely knows about, not the ones it can run.
    available = onnxruntime.get_available_providers()
    if provider in available:
        return None
    package = ORT_PROVIDER_PACKAGES.get(provider, "onnxruntime")
    return (
        f"ONNX Runtime provider {provider} not in get_available_providers() {available}; "
        f"install {package} instead of onnxruntime"
    )


def _om_reason() -> str | None:
    if shutil.which("atc") is None:
        return (
            "`atc` not on PATH; install CANN 8.x and "
            "`source /usr/local/Ascend/ascend-toolkit/set_env.sh`"
        )
    try:
        importlib.import_module("ais_bench")
    except (ImportError, OSError, RuntimeError) as exc:
        return f"ais_bench not importable: {exc}; install the ais_bench wheel from msit (ais-bench_workload)"
    return None


def availability(spec: TargetSpec) -> str | None:
    """None if ``spec`` can run on this machine, else the exact skip reason."""
    if spec.kind == "ort":
        assert spec.provider is not None
        return _ort_reason(spec.provider)
    if spec.kind == "om":
        return _om_reason()
    assert spec.device is not None
    if spec.device.startswith("cuda"):
        return _cuda_reason(spec.device, spec.dtype)
    if spec.device.startswith("npu"):
        return _npu_reason(spec.device)
    return None  # the CPU runs fp32 and fp16/bf16 autocast everywhere


AUTO_ACCELERATORS = (parse_target("npu:0"), parse_target("cuda:0"))
AUTO_FALLBACK = parse_target("cpu:fp16")
AUTO_ORT = parse_target("ort")


def auto_targets() -> list[TargetSpec]:
    """Targets picked when none is given: npu:0, else cuda:0, else cpu:fp16; plus ort."""
    eager = next((t for t in AUTO_ACCELERATORS if availability(t) is None), AUTO_FALLBACK)
    return [eager, AUTO_ORT]


def describe_targets(chosen: list[TargetSpec], auto: bool) -> list[str]:
    """Report-header lines: the targets chosen, the unavailable ones with reasons, NPU knobs."""
    how = "auto: none given" if auto else "from --bm-target"
    lines = [f"targets: {', '.join(t.id for t in chosen)} ({how})"]
    # With auto-selection the accelerators passed over are worth naming too: they are
    # what a reviewer expects on an Ascend runner.
    considered = chosen + [t for t in AUTO_ACCELERATORS if auto and t not in chosen]
    for target in considered:
        reason = availability(target)
        if reason is not None:
            verb = "skipped" if target in chosen else "not chosen"
            lines.append(f"{verb}: {target.id}: {reason}")
    knobs = " ".join(f"{k}={v if v is not None else '<unset>'}" for k, v in npu_environment().items())
    lines.append(f"npu env: {knobs}")
    return lines


_AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def autocast(device_type: str, dtype: Dtype) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` for fp16/bf16 on ``device_type``; a no-op context for fp32.

    On the CPU that mirrors ATC's ``allow_fp32_to_fp16``: matmuls and convolutions in half
    precision, the rest in float32.
    """
    import torch

    if dtype not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, _AUTOCAST_DTYPES[dtype]))


def to_device(model: torch.nn.Module, spec: TargetSpec) -> torch.nn.Module:
    """A copy of ``model`` on the eager target's device, in eval mode.

    The model is copied before it is moved, so the session's reference model stays on the
    CPU in float32.
    """
    import torch

    if spec.kind != "eager":
        raise ValueError(f"only eager targets run as a PyTorch model on a device, got {spec.id}")
    return copy.deepcopy(model).to(torch.device(spec.device)).eval()


def forward_on_target(device_model: torch.nn.Module, batch: torch.Tensor, spec: TargetSpec) -> dict[str, torch.Tensor]:
    """``forward_raw`` of a model already on the target's device, under the target's autocast;
    raw tensors come back float32 on the CPU."""
    import torch

    device = torch.device(spec.device)
    with torch.inference_mode(), autocast(device.type, spec.dtype):
        raw = device_model.forward_raw(batch.to(device))
    return {name: tensor.float().cpu() for name, tensor in raw.items()}

