"""The comparison's pass over a pair of float32 tensors in C: ``tensor_compare.c``, built at first use.

Why: comparing every dump of one 640x640 R_50 forward reads 221 million element pairs,
and issue 14 asks for it in 2 s of wall time on this 2-core machine. ``metrics.py``'s
float64 numpy chunks make about twenty passes over each chunk, and numpy's float64 log is
scalar without AVX-512: 11 ns an element pair on one core, 2.1-2.4 s of wall for the R_50
dumps on two. The C loop makes one pass, with glibc's vector log (libmvec): 4.5 ns.

The flags let the compiler vectorise the loop without changing a result:
``-fopenmp-simd`` honours its ``omp simd`` reductions (vector lanes of each sum, added at
the end) without the OpenMP runtime; ``-fno-math-errno`` and ``-fno-trapping-math`` let it
call the vector log and evaluate both sides of a selection, which is safe because the loop
only sees finite numbers and divides by nothing that can be zero. Not ``-ffast-math``:
linked into a shared library it turns on flush-to-zero for the whole process.

Where the kernel cannot be had (no compiler, no libmvec, a failed build: ``c_kernels.py``)
``pair_sums`` returns None and ``metrics.py`` takes its numpy path, which gives the same
sums to float64 rounding; ``kernel_status()`` says which, and why.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .c_kernels import Kernel, load

SOURCE_NAME = "tensor_compare.c"
SYMBOL = "compare_float32"
ARGTYPES = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")
LIBRARIES = ("-lmvec", "-lm")
SUMS = 14  # the length of tensor_compare.c's out


def _kernel() -> Kernel:
    return load(SOURCE_NAME, SYMBOL, ARGTYPES, FLAGS, LIBRARIES)


def kernel_status() -> str:
    """Which pass compares CPU float32 tensors here, and why (builds the kernel if needed)."""
    return _kernel().status("numpy float64 chunks")


def pair_sums(d: np.ndarray, r: np.ndarray, params: tuple[float, ...]) -> np.ndarray | None:
    """``tensor_compare.c``'s 14 sums over 1-D arrays ``d`` and ``r``, or None where it does not apply.

    It applies to C-contiguous float32 arrays of equal length, all finite (the caller's
    promise), when the kernel is built. ``params``: the 6 numbers ``tensor_compare.c``
    describes (KL offsets and scales, the two error-ratio limits).
    """
    if d.dtype != np.float32 or r.dtype != np.float32 or not (d.flags.c_contiguous and r.flags.c_contiguous):
        return None
    function = _kernel().function
    if function is None:
        return None
    if d.shape != r.shape or d.ndim != 1 or len(params) != 6:
        raise ValueError(f"pair_sums takes two 1-D arrays of one length and 6 parameters, got {d.shape}, {r.shape}, {len(params)}")
    arguments = np.asarray(params, dtype=np.float64)
    out = np.empty(SUMS)
    function(d.ctypes.data, r.ctypes.data, d.size, arguments.ctypes.data, out.ctypes.data)
    return out
