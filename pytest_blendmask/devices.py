"""One device-agnostic view of synchronisation, streams and memory for cpu, cuda and npu.

torch_npu registers ``torch.npu`` with the same API as ``torch.cuda`` (anchors.md section 6),
so every accelerator call goes through ``torch.get_device_module(device.type)``; the CPU has
no streams and no allocator statistics, which the functions here make explicit.
"""
from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator

import torch

ACCELERATOR_TYPES = ("cuda", "npu")


def is_accelerator(device: torch.device) -> bool:
    """True for device types that have streams and an allocator (cuda, npu)."""
    return device.type in ACCELERATOR_TYPES


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device``; a no-op on the CPU, which runs eagerly."""
    if is_accelerator(device):
        torch.get_device_module(device.type).synchronize(device)


def new_stream(device: torch.device) -> torch.Stream:
    """A fresh side stream on an accelerator; the CPU has none, so asking for one is an error."""
    if not is_accelerator(device):
        raise RuntimeError(f"streams need a cuda or npu device, got {device}")
    return torch.get_device_module(device.type).Stream(device=device)


@contextlib.contextmanager
def on_stream(stream: torch.Stream, device: torch.device) -> Iterator[None]:
    """Queue the work issued inside the block on ``stream``."""
    with torch.get_device_module(device.type).stream(stream):
        yield


def current_stream(device: torch.device) -> torch.Stream:
    """The stream work is issued on by default."""
    return torch.get_device_module(device.type).current_stream(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (accelerators only; the CPU's peak RSS cannot be reset)."""
    if is_accelerator(device):
        torch.get_device_module(device.type).reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory (accelerators) or peak resident set size of this process (cpu)."""
    if is_accelerator(device):
        return int(torch.get_device_module(device.type).max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024)
