"""Gates: every acceptance check as a small object, and the one driver that decides its verdict.

A ``Gate`` says what is recorded (``name``, the metric name in FINAL_REPORT, its
``family`` and ``unit``), where the measured quantity is defined (``defined_by``, a dotted
path a reviewer can open), its direction (``op``), where its limit comes from (``limit``:
a key of a thresholds section, or a fixed policy value) and how it is measured from what a
test compared (``measure``). ``evaluate`` is the one place a verdict is decided: the value
against the limit by ``op``, a value equal to the limit passing and NaN never; ``judge``
records that verdict (``results.record`` re-checks ``passed`` against ``value op limit``:
a guard, not a second decision). Polygraphy's comparator has the same split: ``CompareFunc``
objects and one ``run_comparison``.

Per-layer limits. The tensor thresholds may override a per-layer limit for named layers,
so a per-layer gate's limit depends on the layer: its measurement names the layer that
decides (``Reading.layer``), and the limit judged and recorded is that layer's own.

The tables at the bottom are what the acceptance tests run, one test per gate; every limit
key of the tensor, detection, accuracy and perf sections is the limit of one of them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol

from pytest_blendmask.perf.ladder import GatePoints
from pytest_blendmask.precision.accuracy import AccuracyResult
from pytest_blendmask.precision.compare import ComparisonResult, LayerComparison, describe
from pytest_blendmask.precision.local import LocalComparison
from pytest_blendmask.precision.match import DetectionComparison
from pytest_blendmask.precision.thresholds import FAMILIES, PerfThresholds, TensorThresholds
from pytest_blendmask.results import OPS, Op, layer_series

_PREFIX = {"<=": "max", ">=": "min"}  # the thresholds file spells a key's direction this way
SECTIONS: dict[str, type] = {**FAMILIES, "perf": PerfThresholds}
Bound = Callable[..., float]  # bound(layer=None): a gate's limit in one section (a named layer's own, if per-layer)


def limit_key(op: Op, measured: str) -> str:
    """The thresholds key bounding ``measured`` in direction ``op``: ``max_<measured>`` or ``min_<measured>``."""
    return f"{_PREFIX[op]}_{measured}"


@dataclass(frozen=True)
class Key:
    """A limit read from a thresholds section: ``key`` of the ``family`` section the test
    judges against. ``per_layer``: a tensor override may replace it for the deciding layer."""

    family: str  # tensor, detection, accuracy (``[precision.<family>.<precision>]``) or perf
    key: str
    per_layer: bool = False

    def __post_init__(self) -> None:
        # A typo in a table fails at import, not when its test first runs.
        if self.key not in {f.name for f in fields(SECTIONS[self.family])}:
            raise ValueError(f"{self.key!r} is not a key of the {self.family} thresholds")
        if self.per_layer and self.key not in TensorThresholds.PER_LAYER_KEYS:
            raise ValueError(f"{self.key!r} has no per-layer overrides")

    def bind(self, section: Any) -> Bound:
        """The limit in ``section``, as ``bound(layer=None)``: the named layer's when per-layer."""
        if not isinstance(section, SECTIONS[self.family]):
            raise TypeError(f"limit {self}: expected a {SECTIONS[self.family].__name__}, got {type(section).__name__}")

        def bound(layer: str | None = None) -> float:
            if self.per_layer and layer is not None:
                return section.layer_limit(layer, self.key)
            return getattr(section, self.key)

        return bound

    def __str__(self) -> str:
        section = "perf.<target>" if self.family == "perf" else f"precision.{self.family}.<precision>"
        return f"[{section}] {self.key}" + (", or the layer's override" if self.per_layer else "")


@dataclass(frozen=True)
class Fixed:
    """A limit that is policy rather than configuration; ``why`` says whose policy."""

    limit: float
    why: str

    def bind(self, section: Any) -> Bound:
        return lambda layer=None: self.limit

    def __str__(self) -> str:
        return f"{self.limit:g} ({self.why})"


@dataclass(frozen=True)
class Reading:
    """What a measurement found: the value, the report's explanation, the record's extras,
    and, for a per-layer limit, the layer whose limit applies."""

    value: float
    detail: str
    layer: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


Measure = Callable[[Any, Bound], Reading]  # measure(subject, bound): what a gate reads off a comparison


@dataclass(frozen=True)
class Gate:
    """One acceptance check; see the module docstring."""

    name: str
    family: str  # the record family: precision, perf or atc
    op: Op
    limit: Key | Fixed
    unit: str
    defined_by: str
    measure: Measure

    def __post_init__(self) -> None:
        if isinstance(self.limit, Key) and not self.limit.key.startswith(f"{_PREFIX[self.op]}_"):
            raise ValueError(f"gate {self.name}: op {self.op!r} contradicts the direction of {self.limit.key!r}")


