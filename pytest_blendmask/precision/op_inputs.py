"""What BlendMask hands each operator: inputs captured from a reference forward, plus edge cases.

``captured_cases`` runs the CPU model once on a batch while recording the arguments of
every call to the operators the operator checks cover (``OPERATORS``): the FPN's nearest
resize, the basis module's bilinear resizes, the blender's roi_align and attention resize,
the decoder's batched_nms, and the deformable convolutions. Calls are recorded by wrapping
the name each model module calls (``fpn.resize_to``, ``blender.roi_align``, ...) for the
duration of the forward, so every case is tied to its call site.

The lite model has no deformable layer. Where a model has none, the deformable cases use
the real input and weight of the 3x3 conv of each stage's first block, where R_101_dcni3
deforms (res3-res5), with offsets and masks from a seeded 3x3 conv on that input; a model
with deformable layers gives its own calls.

``edge_cases`` derives the cases no image produces from the captured tensors: boxes on and
beyond the image border, degenerate boxes, tied NMS scores, an IoU exactly at the NMS
threshold, offsets pointing outside the feature map, empty inputs.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from ..model import basis, blender, decode, fpn
from ..model.backbone import STAGE_NAMES, ModulatedDeformConvNorm

DEFORM_CONV = "deform_conv2d"
ROI_ALIGN = "roi_align"
BATCHED_NMS = "batched_nms"
BASIS_RESIZE = "basis_bilinear_resize"
ATTENTION_RESIZE = "attention_bilinear_resize"
FPN_RESIZE = "fpn_nearest_resize"
OPERATORS = (DEFORM_CONV, ROI_ALIGN, BATCHED_NMS, BASIS_RESIZE, ATTENTION_RESIZE, FPN_RESIZE)

OFFSET_SEED = 0
OFFSET_RMS_PX = 1.0  # trained DCNv2 offsets are mostly within a few pixels
DEFORM_STAGES = STAGE_NAMES[1:]  # res3-res5, where R_101_dcni3 deforms
# NMS pairs this far apart: an IoU threshold 0.1 off BlendMask's 0.6 either way flips some.
AROUND_THRESHOLD = (0.45, 0.5, 0.55, 0.58, 0.62, 0.65, 0.7, 0.75)


@dataclass(frozen=True)
class OpCase:
    """One call of one operator: ``inputs`` are its keyword arguments (tensors on the CPU)."""

    operator: str
    name: str
    inputs: dict[str, Any]

    def describe(self) -> str:
        """The case name and its tensor shapes, e.g. ``captured blender#0 (input [1, 4, 128, 128], boxes [23, 5])``."""
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in self.inputs.items() if isinstance(v, Tensor))
        return f"{self.name} ({shapes})"


@contextlib.contextmanager
def _recording(module: ModuleType, name: str, calls: list[dict[str, Any]]) -> Iterator[None]:
    """Record the arguments, by parameter name, of every call made through ``module.<name>``."""
    original = getattr(module, name)
    signature = inspect.signature(original)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append({k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in bound.arguments.items()})
        return original(*args, **kwargs)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def seeded_offsets(x: Tensor, groups: int = 1, seed: int = OFFSET_SEED) -> tuple[Tensor, Tensor]:
    """Offsets [N, 2*G*9, H, W] and masks [N, G*9, H, W] from a seeded 3x3 conv on ``x``.

    The conv's outputs are scaled to an RMS of ``OFFSET_RMS_PX`` (offsets) and 1 (mask
    logits, then sigmoid), so that they vary with the features as learnt offsets do.
    """
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(27 * groups, x.shape[1], 3, 3, generator=generator, dtype=x.dtype)
    raw = nn.functional.conv2d(x, weight, padding=1)
    offset, logits = raw[:, : 18 * groups], raw[:, 18 * groups :]
    offset = offset * (OFFSET_RMS_PX / offset.square().mean().sqrt().clamp_min(1e-12))
    logits = logits / logits.square().mean().sqrt().clamp_min(1e-12)
    return offset, logits.sigmoid()


