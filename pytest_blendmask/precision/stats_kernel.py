"""A stats dump's four numbers of a CPU float32 tensor in one pass: ``tensor_stats.c``, compiled at first use.

Why: a ``stats`` dump reduces every module output to max, min, sum and sum of squares, and
torch has no operator that computes them together. ``aminmax``, ``sum`` and ``dot`` each
read the output once: on lite at 512x512 (113 distinct outputs, 184 MB) the three passes
cost 23 ms of a 370 ms forward, which put the dump over issue 14's 1.1x budget in half the
runs. The C loop reads each output once (10-13 ms). ``torch.compile`` of the same four
reductions measured 30 ms, and a C++ extension took 28 s to build against torch's headers;
the C file needs no torch headers and builds in 0.2 s.

The library is built with the system C compiler (``$CC``, else ``cc``, ``gcc`` or
``clang``) into the cache root's ``kernels`` folder (``cache_dir.py``), named by the digest
of the source, the compiler and the machine, so a change to any of them builds again. Where
no compiler is found, the build fails or the folder is not writable, ``one_pass_sums``
returns None and the dump uses torch's reductions: the same numbers to float32 rounding, in
twice the time. ``kernel_status()`` says which, and why.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..cache_dir import cache_root

SOURCE = Path(__file__).with_name("tensor_stats.c")
FLAGS = ("-O3", "-shared", "-fPIC")
KERNEL_DIR = "kernels"
BUILD_TIMEOUT_S = 120  # a compiler that hangs must not hang the dump: it takes 0.2 s


class _Kernel(NamedTuple):
    """The loaded library's function, or None, and what a stats dump uses and why."""

    function: Callable[[int, int, ctypes.Array], None] | None
    status: str


def compiler() -> list[str] | None:
    """The C compiler's command: ``$CC`` split as a shell would, else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)
    return [found] if found else None


def library_path(command: list[str]) -> Path:
    """Where the library built by ``command`` is kept: named by the source, the compiler and flags, and the machine."""
    parts = [SOURCE.read_bytes(), " ".join([*command, *FLAGS]).encode(), platform.machine().encode()]
    return cache_root() / KERNEL_DIR / f"tensor_stats-{hashlib.sha256(b'|'.join(parts)).hexdigest()[:16]}.so"


@functools.cache
def _kernel() -> _Kernel:
    command = compiler()
    if command is None:
        return _Kernel(None, "torch reductions: no C compiler (set $CC, or install cc/gcc/clang)")
    library = library_path(command)
    if not library.exists():
        try:
            _build(command, library)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            return _Kernel(None, f"torch reductions: building {SOURCE.name} with {command[0]} failed: {detail.strip()[:300]}")
    try:
        function = ctypes.CDLL(str(library)).dense_float32_stats
    except (OSError, AttributeError) as error:  # a damaged file: delete it and the next process builds again
        return _Kernel(None, f"torch reductions: loading {library} failed ({error}); delete it to rebuild")
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    function.restype = None
    return _Kernel(function, f"one pass in C ({library})")


def _build(command: list[str], library: Path) -> None:
    """Compile into a private file beside ``library`` and rename it into place: concurrent
    builders (xdist workers) never load a half-written library."""
    library.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(descriptor)
    try:
        subprocess.run([*command, *FLAGS, str(SOURCE), "-o", partial], check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)


def kernel_status() -> str:
    """Which reduction a stats dump of a CPU float32 tensor uses here, and why (builds the kernel if needed)."""
    return _kernel().status


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
