"""The int8 floor's fake quantisation (``precision/quantize.py``): a range per call of a shared module."""
from __future__ import annotations

import torch
from torch import nn

from pytest_blendmask.precision.quantize import UINT8_LEVELS, int8_copy


class Shared(nn.Module):
    """One conv called twice on inputs 100x apart, as the FCOS head runs on every FPN level."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)  # exact in 7 bits: the error below is the activations'

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(x), self.conv(x * 100)]


def test_each_call_of_a_shared_module_is_quantised_on_its_own_range():
    model, x = Shared().eval(), torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    quantised = int8_copy(model, lambda m, batch: m(batch), [x, x])
    for _ in range(2):  # the calls are counted per forward, forward after forward
        with torch.no_grad():
            small, large = quantised(x)
        # Input and output each round to half a step of their own call's range: [-1, 1] and [-100, 100].
        # One range for both calls would give the first a step of 200/255, an error up to 0.39.
        assert (small - x).abs().max() <= 2 / UINT8_LEVELS + 1e-6
        assert (large - 100 * x).abs().max() <= 200 / UINT8_LEVELS + 1e-4
        assert (small - x).abs().max() > 0  # quantised, not passed through
