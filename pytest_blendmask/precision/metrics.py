"""Tensor-comparison metrics: a device-under-test tensor ``d`` against the reference ``r``.

Every metric flattens both tensors and works in float64: a float32 difference ``d - r`` is
exact in float64, and sums over millions of elements keep their precision. Definitions
follow msprobe and msaccucmp (``../shared/anchors.md`` sections 1-2); where those tools
disagree the docstring says which one is followed and why.

**The one NaN/Inf and zero policy** (the three tools each do something different):

1. NaN/Inf positions must match the reference. A position is matched when both values are
   NaN, or both are the same infinity. Matched positions are left out of every metric (as
   msprobe does by zeroing them). Any unmatched position -- NaN or Inf where the reference
   is finite, a finite value where the reference has NaN/Inf, +Inf against -Inf -- makes
   every metric NaN and ``nonfinite_mismatch`` counts the positions. A NaN metric fails
   every gate, so a comparison with unmatched NaN/Inf fails outright.
2. Zeros in the reference: an element whose reference value is exactly 0 has no relative
   error and is left out of the *element-wise relative* metrics (max/mean relative error
   and the error ratios), which are taken over the remaining elements. This is
   msaccucmp's exclusion, except that the mean and the ratios divide by the number of
   elements kept (msaccucmp counts the excluded ones as 0, so a ReLU output that is half
   zeros would look half as wrong). We do not add an epsilon as msprobe (to both tensors)
   and Polygraphy (to the reference) do: that turns a reference 0 against a 1e-9 result
   into a relative error of ~1e7, a number that says nothing. Nothing is hidden: the
   absolute metrics, RMSE, cosine and the relative L2 error include every element, so an
   error at a reference zero still shows there.
3. A dtype difference is never a failure: float16/bfloat16 inputs are widened exactly.

Empty tensors (or tensors whose every position is a matched NaN/Inf) compare equal: errors
0, cosine 1, ratios 1. Shapes must match (``ValueError`` otherwise).

``tensor_metrics`` computes all of them in one chunked pass (comparing a whole model's
dumps is the hot path); each single-metric function is a shorthand for one of its fields.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # msaccucmp's floor in the KL normalisation
ONE_THOUSANDTH = 0.001
FIVE_THOUSANDTHS = 0.005
# Elements per chunk: the float64 buffers stay in a core's L2 cache, which makes the pass
# several times faster than whole-tensor float64 temporaries. Also below OpenBLAS's
# 10000-element threshold for threading a dot product: threaded dots on a busy 2-core
# machine were measured 200x slower than single-threaded ones.
_CHUNK = 8192

ArrayLike = Tensor | np.ndarray


@dataclass(frozen=True)
class TensorMetrics:
    """Every metric of one device-under-test tensor against its reference.

    Field meanings are the docstrings of the functions of the same name in this module.
    ``numel`` counts the elements compared (matched NaN/Inf positions left out);
    ``relative_numel`` those with a non-zero reference, over which the element-wise
    relative metrics are taken.
    """

    numel: int
    relative_numel: int
    nonfinite_mismatch: int
    cosine_similarity: float
    max_abs_error: float
    mean_abs_error: float
    rmse: float
    relative_l2_error: float
    max_relative_error: float
    mean_relative_error: float
    one_thousandth_error_ratio: float
    five_thousandths_error_ratio: float
    kl_divergence: float


def _flat(x: ArrayLike) -> np.ndarray:
    """1-D float32/float64 numpy view (or exact widened copy) of a tensor or array."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float64 if not x.is_floating_point() else torch.float32)
        x = x.numpy()
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return x.reshape(-1)


def _nonfinite_split(d: np.ndarray, r: np.ndarray) -> tuple[int, np.ndarray]:
    """(unmatched NaN/Inf positions, mask of positions finite in both), policy rule 1."""
    both_finite = np.isfinite(d) & np.isfinite(r)
    with np.errstate(invalid="ignore"):
        matched = (np.isnan(d) & np.isnan(r)) | (d == r)
    unmatched = int(np.count_nonzero(~both_finite & ~matched))
    return unmatched, both_finite


def _min_max(x: np.ndarray) -> tuple[float, float]:
    return float(x.min()), float(x.max())


def _kl_scale(lo: float, hi: float) -> tuple[float, float]:
    """(offset, scale) of msaccucmp's min-max normalisation; scale 0 marks a constant tensor."""
    return lo, (1.0 / (hi - lo) if hi > lo else 0.0)