def _deform_cases(model: nn.Module, images: Tensor) -> list[OpCase]:
    """The model's deformable calls, or seeded offsets at res3-res5's first 3x3 conv where it has none."""
    bottom_up = model.backbone.bottom_up
    layers = [(n, m) for n, m in bottom_up.named_modules() if isinstance(m, ModulatedDeformConvNorm)]
    cases: list[OpCase] = []
    handles = []
    if layers:
        for name, layer in layers:
            handles.append(layer.register_forward_pre_hook(_record_deform_call(name, cases)))
    else:
        for stage in DEFORM_STAGES:
            conv = getattr(bottom_up, stage)[0].conv2
            handles.append(conv.register_forward_pre_hook(_seeded_deform_call(f"{stage}.0.conv2", conv.weight, cases)))
    try:
        with torch.inference_mode():
            bottom_up(images)
    finally:
        for handle in handles:
            handle.remove()
    return cases


def _record_deform_call(name: str, cases: list[OpCase]) -> Callable[..., None]:
    def hook(layer: ModulatedDeformConvNorm, args: tuple[Tensor, Tensor]) -> None:
        x, offset_mask = args
        # The layer's own split: 18 interleaved offsets, 9 mask logits.
        inputs = {"input": x, "offset": offset_mask[:, :18], "weight": layer.weight, "mask": offset_mask[:, 18:].sigmoid(),
                  "stride": layer.stride, "padding": 1, "dilation": 1}
        cases.append(OpCase(DEFORM_CONV, f"captured {name}", {k: v.detach().clone() if isinstance(v, Tensor) else v
                                                              for k, v in inputs.items()}))

    return hook


def _seeded_deform_call(name: str, weight: Tensor, cases: list[OpCase]) -> Callable[..., None]:
    def hook(conv: nn.Module, args: tuple[Tensor]) -> None:
        x = args[0].detach().clone()
        offset, mask = seeded_offsets(x)
        inputs = {"input": x, "offset": offset, "weight": weight.detach().clone(), "mask": mask,
                  "stride": 1, "padding": 1, "dilation": 1}
        cases.append(OpCase(DEFORM_CONV, f"captured {name} + seeded offsets", inputs))

    return hook


def captured_cases(model: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]]) -> list[OpCase]:
    """Every covered operator call of one CPU forward of ``model`` on ``images`` (see the module docstring)."""
    sites = ((FPN_RESIZE, "fpn", fpn, "resize_to"), (BASIS_RESIZE, "basis_module", basis, "resize_to"),
             (ATTENTION_RESIZE, "blender", blender, "resize_to"), (ROI_ALIGN, "blender", blender, "roi_align"),
             (BATCHED_NMS, "decode", decode, "batched_nms"))
    calls: dict[str, list[dict[str, Any]]] = {operator: [] for operator, *_ in sites}
    with contextlib.ExitStack() as stack:
        for operator, _, module, name in sites:
            stack.enter_context(_recording(module, name, calls[operator]))
        with torch.inference_mode():
            model(images, image_sizes)
    cases = [OpCase(operator, f"captured {site}#{i}", inputs)
             for operator, site, *_ in sites for i, inputs in enumerate(calls[operator])]
    return cases + _deform_cases(model, images)


def smallest_case(cases: list[OpCase], operator: str) -> OpCase:
    """The case of ``operator`` with the smallest first tensor."""
    found = [case for case in cases if case.operator == operator]
    if not found:
        raise ValueError(f"no captured {operator} call to derive edge cases from; the forward made none")
    return min(found, key=lambda case: next(v.numel() for v in case.inputs.values() if isinstance(v, Tensor)))


def _with(case: OpCase, name: str, **inputs: Any) -> OpCase:
    return OpCase(case.operator, f"edge: {name}", {**case.inputs, **inputs})


def _roi_edges(case: OpCase) -> list[OpCase]:
    features = case.inputs["input"]
    height, width = (side / case.inputs["spatial_scale"] for side in features.shape[-2:])

    def boxes(*xyxy: tuple[float, float, float, float]) -> Tensor:
        return torch.tensor([(0.0, *b) for b in xyxy], dtype=case.inputs["boxes"].dtype).reshape(-1, 5)

    border = boxes((0, 0, width, height), (0, 0, 40, 60), (width - 40, height - 30, width, height),
                   (-30, -20, 50, 40), (width - 50, height - 40, width + 60, height + 30),
                   (width + 10, height + 10, width + 90, height + 70))
    degenerate = boxes((100, 100, 100, 150), (120, 200, 180, 200), (200, 200, 200, 200), (300, 300, 280, 290),
                       (10.2, 10.2, 10.5, 10.6))
    return [_with(case, "boxes on and beyond the image border", boxes=border),
            _with(case, "degenerate boxes (zero width/height, a point, inverted, sub-pixel)", boxes=degenerate),
            _with(case, "no boxes", boxes=boxes())]


