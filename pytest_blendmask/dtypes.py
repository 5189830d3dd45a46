"""The precisions a target computes in, and how eager PyTorch reaches them (autocast).

No torch import at module level: the plugin imports this for ``pytest --help``.
"""
from __future__ import annotations

import contextlib
from typing import Literal

Dtype = Literal["fp32", "fp16", "bf16", "int8"]

_AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def autocast(device_type: str, dtype: Dtype) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` for fp16/bf16 on ``device_type``; a no-op context for fp32.

    On the CPU that mirrors ATC's ``allow_fp32_to_fp16``: matmuls and convolutions in half
    precision, the rest in float32.
    """
    import torch

    if dtype not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, _AUTOCAST_DTYPES[dtype]))