def _kl_weights(x: np.ndarray, out: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """Unnormalised KL weights max((x - min) / (max - min), eps); 1 for a constant tensor."""
    if scale == 0.0:
        # msaccucmp keeps a constant tensor's raw values, then floors them at eps: either
        # way every weight is equal, i.e. a uniform distribution.
        out.fill(1.0)
        return out
    np.subtract(x, offset, out=out)
    np.multiply(out, scale, out=out)
    return np.maximum(out, FLOAT32_EPS, out=out)


def _not_comparable(numel: int, unmatched: int) -> TensorMetrics:
    nan = math.nan
    return TensorMetrics(numel, 0, unmatched, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)


def _equal_empty() -> TensorMetrics:
    return TensorMetrics(0, 0, 0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0)


def tensor_metrics(dut: ArrayLike, ref: ArrayLike) -> TensorMetrics:
    """All metrics of ``dut`` against ``ref`` in one pass (policy in the module docstring).

    Args:
        dut (Tensor[...] | ndarray): the device under test's tensor, any float dtype.
        ref (Tensor[...] | ndarray): the reference tensor, same shape.

    Raises:
        ValueError: the shapes differ.
    """
    if tuple(dut.shape) != tuple(ref.shape):
        raise ValueError(f"shapes differ: device under test {tuple(dut.shape)}, reference {tuple(ref.shape)}")
    d, r = _flat(dut), _flat(ref)
    if d.size == 0:
        return _equal_empty()
    d_range, r_range = _min_max(d), _min_max(r)
    # min/max propagate NaN and reach +-inf, so they double as a cheap all-finite test.
    if not all(math.isfinite(v) for v in d_range + r_range):
        unmatched, keep = _nonfinite_split(d, r)
        if unmatched:
            return _not_comparable(d.size, unmatched)
        d, r = d[keep], r[keep]
        if d.size == 0:
            return _equal_empty()
        d_range, r_range = _min_max(d), _min_max(r)
    n = d.size
    d_offset, d_scale = _kl_scale(*d_range)
    r_offset, r_scale = _kl_scale(*r_range)
    buf_d, buf_r, err, tmp = (np.empty(min(n, _CHUNK)) for _ in range(4))
    sum_dd = sum_rr = sum_dr = sum_ee = sum_abs = max_abs = 0.0
    sum_rel = max_rel = kl_p = kl_q = kl_plogpq = 0.0
    rel_n = within_1 = within_5 = 0
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        bd, br, e, t = buf_d[:m], buf_r[:m], err[:m], tmp[:m]
        np.copyto(bd, d[start : start + m])
        np.copyto(br, r[start : start + m])
        sum_dd += float(np.dot(bd, bd))
        sum_rr += float(np.dot(br, br))
        sum_dr += float(np.dot(bd, br))
        np.subtract(bd, br, out=e)
        sum_ee += float(np.dot(e, e))
        np.abs(e, out=e)
        sum_abs += float(e.sum())
        max_abs = max(max_abs, float(e.max()))
        # Element-wise relative error |d - r| / |r|; a reference 0 becomes +inf in the
        # denominator, so its relative error reads 0 and is then subtracted from the counts
        # (policy rule 2).
        np.abs(br, out=t)
        nonzero = int(np.count_nonzero(t))
        if nonzero < m:
            np.copyto(t, np.inf, where=t == 0)
        np.divide(e, t, out=t)
        rel_n += nonzero
        excluded = m - nonzero
        sum_rel += float(t.sum())
        max_rel = max(max_rel, float(t.max()))
        within_1 += int(np.count_nonzero(t < ONE_THOUSANDTH)) - excluded
        within_5 += int(np.count_nonzero(t < FIVE_THOUSANDTHS)) - excluded
        # KL: accumulate the unnormalised weights and sum p~ log(p~/q~); see kl_divergence.
        p = _kl_weights(bd, bd, d_offset, d_scale)
        q = _kl_weights(br, br, r_offset, r_scale)
        kl_p += float(p.sum())
        kl_q += float(q.sum())
        np.divide(p, q, out=t)
        np.log(t, out=t)
        kl_plogpq += float(np.dot(p, t))

    if sum_dd == 0.0 and sum_rr == 0.0:
        cosine = 1.0
    elif sum_dd == 0.0 or sum_rr == 0.0:
        cosine = math.nan  # undefined: exactly one tensor is all zeros
    else:
        cosine = min(1.0, max(-1.0, sum_dr / math.sqrt(sum_dd * sum_rr)))
    if sum_rr > 0.0:
        rel_l2 = math.sqrt(sum_ee / sum_rr)
    else:
        rel_l2 = 0.0 if sum_ee == 0.0 else math.inf
    kl = kl_plogpq / kl_p + math.log(kl_q / kl_p)
    return TensorMetrics(
        numel=n,
        relative_numel=rel_n,
        nonfinite_mismatch=0,
        cosine_similarity=cosine,
        max_abs_error=max_abs,
        mean_abs_error=sum_abs / n,
        rmse=math.sqrt(sum_ee / n),
        relative_l2_error=rel_l2,
        max_relative_error=max_rel,
        mean_relative_error=sum_rel / rel_n if rel_n else 0.0,
        one_thousandth_error_ratio=within_1 / rel_n if rel_n else 1.0,
        five_thousandths_error_ratio=within_5 / rel_n if rel_n else 1.0,
        # KL >= 0 exactly; the float64 sum may land a rounding error below it.
        kl_divergence=max(0.0, kl),
    )


def cosine_similarity(dut: ArrayLike, ref: ArrayLike) -> float:
    """cos = sum(d * r) / (||d|| * ||r||), clipped to [-1, 1] (msprobe, msaccucmp).

    1.0 when both tensors are all zeros; NaN (undefined) when exactly one is. Blind to a
    uniform scale error (d = 5 r gives 1.0): never gate on it alone.
    """
    return tensor_metrics(dut, ref).cosine_similarity


def max_abs_error(dut: ArrayLike, ref: ArrayLike) -> float:
    """max |d - r| in the tensors' units (msprobe MaxAbsErr, msaccucmp MaxAbsoluteError)."""
    return tensor_metrics(dut, ref).max_abs_error


def mean_abs_error(dut: ArrayLike, ref: ArrayLike) -> float:
    """mean |d - r| in the tensors' units (msaccucmp MeanAbsoluteError)."""
    return tensor_metrics(dut, ref).mean_abs_error


def rmse(dut: ArrayLike, ref: ArrayLike) -> float:
    """sqrt(mean((d - r)^2)) (msaccucmp RootMeanSquareError).

    Read with the mean absolute error: RMSE >> MAE means a few large outliers, RMSE ~ MAE
    and large means a concentrated bias.
    """
    return tensor_metrics(dut, ref).rmse


def relative_l2_error(dut: ArrayLike, ref: ArrayLike) -> float:
    """||d - r||_2 / ||r||_2, a fraction (msaccucmp RelativeEuclideanDistance).

    The scale-aware companion of cosine: d = 5 r gives 4.0. When ||r|| = 0 it is 0 if d is
    all zeros too, else +inf (msaccucmp returns 0 there, which would hide a wrong result).
    """
    return tensor_metrics(dut, ref).relative_l2_error


def max_relative_error(dut: ArrayLike, ref: ArrayLike) -> float:
    """max |d - r| / |r| over elements with r != 0, a fraction; 0 if there are none.

    msaccucmp MaxRelativeError. Reference zeros are left out (module docstring, rule 2);
    near-zero references still make it large under fp16, so it is diagnostic, not a gate.
    """
    return tensor_metrics(dut, ref).max_relative_error


def mean_relative_error(dut: ArrayLike, ref: ArrayLike) -> float:
    """mean |d - r| / |r| over elements with r != 0, a fraction; 0 if there are none.

    msaccucmp MeanRelativeError, but divided by the number of elements kept (rule 2).
    """
    return tensor_metrics(dut, ref).mean_relative_error


def one_thousandth_error_ratio(dut: ArrayLike, ref: ArrayLike) -> float:
    """Fraction of elements with r != 0 whose |d - r| / |r| < 0.001; 1.0 if there are none.

    msprobe's One Thousandth Err Ratio, over the elements kept by rule 2 (msprobe counts a
    reference 0 as passing when d is 0 too and as failing otherwise).
    """
    return tensor_metrics(dut, ref).one_thousandth_error_ratio


def five_thousandths_error_ratio(dut: ArrayLike, ref: ArrayLike) -> float:
    """Fraction of elements with r != 0 whose |d - r| / |r| < 0.005; 1.0 if there are none.

    msprobe's Five Thousandths Err Ratio, over the elements kept by rule 2.
    """
    return tensor_metrics(dut, ref).five_thousandths_error_ratio


def kl_divergence(dut: ArrayLike, ref: ArrayLike) -> float:
    """KL(P || Q) = sum P log(P / Q), in nats, with msaccucmp's normalisation.

    Each tensor x is min-max scaled, floored at float32 eps and normalised to sum 1:
    w = max((x - min x) / (max x - min x), eps), P = w_d / sum(w_d), Q = w_r / sum(w_r);
    P comes from the device under test, Q from the reference, as in msaccucmp. A constant
    tensor becomes the uniform distribution. Computed as
    sum(w_d log(w_d / w_r)) / sum(w_d) + log(sum(w_r) / sum(w_d)).
    Invariant to scale and shift, so like cosine it cannot see a uniform scale error.
    """
    return tensor_metrics(dut, ref).kl_divergence


def nonfinite_mismatch(dut: ArrayLike, ref: ArrayLike) -> int:
    """Positions whose NaN/Inf status differs from the reference (rule 1); 0 means they match."""
    return tensor_metrics(dut, ref).nonfinite_mismatch