def _nms_edges(case: OpCase) -> list[OpCase]:
    tied = (case.inputs["scores"] * 20).round() / 20
    crafted = torch.tensor([[0, 0, 10, 10], [0, 0, 6, 10], [0, 0, 10, 10], [50, 50, 50, 60], [50, 50, 50, 60],
                            [0, 0, 10, 10]], dtype=case.inputs["boxes"].dtype)
    # [1] overlaps [0] by IoU 60/100, exactly the threshold 0.6; [2] duplicates [0] with the same
    # score; [3] and [4] are identical zero-area boxes (IoU 0/0); [5] is [0] in another class.
    # One pair per class, the second box shifted right so that IoU(pair) = t: shift = w(1-t)/(1+t).
    ious = torch.tensor(AROUND_THRESHOLD, dtype=case.inputs["boxes"].dtype)
    shift = 64 * (1 - ious) / (1 + ious)
    base = torch.tensor([10.0, 10.0, 74.0, 58.0], dtype=ious.dtype).expand(len(ious), 4)
    moved = base + torch.stack((shift, torch.zeros_like(shift), shift, torch.zeros_like(shift)), dim=1)
    return [
        _with(case, f"pairs at IoU {AROUND_THRESHOLD[0]}-{AROUND_THRESHOLD[-1]}, around the threshold",
              boxes=torch.cat((base, moved)), scores=torch.tensor([0.9] * len(ious) + [0.8] * len(ious)),
              idxs=torch.arange(len(ious)).repeat(2)),
        _with(case, "scores rounded to 0.05 (tied groups of overlapping boxes)", scores=tied),
        _with(case, "IoU exactly at the threshold, duplicates, zero-area boxes", boxes=crafted,
              scores=torch.tensor([0.9, 0.8, 0.9, 0.7, 0.7, 0.9]), idxs=torch.tensor([0, 0, 0, 0, 0, 1]),
              iou_threshold=0.6),
        _with(case, "no boxes", boxes=crafted[:0], scores=torch.zeros(0), idxs=torch.zeros(0, dtype=torch.long)),
    ]


def _deform_edges(case: OpCase) -> list[OpCase]:
    x, weight = case.inputs["input"], case.inputs["weight"]
    offset, mask = seeded_offsets(x, seed=OFFSET_SEED + 1)
    grouped_offset, _ = seeded_offsets(x, groups=2, seed=OFFSET_SEED + 2)
    return [
        _with(case, f"offsets outside the map (RMS {12 * OFFSET_RMS_PX:g} px on {x.shape[-2]}x{x.shape[-1]})",
              offset=offset * 12, mask=mask),
        _with(case, "integer offsets, points exactly on and across the border", offset=(offset * 8).round(), mask=mask),
        _with(case, "DCNv1 (no mask), stride 2, dilation 2, 2 offset groups, 2 groups",
              offset=grouped_offset[:, :, ::2, ::2], mask=None, weight=weight[:, : weight.shape[1] // 2],
              stride=2, padding=2, dilation=2),
        _with(case, "empty batch", input=x[:0], offset=offset[:0], mask=mask[:0]),
    ]


def _resize_edges(case: OpCase) -> list[OpCase]:
    x = case.inputs["x"]
    return [_with(case, "a 1x1 map", x=x[:1, :, :1, :1], size=(2, 2)), _with(case, "empty batch", x=x[:0])]


def edge_cases(captured: list[OpCase]) -> list[OpCase]:
    """The edge cases of every operator, built from the smallest captured call of each."""
    cases = _roi_edges(smallest_case(captured, ROI_ALIGN)) + _nms_edges(smallest_case(captured, BATCHED_NMS))
    cases += _deform_edges(smallest_case(captured, DEFORM_CONV))
    for operator in (BASIS_RESIZE, ATTENTION_RESIZE, FPN_RESIZE):
        cases += _resize_edges(smallest_case(captured, operator))
    return cases
