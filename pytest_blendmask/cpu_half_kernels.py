"""Half-precision convolutions and matrix products on the CPU, computed by the float32 kernels.

A CPU without native fp16/bf16 kernels (AVX2, no AVX512-FP16 or AMX) runs an fp16 or bf16
convolution in PyTorch's reference loop: 200x the float32 kernel's time (a 256-channel 3x3
convolution at 80x80: 42 s against 0.19 s on the development machine), which made a CPU
fp16 gate of R_50 take hours. The arithmetic both kernels do is the same: products of the
fp16 (or bf16) values summed in float32, the sum rounded once to fp16 (bf16), as fp16
hardware does with fp32 accumulation. So under ``float_kernels()`` those operators take their
fp16/bf16 operands to float32 (exactly), run the float32 kernel and round the result back to
the operands' dtype. The two kernels sum in different orders: their results agree bit for bit
on 99.7 % of a convolution's fp16 outputs, and differ by one rounding elsewhere
(``tests/unit/test_cpu_half_kernels.py``).

A CPU that has native kernels for a dtype (oneDNN's: AVX512-BF16 or AMX for bf16,
AVX512-FP16 or AMX-FP16 for fp16) keeps them: there they are the faster ones, and what the
CPU really computes. Every other operator runs as it would: autocast still decides what is
computed in which dtype, and a ``.half()`` model still runs its norms and activations in fp16.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# The operators that fall back to the reference loop in half precision, each taking its
# floating-point operands in one dtype and returning one tensor of it. Under inference_mode
# the composite ones (conv2d, linear, matmul) reach the mode before they decompose.
FLOAT_KERNEL_OPS = frozenset({
    _aten.convolution, _aten._convolution, _aten.conv1d, _aten.conv2d, _aten.conv3d,
    _aten.conv_transpose1d, _aten.conv_transpose2d, _aten.conv_transpose3d,
    _aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm, _aten.matmul, _aten.linear,
})


@functools.cache
def emulated_dtypes() -> tuple[torch.dtype, ...]:
    """The half dtypes this CPU has no native kernels for: those ``float_kernels`` reroutes."""
    native = {torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported(),
              torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported()}
    return tuple(dtype for dtype, has in native.items() if not has)


class _FloatKernels(TorchDispatchMode):
    def __init__(self, dtypes: tuple[torch.dtype, ...]) -> None:
        super().__init__()
        self.dtypes = dtypes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        half = self._half_dtype(args) if func.overloadpacket in FLOAT_KERNEL_OPS else None
        if half is None:
            return func(*args, **kwargs)

        def widen(value: Any) -> Any:
            return value.float() if isinstance(value, torch.Tensor) and value.dtype == half else value

        return func(*map(widen, args), **{key: widen(value) for key, value in kwargs.items()}).to(half)

    def _half_dtype(self, args: tuple[Any, ...]) -> torch.dtype | None:
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.device.type == "cpu" and arg.dtype in self.dtypes:
                return arg.dtype
        return None


@contextlib.contextmanager
def float_kernels() -> Iterator[None]:
    """Within the block, CPU convolutions and matrix products of fp16/bf16 tensors, in the dtypes
    this CPU has no native kernels for, run as the float32 kernel on the same values, the result
    rounded to their dtype (module doc). Where it has them all, the block changes nothing."""
    dtypes = emulated_dtypes()
    with _FloatKernels(dtypes) if dtypes else contextlib.nullcontext():
        yield
