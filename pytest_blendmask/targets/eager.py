"""Eager PyTorch on a device (cpu, cuda:N, npu:N), in float32 or under fp16/bf16 autocast.

An eager target runs the whole pipeline where a port runs it: ``forward_raw`` and
``postprocess`` (decode, NMS, ``roi_align``, blend, paste) of its device copy, on its
device, under its autocast; the detections are copied back. The raw tensors are also
decoded on the host by the reference model, so that a detection failure says whether the
raw tensors or the device's post-processing made the difference.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..dtypes import Dtype, autocast
from .base import LoadContext, Need, Target, TargetRun, host_postprocess
from .npu import probe_torch_npu

if TYPE_CHECKING:
    import torch

    from ..ops.selection import DeformConvChoice
    from ..precision.dump import Dump
    from ..precision.floor import Forward
    from ..precision.replay import LocalError

_EAGER_RE = re.compile(r"(?P<dev>cpu|(?:cuda|npu):\d+)(?::(?P<dtype>fp16|bf16))?(?P<force>:force)?")
FORCE = "force"
# The CPU emulation of each eager precision: the floor (precision/floor.py).
_FLOORS = {("fp32", False): "fp64", ("fp16", False): "autocast_fp16", ("bf16", False): "autocast_bf16",
           ("fp16", True): "half"}
_DEVICE_RE = re.compile(r"cpu|(?:cuda|npu):\d+")


def parse_device(spec: str) -> str:
    """Validate a device spec (cpu, cuda:N, npu:N) and return it stripped."""
    text = spec.strip()
    if not _DEVICE_RE.fullmatch(text):
        raise ValueError(f"expected cpu, cuda:N or npu:N; got {spec!r}")
    return text


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


@dataclass(frozen=True)
class EagerTarget(Target):
    """The model itself, copied to ``device`` and run under the target's autocast."""

    FORMS: ClassVar[str] = "cpu[:fp16[:force]|bf16], cuda:N[:fp16[:force]|bf16], npu:N[:fp16[:force]|bf16]"

    device: str
    dtype: Dtype = "fp32"
    # Every operator in fp16 (the model and its input cast with .half()), as ATC's force_fp16
    # and most NPU fp16 builds run, instead of autocast's convolutions and matmuls only.
    force: bool = False

    def __post_init__(self) -> None:
        if self.force and self.dtype != "fp16":
            raise ValueError(f"{self.device}:{self.dtype}:{FORCE}: only fp16 can be forced (write {self.device}:fp16:{FORCE})")

    @classmethod
    def parse(cls, text: str) -> EagerTarget | None:
        m = _EAGER_RE.fullmatch(text)
        if m is None or (m["force"] and m["dtype"] != "fp16"):
            return None
        return cls(m["dev"], m["dtype"] or "fp32", bool(m["force"]))

    @property
    def id(self) -> str:
        base = self.device if self.dtype == "fp32" else f"{self.device}:{self.dtype}"
        return f"{base}:{FORCE}" if self.force else base

    @property
    def floor(self) -> str:
        return _FLOORS[(self.dtype, self.force)]

    def local_errors(self, runner: EagerRunner, reference: torch.nn.Module, forward: Forward, batch: torch.Tensor,
                     reference_dump: Dump) -> tuple[LocalError, ...]:
        """Each module of the device copy replayed on the device, in this target's precision, on the
        inputs the reference's modules receive (``precision/replay.py``)."""
        import torch

        from ..precision.replay import module_replayer, replay

        replayer = module_replayer(runner.model, self.device,
                                   lambda: autocast(torch.device(self.device).type, self.dtype, forced=self.force),
                                   torch.float16 if self.force else None)
        return replay(reference, lambda model: forward(model, batch), {"device": replayer})["device"]

    @property
    def timed_device(self) -> str | None:
        return self.device

    @property
    def postprocessing(self) -> str:
        return f"device: the device copy's postprocess on {self.device}, under the {self.id} autocast"

    def skip_reason(self, need: Need = "run") -> str | None:
        if self.device.startswith("cuda"):
            return _cuda_reason(self.device, self.dtype)
        if self.device.startswith("npu"):
            return _npu_reason(self.device)
        return None  # the CPU runs fp32 and fp16/bf16 autocast everywhere

    def pinned(self, device: str | None) -> EagerTarget:
        if device is None or device.split(":")[0] != self.device.split(":")[0]:
            return self
        return dataclasses.replace(self, device=device)

    def load(self, model: torch.nn.Module, context: LoadContext | None = None) -> EagerRunner:
        """A device copy of ``model``, its deformable layers calling the implementation chosen for this target."""
        from ..ops.selection import apply_deform_conv

        device_model = to_device(model, self)
        mode = context.deform_conv if context is not None else "auto"
        return EagerRunner(device_model, self, apply_deform_conv(device_model, self.device, self.dtype, mode))

    def run(self, model: torch.nn.Module, batch: torch.Tensor, image_sizes: list[tuple[int, int]], *,
            runner: EagerRunner | None = None, dump_mode: str = "full", spill_dir: Path | None = None) -> TargetRun:
        """``forward_raw`` of the device copy, dumped layer by layer, then its ``postprocess`` on the device.

        ``host_detections`` are ``model`` (the CPU reference)'s ``postprocess`` of the raw
        tensors copied to the host in float32.
        """
        from ..precision.dump import DumpCollector

        if runner is None:
            runner = self.load(model)
        with DumpCollector(runner.model, mode=dump_mode, spill_dir=spill_dir) as collector:
            device_raw = runner.forward(batch, versioned=True)
        raw = to_host(device_raw)
        return TargetRun(
            self, raw, collector.dump, runner.postprocess(device_raw, image_sizes), host_postprocess(model, raw, image_sizes),
        )

    def detect(self, model: torch.nn.Module, runner: EagerRunner, batch: torch.Tensor,
               image_sizes: list[tuple[int, int]]) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
        """The device pipeline's detections and ``model``'s decoding of the raw tensors on the host."""
        device_raw = runner.forward(batch)
        detections, decoded = runner.postprocess(device_raw, image_sizes), host_postprocess(model, to_host(device_raw), image_sizes)
        if detections is None or decoded is None:
            raise ValueError(f"{type(model).__name__} has no postprocess: there are no detections to run a split for")
        return detections, decoded

    def reference_dump(self, reference: TargetRun) -> Dump:
        return reference.dump  # layer by layer, as this target's own


