"""The precisions a target computes in, and how eager PyTorch reaches them (autocast).

No torch import at module level: the plugin imports this for ``pytest --help``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

Dtype = Literal["fp32", "fp16", "bf16", "int8"]

_AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def autocast(device_type: str, dtype: Dtype, *, forced: bool = False) -> contextlib.AbstractContextManager[object]:
    """The context a model computes in ``dtype`` under on ``device_type``.

    fp16/bf16: ``torch.autocast``, which on the CPU mirrors ATC's ``allow_fp32_to_fp16``
    (matmuls and convolutions in half precision, the rest in float32); none when ``forced``:
    the model and its inputs are already fp16 and every operator runs in it. On the CPU the
    half convolutions and matmuls then run as the float32 kernel on the same values, rounded
    back (``cpu_half_kernels``: the same arithmetic, 200x faster without native fp16).
    fp32 and int8: a no-op context.
    """
    if dtype not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return _computing_in_half(device_type, _AUTOCAST_DTYPES[dtype], forced)


@contextlib.contextmanager
def _computing_in_half(device_type: str, dtype: str, forced: bool) -> Iterator[None]:
    import torch

    from .cpu_half_kernels import float_kernels

    with contextlib.ExitStack() as stack:
        if not forced:
            stack.enter_context(torch.autocast(device_type, dtype=getattr(torch, dtype)))
        if device_type == "cpu":
            stack.enter_context(float_kernels())
        yield
