"""What every target is: the one interface the rest of the package talks to.

A target is one way to run the model (DESIGN.md "Targets"). Its kind is known only to its
own module (``eager.py``, ``ort.py``, ``om.py``); everything else asks the object:

- ``id`` (the spec string, also the test id), ``dtype``, ``precision`` (the thresholds
  section it is judged by) and ``device`` (the device it occupies, for xdist pinning and
  ``--bm-require`` tags);
- ``skip_reason(need)``: why it cannot ``"compile"`` or ``"run"`` here, or None;
- ``pinned(device)``: the target moved to an xdist worker's device, where that applies;
- ``load(model, context)``: a ``Runner`` (batch -> raw tensors): a device copy of the
  model, an ONNX Runtime session, an .om session;
- ``run(model, batch, image_sizes, runner=...)``: a ``TargetRun`` (raw tensors, the per-layer
  dump, the target's detections and the host's decoding of its raw tensors) and
  ``reference_dump(reference_run)``: what of the reference's dump this target's dump is
  compared with. Where a target post-processes is its own business: an eager target runs
  the whole pipeline on its device, a compiled one leaves the decoding to the host;
- ``timed_device``: the device the eager perf grid times it on, None when it has its
  own timing loop;
- ``floor``, ``local_errors(...)`` and ``layer_dump(...)``: the CPU emulation of its
  precision that measures the noise floor, each module's error when it is re-run on the
  reference's inputs (local error: ``precision/replay.py`` for eager targets,
  ``atc/layers.py`` for compiled graphs), and the per-layer dump its accumulated error is
  read from where its run's dump has graph outputs only; None where it has none.

Nothing here imports torch at module level: the plugin imports the package for ``pytest --help``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from ..dtypes import Dtype

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..data.calibration import CalibrationSet
    from ..precision.dump import Dump
    from ..precision.floor import Forward
    from ..precision.replay import LocalError

Need = Literal["compile", "run"]
DEFAULT_SOC_VERSION = "Ascend910B"
# Which deformable convolution an eager target's model copy calls (ops/selection.py):
# auto probes the device's kernel and falls back where it samples inexactly.
DEFORM_CONV_MODES = ("auto", "torchvision", "fallback")


class Runner(Protocol):
    """A loaded target: a ``[N, 3, H, W]`` float batch in, ``forward_raw``'s tensors out (CPU, float32)."""

    def __call__(self, batch: Tensor) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class LoadContext:
    """What building a target may need beyond the model: compiled targets fix the input size."""

    input_hw: tuple[int, int]
    soc_version: str = DEFAULT_SOC_VERSION
    cache_dir: Path | None = None  # the ONNX export cache; the default cache when None
    deform_conv: str = "auto"  # one of DEFORM_CONV_MODES; eager targets only
    calibration: CalibrationSet | None = None  # int8 targets' calibration images; the synthetic set when None


HOST_POSTPROCESSING = "host: the reference model's postprocess of the graph outputs, on the CPU in float32"


@dataclass(frozen=True)
class TargetRun:
    """What one target produced for one batch (all tensors on the CPU, float32).

    ``detections`` come from the target's whole pipeline, post-processed where the target
    does it (``target.postprocessing`` says where, for the report). ``host_detections`` are the
    reference model's decoding of the target's raw tensors on the host, in float32: the same
    list where the target post-processes on the host (compiled targets); where the two
    differ, a detection gate can tell a raw-tensor difference (both differ from the
    reference) from one made by the device's post-processing (only ``detections`` differ).
    Both are None for a model without ``postprocess`` (model/protocol.py).
    """

    target: Target
    raw: dict[str, Tensor]
    dump: Dump
    detections: list[dict[str, Tensor]] | None
    host_detections: list[dict[str, Tensor]] | None


