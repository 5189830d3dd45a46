"""Operator-level standards: one operator's output on the device under test against the
same operator in float64 on the CPU, fed the same inputs (msprobe's API accuracy checker,
``../shared/anchors_2.md`` "API accuracy checker"; limits in ``[precision.operator.*]``).

Four rules, each returning an ``OpVerdict`` (the value, the limit, the verdict and the
worst element):

- ``absolute_threshold``: msprobe's absolute-threshold rule. Element i is judged by
  ``|d_i - r_i| <= small_value_atol`` where ``|r_i| < small_value``, else by
  ``|d_i - r_i| / |r_i| <= rtol``. The value is the worst element's error divided by what
  its rule allows, so the verdict is ``value <= 1``; msprobe's "every error rate is 0" is
  the same statement. msprobe applies it to elementwise arithmetic, rounded once; for
  sums and samplers two optional corrections keep it meaningful (see the function): the
  magnitude of the summed terms instead of |r_i| (cancellation), and a slack for sampling
  positions held in float32. Measured on the lite model's captured inputs, torchvision's
  own fp32 CPU kernels against float64 reach a ratio of 2.7e5 (roi_align), 270 (attention
  resize: signed logits cancel) and 3.4e4 (deform_conv2d) under the plain rule; 193, 0.17
  and 1.5 with the magnitude; 0.12 and 0.56 for the samplers with the position slack too.
- ``ulp_share``: msprobe's ULP rule for accumulating operators. An element's ULP error is
  ``|d_i - r_i| / ulp(r_i)`` with ulp the spacing of the device's dtype at ``r_i``
  (``2**floor(log2 |r_i|) * eps``, the subnormal spacing below the smallest normal). The
  value is the share of elements above ``ulp_threshold``. msprobe also passes fp32 when the
  mean ULP error is < 64 or when the share is no worse than a GPU's; neither is used: a
  handful of near-zero outputs decide a mean, and there is no GPU benchmark here.
- ``binary_consistency``: pure data movement (nearest resize, gathers) must reproduce the
  reference exactly: the value is the number of differing elements, limit 0.
- ``nms_consistency``: kept indices are a decision, not a number; see its docstring for how
  ties in score and IoU are judged fairly.

NaN/Inf follow ``precision/metrics.py``'s policy: a position matches when both are NaN or
both the same infinity and is then left out; any other NaN/Inf disagreement fails the
rule outright (value inf). A shape disagreement fails it the same way. Empty tensors of
equal shape pass with value 0: for an empty input the shape is what there is to check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .thresholds import OperatorThresholds

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class OpVerdict:
    """One rule applied to one operator output; ``passed`` is ``value <= limit``.

    ``worst_index`` is where the deciding element sits in the output (None when no single
    element decides, e.g. a shape mismatch), with the device's and the reference's values
    there. ``measures`` holds the rule's secondary numbers for the report.
    """

    metric: str
    value: float
    limit: float
    passed: bool
    worst_index: tuple[int, ...] | None
    worst_dut: float | None
    worst_ref: float | None
    detail: str
    measures: dict[str, float]


def dtype_of(precision: str) -> torch.dtype:
    """The torch dtype of a precision name (fp32, fp16, bf16): the dtype ULPs are counted in."""
    if precision not in _DTYPES:
        raise ValueError(f"no floating dtype for precision {precision!r}; expected one of {', '.join(_DTYPES)}")
    return _DTYPES[precision]


def _verdict(metric: str, value: float, limit: float, index: tuple[int, ...] | None, dut: Tensor, ref: Tensor,
             detail: str, measures: dict[str, float]) -> OpVerdict:
    at_d = float(dut[index]) if index is not None else None
    at_r = float(ref[index]) if index is not None else None
    where = f"; worst at {list(index)}: dut {at_d:.6g}, ref {at_r:.6g}" if index is not None else ""
    return OpVerdict(metric, value, limit, value <= limit, index, at_d, at_r, f"{detail}{where}", measures)


def _prepare(metric: str, dut: Tensor, ref: Tensor, limit: float) -> tuple[Tensor, Tensor, Tensor, OpVerdict | None]:
    """float64 CPU copies, the positions to judge, and a failing verdict if shapes or NaN/Inf disagree."""
    d, r = dut.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    if d.shape != r.shape:
        bad = _verdict(metric, math.inf, limit, None, d, r, f"shape {list(d.shape)} on the device, {list(r.shape)} in the reference", {})
        return d, r, torch.zeros(0, dtype=torch.bool), bad
    finite_d, finite_r = torch.isfinite(d), torch.isfinite(r)
    matched = (~finite_d & ~finite_r) & ((d.isnan() & r.isnan()) | (d == r))
    unmatched = ~(finite_d & finite_r) & ~matched
    if unmatched.any():
        index = tuple(int(i) for i in unmatched.nonzero()[0])
        count = float(unmatched.sum())
        bad = _verdict(metric, math.inf, limit, index, d, r, f"{int(count)} NaN/Inf position(s) differ from the reference",
                       {"nonfinite_mismatch": count})
        return d, r, finite_d, bad
    return d, r, finite_d & finite_r, None


def _argmax(values: Tensor, judged: Tensor) -> tuple[float, tuple[int, ...] | None]:
    scores = torch.where(judged, values, torch.full_like(values, -math.inf))
    if scores.numel() == 0 or not judged.any():
        return 0.0, None
    flat = int(scores.argmax())
    return float(scores.reshape(-1)[flat]), tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), scores.shape))


def absolute_threshold(dut: Tensor, ref: Tensor, standard: OperatorThresholds, magnitude: Tensor | None = None,
                       position_slack: Tensor | None = None) -> OpVerdict:
    """msprobe's absolute-threshold rule (module docstring); value = worst error / its allowance.

    For operators that are not elementwise, two optional corrections (both default to
    msprobe's rule):

    - ``magnitude`` (Tensor like ``ref``, >= |ref|): the size of the terms element i sums,
      the operator applied to the absolute values of its data inputs. It replaces |r_i| as
      the relative error's denominator and in the small-value test: a weighted sum whose
      terms cancel has a rounding error of ``rtol`` times its terms, not times its result.
      With non-negative data it equals |r_i|.
    - ``position_slack`` (Tensor like ``ref``): how far the reference moves when its sampling
      points move by ``max_position_error`` pixels; added to every element's allowance.
      Sampling coordinates in float32 are exact only to ~1e-5 pixel at a few hundred pixels.
    """
    metric = "absolute_threshold_ratio"
    d, r, judged, failed = _prepare(metric, dut, ref, 1.0)
    if failed is not None:
        return failed
    size = r.abs() if magnitude is None else magnitude.detach().to("cpu", torch.float64)
    slack = torch.zeros_like(r) if position_slack is None else position_slack.detach().to("cpu", torch.float64)
    err = (d - r).abs()
    small = size < standard.small_value
    rel = (err - slack).clamp_min(0) / size.where(~small, torch.ones_like(size))
    allowance = torch.where(small, torch.full_like(r, standard.max_small_value_error), standard.max_relative_error * size)
    ratio = err / (allowance + slack)
    value, index = _argmax(ratio, judged)
    _, small_at = _argmax(err, judged & small)
    _, rel_at = _argmax(rel, judged & ~small)
    measures = {
        "max_relative_error": float(rel[rel_at]) if rel_at is not None else 0.0,
        "max_small_value_error": float(err[small_at]) if small_at is not None else 0.0,
        "violations": float((judged & (ratio > 1)).sum()),
        "elements": float(judged.sum()),
    }
    denominator = "|ref|" if magnitude is None else "magnitude"
    beyond = "" if position_slack is None else " beyond the position slack"
    detail = (
        f"relative error{beyond} {measures['max_relative_error']:.3g} (rtol {standard.max_relative_error:g}) where "
        f"{denominator} >= {standard.small_value:g}; absolute error {measures['max_small_value_error']:.3g} "
        f"(atol {standard.max_small_value_error:g}) below; {int(measures['violations'])} of "
        f"{int(measures['elements'])} elements over"
    )
    return _verdict(metric, value, 1.0, index, d, r, detail, measures)


def ulp_errors(dut: Tensor, ref: Tensor, dtype: torch.dtype) -> Tensor:
    """``|d - r| / ulp_dtype(r)`` per element, in float64 (module docstring)."""
    d, r = dut.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(r)
    # frexp's exponent is floor(log2 |r|) + 1 (0 for r = 0); below the smallest normal the
    # spacing is fixed.
    binade = torch.ldexp(torch.ones_like(r), exponent - 1).where(r != 0, torch.zeros_like(r))
    spacing = binade.clamp_min(info.tiny) * info.eps
    return (d - r).abs() / spacing


def ulp_share(dut: Tensor, ref: Tensor, standard: OperatorThresholds, dtype: torch.dtype) -> OpVerdict:
    """msprobe's ULP rule (module docstring); value = share of elements above ``ulp_threshold``."""
    metric = "ulp_share_above_threshold"
    d, r, judged, failed = _prepare(metric, dut, ref, standard.max_share_above_ulp_threshold)
    if failed is not None:
        return failed
    ulps = ulp_errors(d, r, dtype)
    count = int(judged.sum())
    above = judged & (ulps > standard.ulp_threshold)
    share = float(above.sum()) / count if count else 0.0
    worst, index = _argmax(ulps, judged)
    measures = {"max_ulp_error": worst, "median_ulp_error": float(ulps[judged].median()) if count else 0.0,
                "above_threshold": float(above.sum()), "elements": float(count)}
    detail = (
        f"{int(measures['above_threshold'])} of {count} elements above {standard.ulp_threshold:g} ULP of "
        f"{str(dtype).removeprefix('torch.')} (share {share:.3g}, limit {standard.max_share_above_ulp_threshold:g}); "
        f"median {measures['median_ulp_error']:.3g} ULP, max {worst:.3g} ULP"
    )
    return _verdict(metric, share, standard.max_share_above_ulp_threshold, index, d, r, detail, measures)


def binary_consistency(dut: Tensor, ref: Tensor) -> OpVerdict:
    """Exact reproduction: the value is the number of elements that differ (limit 0)."""
    metric = "mismatched_elements"
    d, r, judged, failed = _prepare(metric, dut, ref, 0.0)
    if failed is not None:
        return failed
    differ = judged & (d != r)
    count = float(differ.sum())
    _, index = _argmax((d - r).abs(), differ)
    return _verdict(metric, count, 0.0, index, d, r, f"{int(count)} of {int(judged.sum())} elements differ",
                    {"elements": float(judged.sum())})


def _iou(boxes: Tensor) -> Tensor:
    """Pairwise IoU as torchvision's NMS kernels compute it: inter / (area_a + area_b - inter),
    so a zero-area pair gives NaN, which suppresses nothing."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp_min(0)
    h = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp_min(0)
    inter = w * h
    return inter / (area[:, None] + area[None] - inter)


def nms_consistency(keep: Tensor, boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float,
                    standard: OperatorThresholds) -> OpVerdict:
    """Whether ``keep`` is what greedy class-aware NMS returns for some order of tied scores.

    Greedy NMS visits boxes by descending score and keeps a box unless a kept box of its
    class overlaps it by IoU > ``iou_threshold``. Among equal scores the visiting order is
    the kernel's choice, so two correct kernels may keep different boxes of a tied group;
    comparing index lists element-wise would call that a failure. Instead ``keep`` is
    judged on its own against the float64 IoUs of the same inputs: it is a greedy result
    under some tie order exactly when

    1. its indices are unique, in range, and in non-increasing score order;
    2. no two kept boxes of one class overlap by IoU > t;
    3. every dropped box has a kept box of its class with a score >= its own and IoU > t.

    (Given 2 and 3, visit each tied group kept boxes first: greedy NMS then keeps exactly
    ``keep``.) An IoU within ``nms_iou_tie_tolerance`` of t is a tie too, and may go either
    way: the device computes IoU in its own precision. The value is the number of indices
    breaking 1-3, limit 0.

    Args:
        keep (Tensor[K]): indices returned by the device.
        boxes (Tensor[B, 4]), scores (Tensor[B]), classes (Tensor[B]): the inputs the device
            was given (xyxy), judged in float64.
    """
    metric = "unjustified_nms_decisions"
    b, s = boxes.detach().to("cpu", torch.float64), scores.detach().to("cpu", torch.float64)
    c, kept_list = classes.detach().cpu(), keep.detach().cpu().long()
    tol = standard.nms_iou_tie_tolerance
    valid = (kept_list >= 0) & (kept_list < len(b))
    bad_index = int((~valid).sum()) + int(valid.sum()) - len(set(kept_list[valid].tolist()))
    kept_list = torch.tensor(list(dict.fromkeys(kept_list[valid].tolist())), dtype=torch.long)
    out_of_order = int((s[kept_list][1:] > s[kept_list][:-1]).sum()) if len(kept_list) > 1 else 0
    overlap = _iou(b) if len(b) else b.new_zeros((0, 0))
    same = c[:, None] == c[None]
    kept = torch.zeros(len(b), dtype=torch.bool)
    kept[kept_list] = True
    # 2: a kept box overlapped beyond the tie band by a kept box listed before it.
    position = torch.full((len(b),), len(b), dtype=torch.long)
    position[kept_list] = torch.arange(len(kept_list))
    earlier = position[None, :] < position[:, None]
    clash = (same & kept[None] & earlier & (overlap > iou_threshold + tol)).any(1) & kept
    # 3: a dropped box that no kept box of its class, scored at least as high, overlaps enough.
    suppressor = same & kept[None] & (s[None] >= s[:, None]) & (overlap > iou_threshold - tol)
    suppressor.fill_diagonal_(False)
    orphan = ~kept & ~suppressor.any(1)
    count = bad_index + out_of_order + int(clash.sum()) + int(orphan.sum())
    measures = {"kept": float(len(kept_list)), "boxes": float(len(b)), "bad_indices": float(bad_index),
                "out_of_order": float(out_of_order), "kept_but_suppressed": float(clash.sum()),
                "dropped_without_suppressor": float(orphan.sum())}
    first = torch.nonzero(clash | orphan)
    index = (int(first[0]),) if len(first) else None
    detail = (
        f"{len(kept_list)} of {len(b)} boxes kept at IoU {iou_threshold:g} (ties within {tol:g}); "
        f"{int(clash.sum())} kept though a kept box overlaps it, {int(orphan.sum())} dropped without a suppressor, "
        f"{out_of_order} out of score order, {bad_index} bad indices"
    )
    where = f"; first at box {index[0]} (score {float(s[index[0]]):.6g}, kept {bool(kept[index[0]])})" if index else ""
    return OpVerdict(metric, float(count), 0.0, count == 0, index, None, None, detail + where, measures)
