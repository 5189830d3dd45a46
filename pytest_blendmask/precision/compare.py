"""Compare a device-under-test dump with the reference dump, layer by layer: the one driver.

Pass rule. A layer (one recorded module output) passes when its shape matches the
reference's, its NaN/Inf positions match, and every per-layer limit of the thresholds
holds (``max_relative_l2_error``, ``min_cosine_similarity``, ``max_kl_divergence``, with
per-layer overrides; outputs smaller than ``min_layer_numel`` are exempt from these, not
from the shape and NaN/Inf checks): the relative L2 error is always among them, so no
verdict rests on cosine alone. The comparison passes when every layer passes, the mean relative L2 error
over the layers is within ``max_mean_relative_l2_error``, and both dumps have the same
layer names (different names mean the two runs took different code paths).

Like Polygraphy, a result carries how far apart the runs were, not just the verdict:
``required`` holds, per limit, the tolerance that would just have passed, and
``first_divergent`` is the first failing layer in execution order, with the layer before
it for context. dtypes are recorded, never judged: the reference is float32 on purpose.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from .dump import Dump, DumpEntry, dump_from_outputs
from .metrics import TensorMetrics, metrics_of_pairs
from .thresholds import Limit, TensorThresholds

MEAN_KEY = "max_mean_relative_l2_error"


class ComparisonError(ValueError):
    """Two dumps that cannot be compared: no tensors kept, or no layer in common."""


@dataclass(frozen=True)
class LayerComparison:
    """One layer's verdict: its metrics (None when the shapes differ) and what failed."""

    name: str
    module_type: str
    reference_dtype: str
    dut_dtype: str
    shape: tuple[int, ...]
    dut_shape: tuple[int, ...]
    metrics: TensorMetrics | None
    limits: tuple[Limit, ...]
    limits_from: str | None  # the override pattern that set ``limits``, if any
    gated: bool  # False below min_layer_numel elements: reported, not held to ``limits``
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class ComparisonResult:
    """Every layer in the reference's execution order, and the verdict over them.

    ``required`` maps each limit to the value that would just have passed: the worst
    measured value over the layers it applies to (for an override, keyed
    ``"<pattern>:<key>"``, Polygraphy's per-output syntax), and the measured mean for
    ``max_mean_relative_l2_error``.
    """

    layers: tuple[LayerComparison, ...]
    missing_in_dut: tuple[str, ...]
    missing_in_reference: tuple[str, ...]
    mean_relative_l2_error: float
    worst_layer: LayerComparison
    first_divergent: LayerComparison | None
    previous_layer: LayerComparison | None  # the layer executed just before first_divergent
    failures: tuple[str, ...]  # comparison-level failures (mean, missing layers)
    required: dict[str, float]

    @property
    def passed(self) -> bool:
        return not self.failures and self.first_divergent is None


def _layer(ref: DumpEntry, dut: DumpEntry, metrics: TensorMetrics | None, limits: TensorThresholds) -> LayerComparison:
    layer_limits, pattern = limits.layer_limits(ref.name)
    gated = metrics is not None and metrics.numel >= limits.min_layer_numel
    if metrics is None:
        failures: tuple[str, ...] = (f"shape {dut.shape} differs from the reference's {ref.shape}",)
    elif metrics.nonfinite_mismatch:
        # Never excused, whatever the size.
        failures = (f"NaN/Inf at {metrics.nonfinite_mismatch} positions where the reference has none or another",)
    elif gated:
        failures = tuple(
            limit.describe(value) for limit in layer_limits if not limit.holds(value := getattr(metrics, limit.metric))
        )
    else:
        failures = ()
    return LayerComparison(
        ref.name, ref.module_type, ref.dtype, dut.dtype, ref.shape, dut.shape,
        metrics, layer_limits, pattern, gated, failures,
    )


def _all_metrics(pairs: list[tuple[DumpEntry, DumpEntry]], workers: int) -> list[TensorMetrics | None]:
    """Metrics per pair; a pair of tensors already compared (aliased entries) is reused."""
    distinct: dict[tuple[int, int], tuple[DumpEntry, DumpEntry]] = {}
    for ref, dut in pairs:
        if ref.shape == dut.shape:
            distinct.setdefault((id(ref.data), id(dut.data)), (ref, dut))
    computed = metrics_of_pairs([(dut.data, ref.data) for ref, dut in distinct.values()], workers)
    results = dict(zip(distinct, computed))
    return [results.get((id(ref.data), id(dut.data))) for ref, dut in pairs]


def _required(layers: Iterable[LayerComparison]) -> dict[str, float]:
    """Per limit key, the worst value measured where it applies (NaN if any was NaN)."""
    measured: dict[str, list[float]] = {}
    upper: dict[str, bool] = {}
    for layer in layers:
        if not layer.gated:
            continue
        for limit in layer.limits:
            key = f"{layer.limits_from}:{limit.key}" if layer.limits_from else limit.key
            measured.setdefault(key, []).append(getattr(layer.metrics, limit.metric))
            upper[key] = limit.is_upper
    return {
        key: math.nan if any(map(math.isnan, values)) else (max(values) if upper[key] else min(values))
        for key, values in measured.items()
    }


