"""Half convolutions and matmuls on the CPU by the float32 kernel: the arithmetic of the native one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_blendmask.cpu_half_kernels import emulated_dtypes, float_kernels
from pytest_blendmask.dtypes import autocast

HALF = [
    pytest.param(dtype, marks=pytest.mark.skipif(dtype not in emulated_dtypes(), reason=f"this CPU has native {dtype} kernels: they are kept"))
    for dtype in (torch.float16, torch.bfloat16)
]


class _Kernels(TorchDispatchMode):
    """Below ``float_kernels``: the dtypes each operator's kernel gets."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, set[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append((func.overloadpacket.__name__, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
        return func(*args, **(kwargs or {}))


def _operands(dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1, 16, 12, 12, generator=g), torch.randn(24, 16, 3, 3, generator=g) / 12, torch.randn(24, generator=g)
    m, n = torch.randn(32, 64, generator=g), torch.randn(64, 48, generator=g) / 8
    return {name: tuple(t.to(dtype) for t in ts) for name, ts in {"conv": (x, w, b), "mm": (m, n), "addmm": (b[:1].expand(48), m, n)}.items()}


CALLS = {
    "conv": lambda x, w, b: F.conv2d(x, w, b, padding=1),
    "mm": lambda m, n: m @ n,
    "addmm": lambda b, m, n: torch.addmm(b, m, n),
}
# Under inference_mode the composite operators (conv2d, matmul) reach the mode undecomposed.
GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("grad_mode", sorted(GRAD_MODES))
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("op", sorted(CALLS))
def test_the_float_kernel_rounds_as_the_native_half_kernel_does(op: str, dtype: torch.dtype, grad_mode: str) -> None:
    operands = _operands(dtype)[op]
    with GRAD_MODES[grad_mode]():
        native = CALLS[op](*operands)
        with _Kernels() as kernels, float_kernels():
            emulated = CALLS[op](*operands)
        by_float_kernel = CALLS[op](*(t.float() for t in operands)).to(dtype)
        exact = CALLS[op](*(t.double() for t in operands)).to(dtype)  # the float64 result, rounded once
    assert emulated.dtype == native.dtype == dtype and emulated.shape == native.shape
    assert torch.equal(emulated, by_float_kernel)
    computed = [(name, dtypes) for name, dtypes in kernels.seen if name not in ("to", "_to_copy")]
    assert len(computed) == 1 and computed[0][1] == {torch.float32}, kernels.seen  # the float32 kernel ran
    # Both sum the half values in float32 and round once: each is the exact result rounded, but
    # where an fp32 rounding of the sum tips it over a half-way point.
    for result in (native, emulated):
        assert (result == exact).float().mean() > 0.99
    one_rounding = (exact.double().abs() * torch.finfo(dtype).eps).clamp_min(torch.finfo(dtype).tiny)
    assert ((emulated.double() - native.double()).abs() <= one_rounding * 1.001).all()


def test_float32_and_other_operators_pass_through_untouched() -> None:
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(3, 4, 1, 1)
    with float_kernels():
        same = F.conv2d(x, w)
        halved = torch.relu(x.half())
    assert torch.equal(same, F.conv2d(x, w)) and halved.dtype == torch.float16


@pytest.mark.skipif(torch.float16 not in emulated_dtypes(), reason="this CPU has native fp16 kernels: they are kept")
def test_autocast_on_the_cpu_runs_half_convolutions_by_the_float_kernel_and_keeps_autocasts_dtypes() -> None:
    conv, norm = torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad(), autocast("cpu", "fp16"):
        y = conv(x)
        z = norm(y)
    with torch.no_grad(), float_kernels():
        expected = F.conv2d(x.half(), conv.weight.half(), conv.bias.half())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        native = norm(conv(x))
    assert y.dtype == torch.float16 and z.dtype == native.dtype  # autocast's policy, unchanged
    assert torch.equal(y, expected)
    with torch.no_grad(), autocast("cpu", "fp16", forced=True):  # a .half() model: no autocast
        assert norm.half()(y).dtype == torch.float16
