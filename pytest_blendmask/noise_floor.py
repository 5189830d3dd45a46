"""A target held to the noise floor of its precision, from the floor's measurement to the comparison.

What the floor gates judge, for any target that can recompute its modules one by one
(``Target.local_errors``): eager targets replay them, ONNX Runtime targets run the part of
their graph behind each module's tensor. It sits above ``targets`` and ``precision`` and
is what the ``floor_comparison`` fixture and the fault-injection proofs both call.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .atc.ort import calibration_batches
from .data.calibration import CalibrationSet
from .precision.compare import ComparisonResult, compare
from .precision.floor import Floor, measure_floor
from .precision.local import LocalComparison, against_floor
from .precision.thresholds import Thresholds
from .targets import Runner, Target, TargetRun


def raw_forward(model: nn.Module, batch: torch.Tensor) -> Any:
    """The device part of a forward, the one every floor and replay runs."""
    return model.forward_raw(batch)


def target_floor(target: Target, reference: nn.Module, batch: torch.Tensor, reference_run: TargetRun,
                 thresholds: Thresholds, calibration_set: CalibrationSet | None = None) -> Floor:
    """The floor of ``target``'s precision (``target.floor``) for ``reference`` on ``batch``.

    An int8 floor is calibrated the way the int8 target is (``atc/ort.py``'s
    ``calibration_batches`` over ``calibration_set``, the one the target was loaded with:
    the synthetic training images when None, else the calibration part of ``--bm-dataset``),
    at the batch's size, never on the images it judges.
    """
    calibration = None
    if target.floor == "int8":
        batches = calibration_batches(reference, tuple(batch.shape[-2:]), calibration_set)
        calibration = [torch.from_numpy(b) for b in batches]
    return measure_floor(reference, target.floor, raw_forward, batch, reference_run.dump,
                         thresholds.tensor[target.precision], calibration)


def against_its_floor(target: Target, runner: Runner, reference: nn.Module, batch: torch.Tensor, reference_run: TargetRun,
                      floor: Callable[[], Floor], thresholds: Thresholds,
                      accumulated: Callable[[], ComparisonResult]) -> LocalComparison | None:
    """``target`` (loaded as ``runner``) held to its floor on ``batch``; None where it has none.

    Args:
        floor: gives the ``target_floor`` (a cache's, so that targets of one precision share it).
        accumulated: gives the comparison of ``target``'s own run with ``reference_run``, used
            where that run's dump is per layer (eager targets); a compiled graph's per-layer
            dump (``Target.layer_dump``) is compared here instead.
    """
    if target.floor is None:
        return None
    device = target.local_errors(runner, reference, raw_forward, batch, reference_run.dump)
    if device is None:
        return None
    tensor_limits = thresholds.tensor[target.precision]
    layered = target.layer_dump(runner, batch, reference_run.dump)
    comparison = accumulated() if layered is None else compare(reference_run.dump.subset(layered.names()), layered, tensor_limits)
    return against_floor(device, floor(), comparison, thresholds.local[target.precision], tensor_limits.min_layer_numel)
