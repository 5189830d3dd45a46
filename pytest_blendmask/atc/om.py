"""Run an ATC-compiled .om through ais_bench's ``InferSession`` (anchors.md section 5), where installed.

The .om's outputs come back positionally; they are named after the ONNX export's outputs
(ATC keeps the graph's output order), so the precision family compares them like any target.
Before a dynamic-batch .om is benchmarked, its batch profiles are checked: running a batch
size it was not compiled for fails deep inside ACL (AISBench/benchmark#422).
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .export import run_in_batches

AIS_BENCH_HINT = "install the ais_bench wheel from msit (ais-bench_workload/tool/ais_bench) on a machine with CANN"


class OmProfileError(RuntimeError):
    """The .om was not compiled for the batch sizes a test needs; names the sizes and the ATC fix."""


def ais_bench_reason() -> str | None:
    """None if ``ais_bench.infer.interface`` imports, else why not (the skip reason)."""
    try:
        importlib.import_module("ais_bench.infer.interface")
    except (ImportError, OSError, RuntimeError) as exc:
        # Without CANN's runtime the import fails in aclruntime with ImportError or OSError.
        return f"ais_bench not importable: {exc}; {AIS_BENCH_HINT}"
    return None


def batch_dim(session: Any) -> int:
    """The first input's batch dimension as the .om declares it: -1 for a dynamic-batch model."""
    return int(session.get_inputs()[0].shape[0])


def check_batch_profiles(session: Any, batch_sizes: Sequence[int]) -> None:
    """Raise OmProfileError unless the .om can run every size in ``batch_sizes``.

    A static .om runs only its compiled batch. A dynamic one (batch dimension -1) reports the
    largest compiled profile through ``get_max_dym_batchsize``; ais_bench exposes no list of
    the profiles, so a size above that maximum is the failure detectable up front.
    """
    declared = batch_dim(session)
    if declared >= 0:
        wrong = sorted({b for b in batch_sizes if b != declared})
        if wrong:
            raise OmProfileError(
                f"the .om is static with batch {declared}, but batch sizes {wrong} are needed; "
                f"compile with --input_shape batch -1 and --dynamic_batch_size={','.join(map(str, sorted(set(batch_sizes))))}"
            )
        return
    largest = int(session.get_max_dym_batchsize())
    too_big = sorted({b for b in batch_sizes if b > largest})
    if too_big:
        raise OmProfileError(
            f"the .om's largest dynamic batch profile is {largest}, but batch sizes {too_big} are needed; "
            f"recompile with --dynamic_batch_size including them"
        )


class OmRunner:
    """An .om as a target: ``runner(batch)`` -> raw tensors named like ``forward_raw``.

    Args:
        om_path: the compiled model.
        output_names: the ONNX export's output names, in graph order.
        device_id: the NPU to run on.
        batch_sizes: the batch sizes this runner will be given, checked against the .om's profiles.
    """

    def __init__(self, om_path: str, output_names: Sequence[str], device_id: int = 0, batch_sizes: Sequence[int] = (1,)) -> None:
        reason = ais_bench_reason()
        if reason is not None:
            raise RuntimeError(reason)
        from ais_bench.infer.interface import InferSession

        self.session = InferSession(device_id, str(om_path))
        self.output_names = tuple(output_names)
        check_batch_profiles(self.session, batch_sizes)
        declared = batch_dim(self.session)
        self.mode = "static" if declared >= 0 else "dymbatch"
        self.batch_limit: int | None = declared if declared >= 0 else None
        outputs = self.session.get_outputs()
        if len(outputs) != len(self.output_names):
            raise RuntimeError(f"{om_path}: the .om has {len(outputs)} outputs, the ONNX export {len(self.output_names)}; was it compiled from this export?")

    def _run(self, batch: Tensor) -> dict[str, Tensor]:
        feed = np.ascontiguousarray(batch.detach().cpu().numpy())
        arrays = self.session.infer([feed], mode=self.mode)
        return {name: torch.from_numpy(np.asarray(a, dtype=np.float32)) for name, a in zip(self.output_names, arrays)}

    def __call__(self, batch: Tensor) -> dict[str, Tensor]:
        """Run a ``[N, 3, H, W]`` batch (or ``[N, H, W, 3]`` uint8 for an AIPP .om)."""
        return run_in_batches(self._run, batch, self.batch_limit)
