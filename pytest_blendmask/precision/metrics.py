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

``tensor_metrics`` computes all of them in one pass (comparing a whole model's dumps is the
hot path): over float32 tensors, ``compare_kernel.py``'s loop in C where it is built, else
(and over float64 ones) chunks of float64 numpy arrays, with the same sums to float64
rounding. Each single-metric function is a shorthand for one of its fields.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from ..perf.timing import torch_threads
from .compare_kernel import pair_sums

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # msaccucmp's floor in the KL normalisation
ONE_THOUSANDTH = 0.001
FIVE_THOUSANDTHS = 0.005
# Elements per chunk of the numpy float64 pass: its buffers (4 MiB) stay in the L2 and L3 caches,
# and each numpy call has enough work that two threads seldom wait on each other for the GIL.
# Measured on an R_50 forward's dumps (2 cores): 8192 made the second thread slower than none,
# 131072 took 1.8 s of wall on two threads against 2.8 s on one.
_CHUNK = 131072
# Dot products go to BLAS in rows of this many elements: below OpenBLAS's 10000-element
# threshold for threading one, whose spinning threads, measured, took the second core from
# the comparison's own (threaded dots on a busy 2-core machine ran 200x slower).
_BLAS_ROW = 8192
# Elements per unit of work for the thread pool (``metrics_of_pairs``).
_SEGMENT = 1 << 20

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


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) in float64, through BLAS in rows of ``_BLAS_ROW`` elements."""
    whole = a.size - a.size % _BLAS_ROW
    total = float(np.vecdot(a[:whole].reshape(-1, _BLAS_ROW), b[:whole].reshape(-1, _BLAS_ROW)).sum()) if whole else 0.0
    return total + float(np.vecdot(a[whole:], b[whole:]))


def _kl_scale(lo: float, hi: float) -> tuple[float, float]:
    """(offset, scale) of msaccucmp's min-max normalisation; scale 0 marks a constant tensor."""
    return lo, (1.0 / (hi - lo) if hi > lo else 0.0)


def _kl_weights(x: np.ndarray, offset: float, scale: float) -> None:
    """In place: unnormalised KL weights max((x - min) / (max - min), eps); 1 for a constant tensor."""
    if scale == 0.0:
        # msaccucmp keeps a constant tensor's raw values, then floors them at eps: either
        # way every weight is equal, i.e. a uniform distribution.
        x.fill(1.0)
        return
    np.subtract(x, offset, out=x)
    np.multiply(x, scale, out=x)
    np.maximum(x, FLOAT32_EPS, out=x)


def _not_comparable(numel: int, unmatched: int) -> TensorMetrics:
    nan = math.nan
    return TensorMetrics(numel, 0, unmatched, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)


