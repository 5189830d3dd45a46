"""The benchmark grid: which (device, batch, input size, dtype, norm, serial/streams) points to measure.

``--bm-perf-grid quick`` is CI's grid, sized to finish within 3 minutes on a 2-core CPU with
the lite model; ``full`` is the hardware run. Both cross the same five axes:

========  =======================================  ====================================
axis      quick                                    full
========  =======================================  ====================================
batch     the two smallest of --bm-batch-sizes     every --bm-batch-sizes (1,2,4,8,16)
input     --bm-input-size, else 256x256            --bm-input-size, else 512x512, 640x640
dtype     fp32 and the device's half type          fp32, fp16, bf16
norm      gn, bn (seed 000's GN -> BN step)        gn, bn
mode      serial, streams                          serial, streams
========  =======================================  ====================================

The half type of the quick grid is fp16 on accelerators and bf16 on the CPU: CPU fp16
autocast has no native kernels on most x86 CPUs (PyTorch's fallback measured 50x slower
than fp32 on an avx512_bf16 CPU, where bf16 is 2.5x faster; without native kernels the gate
runs half convolutions on the float32 ones, ``cpu_half_kernels``), so timing it in CI would
only measure an emulation. Stream-parallel points need a cuda or npu device; on the CPU they are kept in
the grid and skipped with the reason, so the serial-vs-streams table shows why it is empty.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pytest_blendmask.perf.ladder import MODES, GridDtype, PointConfig
from pytest_blendmask.targets import Target, parse_target

GRID_NAMES = ("quick", "full")
NORMS = ("gn", "bn")

QUICK_INPUT_SIZES = ((256, 256),)
FULL_INPUT_SIZES = ((512, 512), (640, 640))  # seed 000 benchmarked 640x640; the lite config runs 512
QUICK_BATCH_COUNT = 2
# The reduced precision each device type runs fast: fp16 on accelerators, bf16 on the CPU.
HALF_DTYPES: dict[str, GridDtype] = {"cpu": "bf16", "cuda": "fp16", "npu": "fp16"}
FULL_DTYPES: tuple[GridDtype, ...] = ("fp32", "fp16", "bf16")
STREAM_DEVICE_TYPES = ("cuda", "npu")


class GridPoint(PointConfig):
    """One configuration to time, and the target it runs on (the plain fields live in ``ladder``, which the report reads)."""

    @property
    def target(self) -> Target:
        """The eager target this point runs on (its id keys the ``[perf."<target>"]`` thresholds)."""
        return parse_target(self.target_id)


@dataclass(frozen=True)
class GridSpec:
    """A grid's axes (the device axis comes from the targets under test) and its round counts."""

    name: str
    batch_sizes: tuple[int, ...]
    input_sizes: tuple[tuple[int, int], ...]
    full_dtypes: bool  # fp32, fp16 and bf16 everywhere, rather than fp32 and the device's half type
    warmup_rounds: int
    rounds: int  # model-only rounds timed by pytest-benchmark
    e2e_rounds: int  # end-to-end rounds, timed next to it

    def dtypes(self, device: str) -> tuple[GridDtype, ...]:
        return FULL_DTYPES if self.full_dtypes else ("fp32", HALF_DTYPES[device.split(":")[0]])

    def points(self, devices: Sequence[str]) -> list[GridPoint]:
        """Every point, device-major, then input size, batch size, dtype, norm, mode."""
        return [
            GridPoint(device, batch, size, dtype, norm, mode)
            for device in devices
            for size in self.input_sizes
            for batch in self.batch_sizes
            for dtype in self.dtypes(device)
            for norm in NORMS
            for mode in MODES
        ]


def grid_spec(name: str, batch_sizes: Sequence[int], input_size: tuple[int, int] | None) -> GridSpec:
    """The ``quick`` or ``full`` grid for the session's --bm-batch-sizes and --bm-input-size.

    quick keeps the two smallest batch sizes and 10 timed rounds (p99 of 10 rounds is
    close to their maximum; the full grid's 30 give it meaning).
    """
    sizes = (input_size,) if input_size is not None else None
    if name == "quick":
        return GridSpec(name, tuple(sorted(batch_sizes)[:QUICK_BATCH_COUNT]), sizes or QUICK_INPUT_SIZES,
                        full_dtypes=False, warmup_rounds=1, rounds=10, e2e_rounds=3)
    if name == "full":
        return GridSpec(name, tuple(batch_sizes), sizes or FULL_INPUT_SIZES,
                        full_dtypes=True, warmup_rounds=3, rounds=30, e2e_rounds=10)
    raise ValueError(f"unknown perf grid {name!r}; expected one of {', '.join(GRID_NAMES)}")


def eager_devices(targets: Sequence[Target]) -> list[str]:
    """The distinct devices the targets are timed on here, in order: the grid's device axis.

    ONNX Runtime and .om targets are not timed here (``timed_device`` None); their runners
    have their own loops.
    """
    return list(dict.fromkeys(t.timed_device for t in targets if t.timed_device is not None))


def skip_reason(point: GridPoint) -> str | None:
    """Why ``point`` cannot run on this machine, or None."""
    device_type = point.device.split(":")[0]
    if point.mode == "streams" and device_type not in STREAM_DEVICE_TYPES:
        return f"stream-parallel FPN heads need a cuda or npu device; {point.device} has no streams"
    return point.target.skip_reason()
