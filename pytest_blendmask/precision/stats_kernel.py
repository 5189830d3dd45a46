"""A stats dump's four numbers of a CPU float32 tensor in one pass: ``tensor_stats.c``, compiled at first use.

Why: a ``stats`` dump reduces every module output to max, min, sum and sum of squares, and
torch has no operator that computes them together. ``aminmax``, ``sum`` and ``dot`` each
read the output once: on lite at 512x512 (113 distinct outputs, 184 MB) the three passes
cost 23 ms of a 370 ms forward, which put the dump over issue 14's 1.1x budget in half the
runs. The C loop reads each output once (10-13 ms). ``torch.compile`` of the same four
reductions measured 30 ms, and a C++ extension took 28 s to build against torch's headers;
the C file needs no torch headers and builds in 0.2 s.

It is built and loaded by ``c_kernels.py``. Where no compiler is found, the build fails or
the cache folder is not writable, ``one_pass_sums`` returns None and the dump uses torch's
reductions: the same numbers to float32 rounding, in twice the time. ``kernel_status()``
says which, and why.
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from .c_kernels import Kernel, load

SOURCE_NAME = "tensor_stats.c"
SYMBOL = "dense_float32_stats"
ARGTYPES = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
FLAGS = ("-O3", "-shared", "-fPIC")


def _kernel() -> Kernel:
    return load(SOURCE_NAME, SYMBOL, ARGTYPES, FLAGS)


def kernel_status() -> str:
    """Which reduction a stats dump of a CPU float32 tensor uses here, and why (builds the kernel if needed)."""
    return _kernel().status("torch reductions")


def _fills_its_memory(t: Tensor) -> bool:
    """Whether ``t``'s elements are its ``numel`` floats from ``data_ptr`` on, each once: its strides,
    smallest first, are the running products of their sizes (dimensions of size 1 have any stride)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def one_pass_sums(t: Tensor) -> tuple[float, float, float, float] | None:
    """(max, min, sum, sum of squares) of ``t`` in one pass, where the kernel applies.

    It applies to a non-empty CPU float32 tensor whose elements fill its memory without
    overlap (contiguous in any dimension order, channels-last included) and whose sums are
    finite. None otherwise: a GPU or NPU tensor, another dtype, a strided view, NaN or
    infinity, or no kernel on this machine. The caller then uses torch's reductions.
    """
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.numel() == 0:
        return None
    if not _fills_its_memory(t) or t.is_neg():
        return None
    function = _kernel().function
    if function is None:
        return None
    out = (ctypes.c_double * 4)()
    function(t.data_ptr(), t.numel(), out)
    high, low, total, squares = out
    if not (abs(total) < float("inf") and squares < float("inf")):  # NaN or infinity: torch's semantics
        return None
    return high, low, total, squares
