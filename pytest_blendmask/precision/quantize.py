"""int8 on the CPU, built from the reference's weights alone: the floor of an int8 target.

A quantised target's noise floor is what quantisation itself costs on this model, measured
on a model quantised *independently* of the one under test (never its graph, so a fault
edited there cannot raise its own allowance). The recipe is the one the ``ort:int8`` target
is built with (``atc/ort.py``, static post-training quantisation of the convolutions), here
as fake quantisation in float32 (quantise, then dequantise, at the same places):

- each convolution's weight: per output channel, symmetric, 7 bits as the target's
  ``reduce_range`` (integers -64..64, scale ``max|w| / 64``; per-channel scales make a folded
  BatchNorm's per-channel factor irrelevant);
- each convolution's input and output: per tensor, asymmetric uint8 over ``[min(lo, 0),
  max(hi, 0)]``, ``lo``/``hi`` the range seen over the calibration batches (MinMax
  calibration), a range per call of a module called more than once, as ONNX Runtime has a
  node per call. Where, matters for local error (which module's replay pays for it): ONNX
  Runtime quantises a tensor right after the node that produced it, so an input is quantised
  after the module that produced it (before the conv where functional code or the graph input
  did), and an output after a folded BatchNorm (ONNX Runtime fuses Conv+BN before
  quantising), before any other norm (GroupNorm stays unfused and float);
- everything else in float32.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..model.layers import FrozenBatchNorm2d

_FOLDED_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)
UINT8_LEVELS = 255
WEIGHT_MAX = 64  # 7-bit weights (atc/ort.py quantize_int8, reduce_range)


@dataclass
class _Range:
    low: float = 0.0
    high: float = 0.0

    def see(self, t: Tensor) -> None:
        self.low, self.high = min(self.low, float(t.min())), max(self.high, float(t.max()))

    def fake_quantize(self, t: Tensor) -> Tensor:
        scale = (self.high - self.low) / UINT8_LEVELS
        if scale == 0.0:
            return t
        zero_point = int(round(-self.low / scale))
        return torch.fake_quantize_per_tensor_affine(t.float(), scale, zero_point, 0, UINT8_LEVELS).to(t.dtype)


@dataclass
class _CallRanges:
    """One activation's ranges, one per call of the module its hook is on: ONNX Runtime exports each
    call of a shared module (the FCOS head runs once per FPN level) as nodes of its own, calibrated
    apart (R_50's five ``ctrness`` outputs have scales 0.0112 to 0.0160). The hook counts its calls:
    a calibration forward, the floor's forward and its replay each call it once per call of the
    reference's forward, in order (a replayed caller's callees return their recorded outputs
    without their hooks), so the count modulo the calls of one forward is the call."""

    ranges: list[_Range] = field(default_factory=list)
    per_forward: int = 0  # calls in one forward: set after the first calibration batch
    calls: int = 0

    def _next(self) -> int:
        index = self.calls % self.per_forward if self.per_forward else self.calls
        self.calls += 1
        return index

    def see(self, t: Tensor) -> Tensor:
        index = self._next()
        if index == len(self.ranges):
            self.ranges.append(_Range())
        self.ranges[index].see(t)
        return t

    def first_forward_done(self) -> None:
        self.per_forward = self.per_forward or self.calls

    def fake_quantize(self, t: Tensor) -> Tensor:
        return self.ranges[self._next()].fake_quantize(t) if self.ranges else t


def _quantize_weight(weight: Tensor) -> Tensor:
    flat = weight.detach().flatten(1).abs().amax(dim=1)
    scale = torch.where(flat > 0, flat / WEIGHT_MAX, torch.ones_like(flat))
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight.detach(), scale, zero, 0, -WEIGHT_MAX, WEIGHT_MAX)


def _output_sites(model: nn.Module) -> dict[int, tuple[nn.Module, bool]]:
    """Per conv (by id), where its output is quantised: (module, True) after that module's forward,
    (module, False) before it. After the BatchNorm that follows it (its ``norm`` child, or the next
    module of a Sequential), which ONNX Runtime folds into it; before any other norm."""
    sites: dict[int, tuple[nn.Module, bool]] = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            norm = getattr(module, "norm", None)
            unfused = isinstance(norm, nn.Module) and not isinstance(norm, _FOLDED_NORMS)
            sites[id(module)] = (norm, False) if unfused else (module, True)
        if isinstance(module, nn.Sequential):
            children = list(module)
            for conv, after in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(after, _FOLDED_NORMS):
                    sites[id(conv)] = (after, True)
    return sites


def _hook_pair(site: nn.Module, after: bool, act: Callable[[Tensor], Tensor]) -> Any:
    if after:
        return site.register_forward_hook(lambda _m, _args, output: act(output))
    return site.register_forward_pre_hook(lambda _m, args: (act(args[0]), *args[1:]))


def _input_sites(model: nn.Module, convs: list[nn.Conv2d], forward: Callable[[nn.Module, Tensor], Any], batch: Tensor
                 ) -> dict[int, tuple[nn.Module, bool]]:
    """Per conv (by id), where its input is quantised: after the innermost module whose output it is
    (a container's own code made it: the container; an in-place module changed it: that one), as
    ONNX Runtime puts the quantise-dequantise pair right after a tensor's producer and the graph's
    local error counts it there; before the conv where no module returned it (the graph input,
    an in-place function applied to a module's output)."""
    # id -> (the tensor, held so that its id stays its own; its version then; the module)
    produced: dict[int, tuple[Tensor, int, nn.Module]] = {}
    sites: dict[int, tuple[nn.Module, bool]] = {}

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        # Hooks fire innermost first: a container returning its child's tensor unchanged keeps the child.
        if isinstance(output, Tensor) and produced.get(id(output), (None, None))[1] != output._version:
            produced[id(output)] = (output, output._version, module)

    def find(conv: nn.Module, args: tuple[Any, ...]) -> None:
        _, version, producer = produced.get(id(args[0]), (None, None, None))
        if producer is None or args[0]._version != version:  # changed in place since (F.relu_): functional code made it
            sites.setdefault(id(conv), (conv, False))
        else:
            sites.setdefault(id(conv), (producer, True))

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    handles += [conv.register_forward_pre_hook(find) for conv in convs]
    try:
        with torch.no_grad():
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return sites


def int8_copy(reference: nn.Module, forward: Callable[[nn.Module, Tensor], Any], calibration: Iterable[Tensor]) -> nn.Module:
    """A fake-quantised copy of ``reference`` (module doc), calibrated by ``forward(copy, batch)``
    over ``calibration``; the reference is not changed."""
    model = copy.deepcopy(reference).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    batches = list(calibration)
    in_sites, out_sites = _input_sites(model, convs, forward, batches[0]), _output_sites(model)
    convs = [conv for conv in convs if id(conv) in in_sites]  # the forward's own: a training-only branch has no range
    ranges = {id(conv): (_CallRanges(), _CallRanges()) for conv in convs}
    handles = []
    for conv in convs:
        seen_in, seen_out = ranges[id(conv)]
        handles.append(_hook_pair(*in_sites[id(conv)], seen_in.see))
        handles.append(_hook_pair(*out_sites[id(conv)], seen_out.see))
    with torch.no_grad():
        for batch in batches:
            forward(model, batch)
            for call_ranges in (r for pair in ranges.values() for r in pair):
                call_ranges.first_forward_done()
    for handle in handles:
        handle.remove()
    for conv in convs:
        quantize_in, quantize_out = ranges[id(conv)]
        quantize_in.calls = quantize_out.calls = 0
        with torch.no_grad():
            conv.weight.copy_(_quantize_weight(conv.weight))
        _hook_pair(*in_sites[id(conv)], quantize_in.fake_quantize)
        _hook_pair(*out_sites[id(conv)], quantize_out.fake_quantize)
    return model
