"""A trained model in another norm layout: its convolutions kept, every norm layer refitted.

A weight file fixes the norm of every slot (the shipped lite weights and AdelaiDet's
releases: FrozenBN backbone, BN basis module, GN head), but the perf grid's norm axis (seed
000's GN -> BN step) times all-GN and all-BN models. Timing them with random init would make
end-to-end times meaningless: nothing passes the score threshold, so NMS, the blender and the
paste never run. ``with_norm`` builds the other layout with the weights' convolutions and fits
each of its norm layers, on calibration images, to reproduce what the weights' own norm layer
outputs there:

* each norm layer of the new model is paired with the weights' norm layer that runs at the
  same position of the forward (the k-th norm call of one model with the k-th of the other:
  the layouts differ in how modules are shared, a GN head being one module over all FPN
  levels and a BN head one module per level, never in the order of the calls);
* for channel c the new layer gets the least-squares affine map from its own normalisation
  ``u`` of the input (the input itself for BN, ``group_norm`` without affine for GN) to the
  weights' layer's output ``r``:  a_c = cov(u_c, r_c) / var(u_c) (0 where var is 0),
  b_c = mean(r_c) - a_c mean(u_c), over all calibration pixels and, for a shared module,
  all the calls it serves;
* a BN layer stores it as running_mean = mean(x_c), running_var = var(x_c),
  weight = a_c sqrt(var(x_c) + eps), bias = b_c + a_c mean(x_c); a GN layer as weight = a_c,
  bias = b_c.

The fit is exact where the new layer can express the old one (BN from FrozenBN or BN, GN from
GN with the same groups) and an approximation elsewhere (GN's per-image statistics against
BN's fixed ones). Each layer is fitted on the trained model's activations, so the errors
compound through the depth: how many detections survive is for the caller to measure and
report.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blendmask import BlendMask
from .layers import FrozenBatchNorm2d

NORM_TYPES = (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm)


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's norm layers (BN, FrozenBN, GN) by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NORM_TYPES)}


@contextmanager
def _on_norm_calls(model: nn.Module, hook: Callable[[nn.Module, Tensor, Tensor], None]) -> Iterator[None]:
    handles = [m.register_forward_hook(lambda m, args, out: hook(m, args[0], out)) for m in norm_layers(model).values()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def norm_call_order(model: BlendMask, images: Tensor) -> list[nn.Module]:
    """The norm layers of ``model`` in the order ``forward_raw`` calls them (a shared one once per call)."""
    calls: list[nn.Module] = []
    with _on_norm_calls(model, lambda m, x, out: calls.append(m)), torch.no_grad():
        model.forward_raw(images)
    return calls


class _AffineFit:
    """Per-channel sums for the least-squares fit r ~ a u + b, accumulated over calls (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: list[Tensor] = []  # sum u, sum u^2, sum r, sum u r, sum x, sum x^2 per channel

    def add(self, u: Tensor, r: Tensor, x: Tensor) -> None:
        u, r, x = u.double(), r.double(), x.double()  # [N, C, h, w]
        dims = (0, 2, 3)
        sums = [u.sum(dims), (u * u).sum(dims), r.sum(dims), (u * r).sum(dims), x.sum(dims), (x * x).sum(dims)]
        self.sums = sums if not self.sums else [a + b for a, b in zip(self.sums, sums)]
        self.count += u.numel() // u.shape[1]

    def solve(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a, b, mean(x), var(x)) per channel."""
        mean_u, mean_u2, mean_r, mean_ur, mean_x, mean_x2 = (s / self.count for s in self.sums)
        var_u = (mean_u2 - mean_u**2).clamp_min(0)
        # A channel constant over the calibration pixels carries no slope: its output is its mean.
        a = torch.where(var_u > 1e-12, (mean_ur - mean_u * mean_r) / var_u.clamp_min(1e-12), torch.zeros_like(var_u))
        return a, mean_r - a * mean_u, mean_x, (mean_x2 - mean_x**2).clamp_min(0)


def _normalised(layer: nn.Module, x: Tensor) -> Tensor:
    # BN's statistics are the ones fitted here, so its slope is taken on the raw input.
    return F.group_norm(x, layer.num_groups, eps=layer.eps) if isinstance(layer, nn.GroupNorm) else x


@torch.no_grad()
def _store(layer: nn.Module, fit: _AffineFit) -> None:
    a, b, mean_x, var_x = fit.solve()
    if isinstance(layer, nn.GroupNorm):
        weight, bias = a, b
    else:
        layer.running_mean.copy_(mean_x)
        layer.running_var.copy_(var_x)
        weight, bias = a * (var_x + layer.eps).sqrt(), b + a * mean_x
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)


def with_norm(model: BlendMask, norm: str, images: Tensor) -> BlendMask:
    """``model`` rebuilt with every norm slot ``norm`` (see ``configs.ModelConfig.norm``), norm layers refitted.

    Args:
        model: a BlendMask with its weights, in eval mode, left unchanged (its hooks are removed).
        norm: ``frozen_bn``, ``bn`` or ``gn`` (``model``'s own gives its layers back, refitted exactly).
        images (Tensor[N, 3, H, W]): preprocessed calibration batch (images the weights detect on).

    Returns:
        BlendMask: a new model in eval mode.
    """
    target = BlendMask(dataclasses.replace(model.cfg, norm=norm)).eval()
    source_state, target_state = model.state_dict(), target.state_dict()
    # Convolutions, and norm layers that keep their key and shape (the never-run seg head's
    # BN), load as they are; the norm layers the forward calls are then refitted.
    target.load_state_dict(
        {k: v for k, v in source_state.items() if k in target_state and v.shape == target_state[k].shape}, strict=False
    )
    order = norm_call_order(target, images[:1])
    fits = {id(layer): _AffineFit() for layer in order}
    call_index = itertools.count()

    def fit_call(_: nn.Module, x: Tensor, out: Tensor) -> None:
        index = next(call_index)
        if index < len(order):
            fits[id(order[index])].add(_normalised(order[index], x), out, x)

    with _on_norm_calls(model, fit_call), torch.no_grad():
        model.forward_raw(images)
    seen = next(call_index)
    if seen != len(order):
        raise RuntimeError(
            f"{model.cfg.name}: the {model.cfg.norm} layout makes {seen} norm calls per forward, the {norm} one {len(order)}"
        )
    for layer in dict.fromkeys(order):
        _store(layer, fits[id(layer)])
    return target