def _equal_empty() -> TensorMetrics:
    return TensorMetrics(0, 0, 0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class _Pair:
    """Two flat tensors ready for the chunked pass: only positions finite in both, and the
    min-max normalisation of each for KL (which needs the whole tensor's range up front)."""

    d: np.ndarray
    r: np.ndarray
    d_kl: tuple[float, float]
    r_kl: tuple[float, float]

    @property
    def size(self) -> int:
        return self.d.size


@dataclass
class _Sums:
    """What the chunked pass accumulates over one segment of a ``_Pair``; segments merge by
    adding sums and counts and taking maxima, so one tensor may be split across threads."""

    dd: float = 0.0
    rr: float = 0.0
    dr: float = 0.0
    ee: float = 0.0
    abs_sum: float = 0.0
    abs_max: float = 0.0
    rel_sum: float = 0.0
    rel_max: float = 0.0
    rel_n: int = 0
    within_1: int = 0
    within_5: int = 0
    kl_p: float = 0.0
    kl_q: float = 0.0
    kl_plogpq: float = 0.0

    def merge(self, other: _Sums) -> None:
        for f in fields(self):
            combine = max if f.name.endswith("_max") else operator.add
            setattr(self, f.name, combine(getattr(self, f.name), getattr(other, f.name)))

    @classmethod
    def from_kernel(cls, values: np.ndarray) -> _Sums:
        """The sums ``compare_kernel.pair_sums`` returns, in this class's field order (counts exact in float64)."""
        return cls(**{f.name: (int(v) if f.type == "int" else float(v)) for f, v in zip(fields(cls), values, strict=True)})


def _prepare(dut: ArrayLike, ref: ArrayLike) -> _Pair | TensorMetrics:
    """The pair ready for ``_accumulate``, or its final metrics when there is nothing to
    accumulate (empty, or NaN/Inf positions that do not match: policy rule 1)."""
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
    return _Pair(d, r, _kl_scale(*d_range), _kl_scale(*r_range))


def _accumulate(pair: _Pair, start: int, stop: int) -> _Sums:
    """The sums over elements [start, stop) of ``pair``: in C where it applies, else in numpy."""
    params = (*pair.d_kl, *pair.r_kl, ONE_THOUSANDTH, FIVE_THOUSANDTHS)
    sums = pair_sums(pair.d[start:stop], pair.r[start:stop], params)
    return _Sums.from_kernel(sums) if sums is not None else _accumulate_in_numpy(pair, start, stop)


def _accumulate_in_numpy(pair: _Pair, start: int, stop: int) -> _Sums:
    """The chunked float64 pass over elements [start, stop) of ``pair``.

    Chunks of ``_CHUNK`` elements keep the float64 buffers in a core's cache. numpy, but
    for the log: torch's is vectorised (2.7 ns an element against numpy's 5.1 on AVX2), and
    runs on this thread alone (``metrics_of_pairs``).
    """
    s = _Sums()
    size = min(_CHUNK, stop - start)
    bd, br, e, t = (np.empty(size) for _ in range(4))
    zeros = np.empty(size, dtype=bool)
    for lo in range(start, stop, _CHUNK):
        m = min(_CHUNK, stop - lo)
        if m < size:
            bd, br, e, t, zeros = bd[:m], br[:m], e[:m], t[:m], zeros[:m]
        np.copyto(bd, pair.d[lo : lo + m])
        np.copyto(br, pair.r[lo : lo + m])
        s.dd += _dot(bd, bd)
        s.rr += _dot(br, br)
        s.dr += _dot(bd, br)
        np.subtract(bd, br, out=e)
        s.ee += _dot(e, e)
        np.abs(e, out=e)
        s.abs_sum += float(e.sum())
        s.abs_max = max(s.abs_max, float(e.max()))
        # Element-wise relative error |d - r| / |r|. Where the reference is 0 the error is
        # zeroed and divided by 1, so its relative error reads 0, and it is then subtracted
        # from the counts (policy rule 2): two arithmetic passes with the mask, several
        # times faster than writing through it (putmask, copyto(where=)) on ReLU outputs.
        np.abs(br, out=t)
        np.equal(t, 0, out=zeros)
        excluded = int(np.count_nonzero(zeros))
        if excluded:
            np.add(t, zeros, out=t)
            np.logical_not(zeros, out=zeros)
            np.multiply(e, zeros, out=e)
        np.divide(e, t, out=t)
        s.rel_n += m - excluded
        s.rel_sum += float(t.sum())
        s.rel_max = max(s.rel_max, float(t.max()))
        s.within_1 += int(np.count_nonzero(t < ONE_THOUSANDTH)) - excluded
        s.within_5 += int(np.count_nonzero(t < FIVE_THOUSANDTHS)) - excluded
        # KL: accumulate the unnormalised weights and sum p~ log(p~/q~); see kl_divergence.
        _kl_weights(bd, *pair.d_kl)
        _kl_weights(br, *pair.r_kl)
        s.kl_p += float(bd.sum())
        s.kl_q += float(br.sum())
        np.divide(bd, br, out=t)
        torch.log(torch.from_numpy(t), out=torch.from_numpy(t))  # vectorised float64 log: numpy's is scalar without AVX-512
        s.kl_plogpq += _dot(bd, t)
    return s


def _finish(n: int, s: _Sums) -> TensorMetrics:
    if s.dd == 0.0 and s.rr == 0.0:
        cosine = 1.0
    elif s.dd == 0.0 or s.rr == 0.0:
        cosine = math.nan  # undefined: exactly one tensor is all zeros
    else:
        cosine = min(1.0, max(-1.0, s.dr / math.sqrt(s.dd * s.rr)))
    if s.rr > 0.0:
        rel_l2 = math.sqrt(s.ee / s.rr)
    else:
        rel_l2 = 0.0 if s.ee == 0.0 else math.inf
    kl = s.kl_plogpq / s.kl_p + math.log(s.kl_q / s.kl_p)
    return TensorMetrics(
        numel=n,
        relative_numel=s.rel_n,
        nonfinite_mismatch=0,
        cosine_similarity=cosine,
        max_abs_error=s.abs_max,
        mean_abs_error=s.abs_sum / n,
        rmse=math.sqrt(s.ee / n),
        relative_l2_error=rel_l2,
        max_relative_error=s.rel_max,
        mean_relative_error=s.rel_sum / s.rel_n if s.rel_n else 0.0,
        one_thousandth_error_ratio=s.within_1 / s.rel_n if s.rel_n else 1.0,
        five_thousandths_error_ratio=s.within_5 / s.rel_n if s.rel_n else 1.0,
        # KL >= 0 exactly; the float64 sum may land a rounding error below it.
        kl_divergence=max(0.0, kl),
    )


def tensor_metrics(dut: ArrayLike, ref: ArrayLike) -> TensorMetrics:
    """All metrics of ``dut`` against ``ref`` in one pass (policy in the module docstring).

    Args:
        dut (Tensor[...] | ndarray): the device under test's tensor, any float dtype.
        ref (Tensor[...] | ndarray): the reference tensor, same shape.

    Raises:
        ValueError: the shapes differ.
    """
    return metrics_of_pairs([(dut, ref)], workers=1)[0]


def metrics_of_pairs(pairs: Sequence[tuple[ArrayLike, ArrayLike]], workers: int) -> list[TensorMetrics]:
    """``tensor_metrics(dut, ref)`` of each (dut, ref) pair, on ``workers`` threads.

    Tensors are cut into segments of ``_SEGMENT`` elements, so that one large tensor (a
    stem output is a quarter of a whole R_50 forward's dump) does not leave the other
    threads idle at the end. The C pass (a ctypes call), numpy and torch release the GIL
    inside their loops.

    Raises:
        ValueError: a pair's shapes differ.
    """
    # torch on one intra-op thread while the comparison's threads run: each reads the setting when
    # it first calls torch, and with more every thread's log started an OpenMP team on the same
    # cores (on a busy 2-core machine a chunk's log took 180 us, not 23).
    with torch_threads(1), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        prepared = list(pool.map(lambda pair: _prepare(*pair), pairs))
        pieces = [
            (index, start, min(start + _SEGMENT, p.size))
            for index, p in enumerate(prepared)
            if isinstance(p, _Pair)
            for start in range(0, p.size, _SEGMENT)
        ]
        sums = list(pool.map(lambda piece: _accumulate(prepared[piece[0]], piece[1], piece[2]), pieces))
    totals: dict[int, _Sums] = {}
    for (index, _, _), part in zip(pieces, sums):
        totals.setdefault(index, _Sums()).merge(part)
    return [p if isinstance(p, TensorMetrics) else _finish(p.size, totals[i]) for i, p in enumerate(prepared)]


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