class EagerRunner:
    """A device copy of the model (``model``), run under the target's autocast.

    ``runner(batch)`` is the ``Runner``: raw tensors on the host in float32. ``forward`` keeps
    them on the device in the dtypes autocast gave them, which is what ``postprocess`` takes.
    ``deform_conv`` is the deformable convolution its layers call, None for a model without any.
    """

    def __init__(self, model: torch.nn.Module, target: EagerTarget, deform_conv: DeformConvChoice | None = None) -> None:
        self.model = model
        self.target = target
        self.deform_conv = deform_conv

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return to_host(self.forward(batch))

    def forward(self, batch: torch.Tensor, *, versioned: bool = False) -> dict[str, torch.Tensor]:
        """``forward_raw`` on the device, outputs left there.

        ``versioned`` runs it under ``no_grad`` instead of ``inference_mode``: its tensors then
        carry version counters, which let a ``DumpCollector`` share a container's unchanged
        output with its child's entry instead of reducing or copying it again (29 % of lite's
        entries; a stats dump went from 1.16x to 1.10x a plain forward).
        """
        import torch

        device = torch.device(self.target.device)
        grad_mode = torch.no_grad() if versioned else torch.inference_mode()
        with grad_mode, autocast(device.type, self.target.dtype, forced=self.target.force):
            return self.model.forward_raw(batch.to(device, torch.float16 if self.target.force else batch.dtype))

    def postprocess(self, device_raw: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]] | None:
        """The device copy's ``postprocess`` of ``forward``'s tensors, on the device under the
        target's autocast; detections copied back (floats as float32). None for a model without one."""
        import torch

        device = torch.device(self.target.device)
        with autocast(device.type, self.target.dtype, forced=self.target.force):
            detections = host_postprocess(self.model, device_raw, image_sizes)
        return None if detections is None else [to_host(image) for image in detections]


def to_device(model: torch.nn.Module, target: Target) -> torch.nn.Module:
    """A copy of ``model`` on the eager target's device, in eval mode (in fp16 for a forced target).

    The model is copied before it is moved, so the session's reference model stays on the
    CPU in float32.
    """
    import torch

    if not isinstance(target, EagerTarget):
        raise ValueError(f"only eager targets run as a PyTorch model on a device, got {target.id}")
    device_model = copy.deepcopy(model).to(torch.device(target.device)).eval()
    return device_model.half() if target.force else device_model


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` on the CPU, floating-point ones as float32 (masks and class ids keep their dtype)."""
    return {name: t.cpu().float() if t.is_floating_point() else t.cpu() for name, t in tensors.items()}