@dataclass(frozen=True)
class Verdict:
    """A decided gate: ``passed`` is ``value op limit``, taken once, in ``evaluate``."""

    gate: Gate
    value: float
    limit: float
    passed: bool
    detail: str
    layer: str | None
    extra: Mapping[str, Any]


class Recorder(Protocol):
    """``bm_record``: ``results.record`` bound to the running test."""

    def __call__(
        self, family: str, target: str, metric: str, value: Any, limit: Any, unit: str, passed: bool,
        *, op: Op | None = None, detail: str = "", **extra: Any,
    ) -> dict[str, Any]: ...


def evaluate(gate: Gate, subject: Any, section: Any) -> Verdict:
    """Measure ``gate`` on ``subject`` and decide it against its limit in ``section`` (the
    thresholds section the target is judged by, e.g. ``thresholds.tensor["int8"]``)."""
    bound = gate.limit.bind(section)
    reading = gate.measure(subject, bound)
    limit = bound(reading.layer)
    passed = bool(OPS[gate.op](reading.value, limit))
    return Verdict(gate, reading.value, limit, passed, reading.detail, reading.layer, reading.extra)


def _record(recorder: Recorder, verdict: Verdict, target: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    gate = verdict.gate
    return recorder(
        gate.family, target, gate.name, verdict.value, verdict.limit, gate.unit, verdict.passed,
        op=gate.op, detail=verdict.detail, **verdict.extra, **extra,
    )


def judge(recorder: Recorder, gate: Gate, target: str, subject: Any, section: Any, **extra: Any) -> dict[str, Any]:
    """Evaluate ``gate`` and record its verdict for ``target``; returns the record.

    ``extra``: the test's own context for the record (e.g. an export time), beside the gate's.

    Raises:
        AssertionError: after recording, when the gate failed.
    """
    return _record(recorder, evaluate(gate, subject, section), target, extra)


def judge_all(recorder: Recorder, gates: Sequence[Gate], target: str, subject: Any, section: Any) -> None:
    """``judge`` each gate, recording every verdict before failing, so the report shows them all.

    Raises:
        AssertionError: after recording them all, naming every gate that failed.
    """
    verdicts = [evaluate(gate, subject, section) for gate in gates]
    failures = []
    for verdict in verdicts:
        try:
            _record(recorder, verdict, target, {})
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError("; ".join(failures))


# --- Tensor level: a ComparisonResult (precision/compare.py) --------------------------------

def _series(result: ComparisonResult) -> dict[str, Any]:
    """The report's per-layer plot: each compared layer's relative L2 error, in execution order."""
    layers = [layer for layer in result.layers if layer.metrics is not None]
    first = result.first_divergent
    return layer_series(
        [layer.name for layer in layers],
        [layer.metrics.relative_l2_error for layer in layers],
        first.name if first is not None and first.metrics is not None else None,
    )


def _metric(layer: LayerComparison, metric: str) -> float:
    return getattr(layer.metrics, metric) if layer.metrics is not None else math.nan


@dataclass(frozen=True)
class PerLayer:
    """A ``TensorMetrics`` field, every layer against its own limit (the section's or an override's).

    The layer that decides, whose value and limit are recorded: a layer missing from the
    device under test, if any (the runs took different code paths); else the first layer in
    execution order that breaks its limit (where a fault enters, as ``first_divergent``);
    else the extreme one (highest error, lowest cosine), so a pass shows its margin. Layers
    below ``min_layer_numel`` are exempt unless their shape or NaN/Inf differ (compare's rule).
    """

    metric: str
    op: Op
    headline: str  # the detail's first line when passing, with {layer}; "" for none
    summary: bool  # append compare's describe()
    plot: bool  # add the per-layer plot and the worst layer to the extras

    def __call__(self, result: ComparisonResult, bound: Bound) -> Reading:
        if result.missing_in_dut:
            name = result.missing_in_dut[0]
            return self._reading(result, math.nan, name, f"{name} is missing from the device under test")
        # compare() only fails an exempt layer on shape or NaN/Inf, which are never excused.
        held = [(layer, _metric(layer, self.metric)) for layer in result.layers if layer.gated or not layer.passed]
        if not held:
            return self._reading(result, math.nan, None, "no layer has min_layer_numel elements: none was held to a limit")
        holds = OPS[self.op]
        broken = next(((layer, value) for layer, value in held if not holds(value, bound(layer.name))), None)
        if broken is not None:
            layer, value = broken
            return self._reading(result, value, layer.name, f"{self.metric} first breaks its limit at {layer.name}")
        layer, value = (max if self.op == "<=" else min)(held, key=lambda pair: pair[1])
        return self._reading(result, value, layer.name, self.headline.format(layer=layer.name))

    def _reading(self, result: ComparisonResult, value: float, layer: str | None, headline: str) -> Reading:
        detail = "\n".join(part for part in (headline, describe(result) if self.summary else "") if part)
        extra = {"per_layer": _series(result), "worst_layer": result.worst_layer.name} if self.plot else {}
        return Reading(value, detail, layer, extra)


def _mean_error(result: ComparisonResult, bound: Bound) -> Reading:
    return Reading(
        result.mean_relative_l2_error, describe(result), extra={"per_layer": _series(result), "layers": len(result.layers)}
    )


def _nonfinite(result: ComparisonResult, bound: Bound) -> Reading:
    compared = [layer for layer in result.layers if layer.metrics is not None]
    bad = [layer.name for layer in compared if layer.metrics.nonfinite_mismatch]
    count = float(sum(layer.metrics.nonfinite_mismatch for layer in compared))
    return Reading(count, f"NaN/Inf positions differ from the reference in: {', '.join(bad[:5]) or 'none'}")


def _per_layer(name: str, metric: str, op: Op, headline: str, *, family: str = "precision", summary: bool = True,
               plot: bool = False) -> Gate:
    return Gate(
        name, family, op, Key("tensor", limit_key(op, metric), per_layer=True), "",
        f"pytest_blendmask.precision.metrics.{metric}", PerLayer(metric, op, headline, summary, plot),
    )


MEAN_LAYER_ERROR = Gate(
    "mean_layer_relative_l2_error", "precision", "<=", Key("tensor", "max_mean_relative_l2_error"), "",
    "pytest_blendmask.precision.compare.ComparisonResult.mean_relative_l2_error", _mean_error,
)
WORST_LAYER_ERROR = _per_layer("worst_layer_relative_l2_error", "relative_l2_error", "<=", "", plot=True)
MIN_LAYER_COSINE = _per_layer("min_layer_cosine_similarity", "cosine_similarity", ">=", "lowest cosine at {layer}")
MAX_LAYER_KL = _per_layer("max_layer_kl_divergence", "kl_divergence", "<=", "highest KL divergence at {layer}")
NONFINITE_MISMATCH = Gate(
    "nonfinite_mismatch_elements", "precision", "<=",
    Fixed(0.0, "precision/metrics.py: NaN/Inf where the reference has none is never excused"), "elements",
    "pytest_blendmask.precision.metrics.TensorMetrics.nonfinite_mismatch", _nonfinite,
)
TENSOR_GATES = (MEAN_LAYER_ERROR, WORST_LAYER_ERROR, MIN_LAYER_COSINE, MAX_LAYER_KL, NONFINITE_MISMATCH)


# --- Against the noise floor: a LocalComparison (precision/local.py) ------------------------

def _floor_series(comparison: LocalComparison) -> dict[str, Any]:
    """The per-layer plot: accumulated error, with local error and the floor's on the same chart,
    the localised module marked."""
    modules = comparison.modules
    return layer_series(
        [m.name for m in modules], [m.accumulated for m in modules], comparison.localisation.entry,
        lines={
            "local (replay)": [m.local for m in modules],
            f"floor, local ({comparison.floor})": [m.floor for m in modules],
            f"floor, accumulated ({comparison.floor})": [m.accumulated_floor for m in modules],
        },
        kind=comparison.localisation.kind,
    )


@dataclass(frozen=True)
class AgainstFloor:
    """A ``ModuleError`` field, every gated module against the limit: the first module in execution
    order that breaks it decides (where the fault entered), else the extreme one. The detail
    leads with the localisation (LOCAL or ACCUMULATED and the module) whichever gate reads it."""

    field: str

    def __call__(self, comparison: LocalComparison, bound: Bound) -> Reading:
        held = [m for m in comparison.modules if m.gated]
        if not held:
            return Reading(math.nan, "no module output has min_layer_numel elements: none was held to a limit")
        limit = bound()
        value_of = lambda m: getattr(m, self.field)  # noqa: E731
        broken = next((m for m in held if not value_of(m) <= limit), None)
        decider = broken or max(held, key=lambda m: -math.inf if math.isnan(value_of(m)) else value_of(m))
        where = "first breaks its limit" if broken is not None else "is highest"
        localisation = comparison.localisation
        detail = "\n".join((
            localisation.detail,
            f"{self.field} {where} at {decider.name} ({decider.module_type}): {value_of(decider):.4g}; "
            f"local error {decider.local:.4g} (floor {decider.floor:.4g}), accumulated {decider.accumulated:.4g} "
            f"(floor {decider.accumulated_floor:.4g}); floor emulation: {comparison.floor}",
        ))
        extra = {
            "localisation": {"kind": localisation.kind, "module": localisation.module, "entry": localisation.entry},
            "per_layer": _floor_series(comparison),
        }
        return Reading(value_of(decider), detail, decider.name, extra)


def _against_floor(name: str, field_name: str, key: str) -> Gate:
    return Gate(name, "precision", "<=", Key("local", key), "",
                f"pytest_blendmask.precision.local.ModuleError.{field_name}", AgainstFloor(field_name))


LOCAL_FLOOR_RATIO = _against_floor("local_error_floor_ratio", "local_ratio", "max_local_floor_ratio")
LOCAL_GAIN = _against_floor("local_gain_error", "gain_error", "max_local_gain_error")
LOCAL_ERROR = _against_floor("local_relative_l2_error", "local", "max_local_relative_l2_error")
ACCUMULATED_FLOOR_RATIO = _against_floor(
    "accumulated_error_floor_ratio", "accumulated_ratio", "max_accumulated_floor_ratio"
)
FLOOR_GATES = (LOCAL_FLOOR_RATIO, LOCAL_GAIN, LOCAL_ERROR, ACCUMULATED_FLOOR_RATIO)

# ATC parity: an exported or compiled model's graph outputs against PyTorch's, compared by
# compare() on dump_from_outputs() dumps; judged against the tensor section of its precision.
OUTPUT_PARITY = _per_layer(
    "worst_output_relative_l2_error", "relative_l2_error", "<=", "worst output {layer}", family="atc", summary=False
)


# --- Detection level: a DetectionComparison (precision/match.py) ----------------------------

@dataclass(frozen=True)
class WorstImage:
    """A ``DetectionMetrics`` field at its worst over the images: max for an upper limit, min for a lower one."""

    field: str
    op: Op

    def __call__(self, comparison: DetectionComparison, bound: Bound) -> Reading:
        per_image = comparison.per_image
        values = [getattr(m, self.field) for m in per_image]
        worst = (max if self.op == "<=" else min)(range(len(values)), key=values.__getitem__)
        m = per_image[worst]
        return Reading(values[worst], f"{self.field} {values[worst]:.4g} vs limit {bound()} at image {worst} of "
                       f"{len(per_image)} ({m.matched}/{m.num_ref} matched, {m.num_dut} on target)")


@dataclass(frozen=True)
class WorstClass:
    """The lowest ``ClassCounts.match`` over the classes, pooled over the images: a class that
    vanishes or appears on the target scores 0."""

    def __call__(self, comparison: DetectionComparison, bound: Bound) -> Reading:
        per_class = comparison.per_class
        if not per_class:
            return Reading(1.0, "neither side detected anything")
        worst = min(per_class, key=lambda c: per_class[c].match)
        counts = per_class[worst]
        listed = ", ".join(f"{c}: {k.matched}/{k.ref} ref, {k.dut} target" for c, k in per_class.items())
        return Reading(counts.match, f"class {worst}: {counts.matched} matched of {counts.ref} on the reference and "
                       f"{counts.dut} on the target (by class: {listed})",
                       extra={"per_class": {str(c): [k.ref, k.dut, k.matched] for c, k in per_class.items()}})


def _misassigned(comparison: DetectionComparison, bound: Bound) -> Reading:
    wrong = [(i, j) for i, j in enumerate(comparison.assignment) if i != j]
    detail = ", ".join(f"image {i}'s detections match reference image {j}" for i, j in wrong)
    return Reading(float(len(wrong)), detail or f"each of {len(comparison.assignment)} images matches its own reference",
                   extra={"assignment": list(comparison.assignment)})


@dataclass(frozen=True)
class Attributed:
    """A detection measure, then the same measure on the host's decoding of the target's raw
    tensors, so a failure says where it came from: both failing means the raw tensors differ,
    only the device pipeline failing means its post-processing does."""

    inner: Measure
    op: Op

    def __call__(self, comparison: DetectionComparison, bound: Bound) -> Reading:
        reading = self.inner(comparison, bound)
        if comparison.host is None:
            return Reading(reading.value, f"{reading.detail}; decoded on the host", reading.layer, reading.extra)
        host = self.inner(comparison.host, bound)
        device_ok, host_ok = (bool(OPS[self.op](r.value, bound())) for r in (reading, host))
        if device_ok:
            where = ""
        elif host_ok:
            where = "; the device's post-processing made the difference"
        else:
            where = "; the raw tensors already differ"
        return Reading(reading.value, f"{reading.detail}; host decoding of the device's raw tensors: {host.value:.4g} "
                       f"({'passes' if host_ok else 'fails'}){where}", reading.layer,
                       {**reading.extra, "host_decoding_value": host.value})


def _detection_gate(name: str, op: Op, limit: Key | Fixed, unit: str, defined_by: str, measure: Measure) -> Gate:
    return Gate(name, "precision", op, limit, unit, defined_by, Attributed(measure, op))


def _detection(field_name: str, op: Op, unit: str = "") -> Gate:
    return _detection_gate(field_name, op, Key("detection", limit_key(op, field_name)), unit,
                           f"pytest_blendmask.precision.match.DetectionMetrics.{field_name}", WorstImage(field_name, op))


DETECTION_GATES = (
    _detection("box_error", "<=", "fraction of image side"),
    _detection("score_relative_error", "<="),
    _detection("class_agreement", ">="),
    _detection("top5_class_overlap", ">="),
    _detection("mask_iou", ">="),
    _detection("unmatched_fraction", "<="),
    _detection_gate("class_match", ">=", Key("detection", "min_class_match"), "",
                    "pytest_blendmask.precision.match.ClassCounts.match", WorstClass()),
    _detection_gate("misassigned_images", "<=", Fixed(0.0, "image i's detections belong to image i"), "images",
                    "pytest_blendmask.precision.match.image_assignment", _misassigned),
)


# --- Accuracy level: COCO AP of the reference and of the target -----------------------------

class APPair(NamedTuple):
    """What an AP-drop gate measures: the reference's AccuracyResult and the target's."""

    reference: AccuracyResult
    target: AccuracyResult


@dataclass(frozen=True)
class APDrop:
    """Reference AP minus target AP, in AP points (negative when the target scored higher)."""

    kind: str  # box or mask
    field: str  # the AccuracyResult field

    def __call__(self, pair: APPair, bound: Bound) -> Reading:
        reference, target = getattr(pair.reference, self.field), getattr(pair.target, self.field)
        return Reading(
            reference - target,
            f"{self.kind} AP: reference {reference:.2f}, {pair.target.target} {target:.2f} on {pair.target.num_images} images",
            extra={"reference_ap": reference, "target_ap": target},
        )


def _ap_drop(kind: str, field_name: str) -> Gate:
    return Gate(
        f"{kind}_ap_drop", "precision", "<=", Key("accuracy", f"max_{kind}_ap_drop"), "AP points",
        f"pytest_blendmask.precision.accuracy.AccuracyResult.{field_name}", APDrop(kind, field_name),
    )


ACCURACY_GATES = (_ap_drop("box", "bbox_AP"), _ap_drop("mask", "segm_AP"))


# --- Perf floors: a target's best measured grid points (perf/ladder.py gate_points) ---------

class BestPoints(NamedTuple):
    """What a floor measures: a target's best throughput and batch-1 latency points, and the
    thresholds file's name, which the detail quotes."""

    points: GatePoints
    thresholds_file: str


@dataclass(frozen=True)
class BestPoint:
    """A ``PerfPoint`` field of one of a target's best points (``GatePoints.<point>``)."""

    name: str
    point: str  # throughput or latency
    field: str
    op: Op
    unit: str

    def __call__(self, best: BestPoints, bound: Bound) -> Reading:
        point = getattr(best.points, self.point)
        value, limit, config = getattr(point, self.field), bound(), point.point.id
        detail = (f"{self.name} of {config}: {value:.4g} {self.unit}, limit {self.op} {limit:g} "
                  f"(thresholds {best.thresholds_file})")
        return Reading(value, detail, extra={"config": config})


def _floor(name: str, point: str, field_name: str, op: Op, unit: str) -> Gate:
    return Gate(
        name, "perf", op, Key("perf", limit_key(op, field_name)), unit,
        f"pytest_blendmask.perf.ladder.PerfPoint.{field_name}", BestPoint(name, point, field_name, op, unit),
    )


THROUGHPUT_FLOOR = _floor("throughput", "throughput", "throughput_ips", ">=", "img/s")
LATENCY_CEILINGS = (
    _floor("latency_p50", "latency", "latency_p50_ms", "<=", "ms"),
    _floor("latency_p99", "latency", "latency_p99_ms", "<=", "ms"),
)
PERF_FLOOR_GATES = (THROUGHPUT_FLOOR, *LATENCY_CEILINGS)
