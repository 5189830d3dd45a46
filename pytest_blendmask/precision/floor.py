"""The noise floor: a target's precision emulated on the CPU, always from the reference model.

What rounding alone costs on *this model with these inputs* is measured, not assumed: the
reference model (never the device's copy, so a fault injected there cannot raise its own
allowance) is run on the CPU in the precision the target computes in. Its local error per
module (replay) and its accumulated error per layer (a whole forward) are the floor the
device's errors are held to (``precision/local.py``).

Emulations, and the targets they stand for:

``fp64``          the reference in float64: the floor of an fp32 target is the fp32 reference's
                  own rounding, as dynamo's ``same()`` holds an fp32 run to twice the eager
                  run's error against fp64 (another fp32 implementation, ONNX Runtime or an
                  NPU, sums in another order and rounds about as much). An Ascend NPU runs
                  fp32 convolutions in HF32 by default (torch_npu's ``allow_hf32``), which this
                  does not emulate: switch it off for an fp32 gate
                  (``torch.npu.conv.allow_hf32 = False``) or gate the NPU as ``npu:N:fp16``.
``autocast_fp16`` ``torch.autocast("cpu", float16)``: convolutions and matmuls in fp16, the rest in
                  float32, as ATC's ``allow_fp32_to_fp16`` and ``*:fp16`` targets do. (Half
                  convolutions and matmuls run as the float32 kernel on the fp16 values, rounded
                  back: the same arithmetic, ``cpu_half_kernels``.)
``autocast_bf16`` the same in bfloat16 (``*:bf16`` targets).
``half``          every operator in fp16 (``model.half()``, inputs cast): ATC's ``force_fp16``,
                  most NPU fp16 builds, ``*:fp16:force`` and ``ort:fp16`` targets.
``int8``          the reference's convolutions quantised to int8 on the CPU from its own weights
                  and a calibration set (``precision/quantize.py``): ``ort:int8`` targets.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..dtypes import Dtype, autocast
from .compare import ComparisonResult, compare
from .dump import Dump, DumpCollector
from .quantize import int8_copy
from .replay import LocalError, Replayer, module_replayer, replay
from .thresholds import TensorThresholds

Forward = Callable[[nn.Module, torch.Tensor], Any]  # forward(model, batch): the device part, e.g. forward_raw


@dataclass(frozen=True)
class Emulation:
    """One way to compute in reduced precision on the CPU (module doc)."""

    name: str
    dtype: Dtype  # for dtypes.autocast: autocast to it for an uncast model, or forced for a cast one
    cast: torch.dtype | None  # the dtype the model and its inputs are cast to, None to keep float32
    quantized: bool = False  # int8: a copy quantised from the reference's weights and a calibration set

    def model(self, reference: nn.Module, forward: Forward, calibration: Iterable[torch.Tensor] | None = None) -> nn.Module:
        """The model the floor runs: ``reference`` itself, or a cast or quantised copy of it (the
        reference is never changed); ``calibration`` batches are needed by ``int8`` only."""
        if self.quantized:
            if calibration is None:
                raise ValueError(f"the {self.name} floor needs calibration batches")
            return int8_copy(reference, forward, calibration)
        if self.cast is None:
            return reference
        return copy.deepcopy(reference).to(self.cast).eval()

    def context(self) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        return lambda: autocast("cpu", self.dtype, forced=self.cast is not None)

    def replayer(self, floor_model: nn.Module) -> Replayer:
        """Replays each module of ``floor_model`` (``model(reference)``) in this precision on the CPU."""
        return module_replayer(floor_model, "cpu", self.context(), self.cast)

    def dump(self, floor_model: nn.Module, forward: Forward, batch: torch.Tensor) -> Dump:
        """The ``full`` dump of one whole forward of ``floor_model`` in this precision: the accumulated floor."""
        inputs = batch.to(self.cast) if self.cast is not None else batch
        with DumpCollector(floor_model, mode="full") as collector, torch.no_grad(), self.context()():
            forward(floor_model, inputs)
        return collector.dump


EMULATIONS = {
    emulation.name: emulation
    for emulation in (
        Emulation("fp64", "fp32", torch.float64),
        Emulation("autocast_fp16", "fp16", None),
        Emulation("autocast_bf16", "bf16", None),
        Emulation("half", "fp16", torch.float16),
        Emulation("int8", "fp32", None, quantized=True),
    )
}


@dataclass(frozen=True)
class Floor:
    """The noise floor of one emulation on one batch: each module's local error (replay) and
    the accumulated comparison of a whole emulated forward with the reference's."""

    emulation: Emulation
    local: tuple[LocalError, ...]
    accumulated: ComparisonResult


def measure_floor(
    reference: nn.Module, emulation: str, forward: Forward, batch: torch.Tensor, reference_dump: Dump,
    limits: TensorThresholds, calibration: Iterable[torch.Tensor] | None = None,
) -> Floor:
    """The ``Floor`` of ``EMULATIONS[emulation]`` for ``reference`` on ``batch``; ``reference_dump``
    is the reference's own full dump of the same forward, ``limits`` the tensor section to compare
    under, ``calibration`` the batches an ``int8`` floor is calibrated on."""
    chosen = EMULATIONS[emulation]
    model = chosen.model(reference, forward, calibration)
    local = replay(reference, lambda m: forward(m, batch), {"floor": chosen.replayer(model)})["floor"]
    return Floor(chosen, local, compare(reference_dump, chosen.dump(model, forward, batch), limits))