def _severity(pair: tuple[float, LayerComparison]) -> float:
    """Rank for the worst layer: relative L2 error; NaN (not comparable) above everything,
    because it compares false both ways; layers too small to gate below every gated one."""
    error, layer = pair
    if math.isnan(error):
        return math.inf
    return error if layer.gated else -1.0 / (1.0 + error)


def compare(reference: Dump, dut: Dump, limits: TensorThresholds, workers: int | None = None) -> ComparisonResult:
    """Compare two ``full`` dumps layer by layer (pass rule in the module docstring).

    Args:
        reference: the golden run's dump (CPU, float32).
        dut: the device under test's dump of the same forward on the same inputs.
        limits: the tensor thresholds of the device under test's precision.
        workers: threads comparing layers in parallel; default: one per CPU.

    Raises:
        ComparisonError: a dump kept no tensors (``stats`` mode), or no layer name is
            shared ("nothing compared" is an error, not a pass).
    """
    for label, dump in (("reference", reference), ("device under test", dut)):
        if dump.mode != "full":
            raise ComparisonError(f"the {label} dump is in {dump.mode!r} mode; comparing needs mode='full' dumps")
    dut_by_name = dut.by_name()
    pairs = [(entry, dut_by_name[entry.name]) for entry in reference if entry.name in dut_by_name]
    if not pairs:
        raise ComparisonError(
            f"nothing compared: the reference has {len(reference)} layers, the device under test "
            f"{len(dut)}, and no name is shared"
        )
    layers = tuple(
        _layer(ref, dut_entry, metrics, limits)
        for (ref, dut_entry), metrics in zip(pairs, _all_metrics(pairs, workers or os.cpu_count() or 1))
    )
    reference_names = set(reference.names())
    missing_in_dut = tuple(name for name in reference.names() if name not in dut_by_name)
    missing_in_reference = tuple(name for name in dut.names() if name not in reference_names)

    errors = [layer.metrics.relative_l2_error if layer.metrics else math.nan for layer in layers]
    mean_error = math.fsum(errors) / len(errors)
    mean_limit = Limit(MEAN_KEY, limits.max_mean_relative_l2_error)
    failures = []
    if not mean_limit.holds(mean_error):
        failures.append(mean_limit.describe(mean_error))
    missing = ((missing_in_dut, "missing from the device under test"), (missing_in_reference, "missing from the reference"))
    for names, where in missing:
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            failures.append(f"{len(names)} layers {where} (the runs took different code paths?): {shown}")
    first = next((i for i, layer in enumerate(layers) if not layer.passed), None)
    worst = max(zip(errors, layers), key=_severity)[1]
    return ComparisonResult(
        layers=layers,
        missing_in_dut=missing_in_dut,
        missing_in_reference=missing_in_reference,
        mean_relative_l2_error=mean_error,
        worst_layer=worst,
        first_divergent=layers[first] if first is not None else None,
        previous_layer=layers[first - 1] if first else None,
        failures=tuple(failures),
        required={MEAN_KEY: mean_error, **_required(layers)},
    )


def compare_outputs(reference: dict[str, Tensor], dut: dict[str, Tensor], limits: TensorThresholds) -> ComparisonResult:
    """``compare`` of named graph outputs (an exported or compiled model's against PyTorch's),
    each output one layer (``dump_from_outputs``)."""
    return compare(dump_from_outputs(reference), dump_from_outputs(dut), limits)


def _layer_line(label: str, layer: LayerComparison) -> str:
    if layer.metrics is None:
        return f"  {label}: {layer.name} ({layer.module_type}): {'; '.join(layer.failures)}"
    m = layer.metrics
    return (
        f"  {label}: {layer.name} ({layer.module_type}, {layer.dut_dtype} vs {layer.reference_dtype}): "
        f"relative_l2_error {m.relative_l2_error:.4g}, cosine {m.cosine_similarity:.6f}, "
        f"max_abs_error {m.max_abs_error:.4g}, kl {m.kl_divergence:.3g}"
        + (f"; FAILED: {'; '.join(layer.failures)}" if layer.failures else "")
    )


def describe(result: ComparisonResult) -> str:
    """A Polygraphy-style text summary: verdict, first divergent layer and its predecessor,
    the worst layer, and the minimum tolerances that would have passed."""
    failing = sum(not layer.passed for layer in result.layers)
    lines = [
        f"{'PASSED' if result.passed else 'FAILED'} | {len(result.layers)} layers compared, {failing} failed, "
        f"mean relative_l2_error {result.mean_relative_l2_error:.4g}"
    ]
    lines += [f"  {failure}" for failure in result.failures]
    if result.first_divergent is not None:
        lines.append(_layer_line("first divergent layer", result.first_divergent))
        if result.previous_layer is not None:
            lines.append(_layer_line("layer before it", result.previous_layer))
    lines.append(_layer_line("worst layer", result.worst_layer))
    lines.append(
        "  minimum tolerance that would pass: " + ", ".join(f"{key}={value:.6g}" for key, value in result.required.items())
    )
    return "\n".join(lines)