class Target(ABC):
    """One way to run the model; see the module docstring for the interface."""

    FORMS: ClassVar[str]  # the spec forms this kind accepts, for error messages
    dtype: Dtype
    device: str  # the device it occupies: cpu, cuda:N or npu:N (a field or a property of each kind)
    # Whether the model is exported and compiled before it runs. Compiled targets expose
    # their graph outputs only, and their detections come from host post-processing, which
    # is how AdelaiDet's ONNX export (it stops at the heads) is deployed.
    compiled: ClassVar[bool] = False

    @property
    @abstractmethod
    def id(self) -> str:
        """The canonical spec string, used as the test id and in reports."""

    @property
    def precision(self) -> str:
        """The thresholds section this target is judged by: fp32, fp16, bf16 or int8."""
        return self.dtype

    @property
    def timed_device(self) -> str | None:
        """The device the eager perf grid times this target on; None when it is not timed there."""
        return None

    @property
    def postprocessing(self) -> str:
        """Where this target's detections are decoded, for the report."""
        return HOST_POSTPROCESSING

    @property
    def floor(self) -> str | None:
        """The emulation its noise floor runs on the CPU (``precision/floor.py``); None where it has none."""
        return None

    def local_errors(self, runner: Runner, reference: nn.Module, forward: Forward, batch: Tensor,
                     reference_dump: Dump) -> tuple[LocalError, ...] | None:
        """Each module output of the loaded target recomputed from the reference's own inputs,
        against the reference's (``reference_dump``, the ``full`` dump of ``forward(reference,
        batch)``); None where modules cannot be run one by one."""
        return None

    def layer_dump(self, runner: Runner, batch: Tensor, reference_dump: Dump) -> Dump | None:
        """The target's per-layer dump of ``batch``, named as ``reference_dump``, where ``run``'s dump
        holds graph outputs only; None where ``run``'s dump is already per layer."""
        return None

    @abstractmethod
    def skip_reason(self, need: Need = "run") -> str | None:
        """None if this machine can ``need`` the target, else the exact skip reason."""

    def pinned(self, device: str | None) -> Target:
        """This target on an xdist worker's pinned ``device``; itself where pinning does not apply."""
        return self

    @abstractmethod
    def load(self, model: nn.Module, context: LoadContext) -> Runner:
        """The target ready to run ``model``: exported, compiled or copied to its device."""

    def run(self, model: nn.Module, batch: Tensor, image_sizes: list[tuple[int, int]], *,
            runner: Runner | None = None, dump_mode: str = "full", spill_dir: Path | None = None) -> TargetRun:
        """Run ``batch``, dump it, and post-process on the host with ``model`` (the CPU reference's code).

        ``runner`` is the target already loaded (``load``); without it the target is loaded
        for this one batch, at the batch's input size. ``spill_dir``: where a layer-by-layer
        ``full`` dump writes its tensors as they are made (``DumpCollector``); a compiled
        target's few graph outputs stay in memory.
        """
        if runner is None:
            runner = self.load(model, LoadContext(tuple(batch.shape[-2:])))
        raw, dump = self._run_dumped(runner, batch, dump_mode)
        detections = host_postprocess(model, raw, image_sizes)
        return TargetRun(self, raw, dump, detections, detections)

    def detect(self, model: nn.Module, runner: Runner, batch: Tensor, image_sizes: list[tuple[int, int]]
               ) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        """(detections, host decoding of the raw tensors) of ``batch``, without dumping.

        Here both are the host's post-processing of the raw tensors, one list returned twice;
        a target that post-processes on its device returns two.
        """
        detections = host_postprocess(model, {k: v.float().cpu() for k, v in runner(batch).items()}, image_sizes)
        if detections is None:
            raise ValueError(f"{type(model).__name__} has no postprocess: there are no detections to run a split for")
        return detections, detections

    def _run_dumped(self, runner: Runner, batch: Tensor, dump_mode: str) -> tuple[dict[str, Tensor], Dump]:
        """Raw tensors and their dump; a compiled target is dumped at its graph outputs."""
        from ..precision.dump import dump_from_outputs

        raw = runner(batch)
        return raw, dump_from_outputs(raw)

    def reference_dump(self, reference: TargetRun) -> Dump:
        """The reference's dump at the granularity this target's dump has (graph outputs here)."""
        from ..precision.dump import dump_from_outputs

        return dump_from_outputs(reference.raw)


def host_postprocess(model: nn.Module, raw: dict[str, Tensor], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]] | None:
    """``model.postprocess`` of CPU float32 ``raw`` tensors; None for a model without one (the tensor and ATC levels only)."""
    import torch

    from ..model.protocol import is_detector

    if not is_detector(model):
        return None
    with torch.inference_mode():
        return model.postprocess(raw, image_sizes)
