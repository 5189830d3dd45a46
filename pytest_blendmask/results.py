"""Verdicts as records: one typed ``Record`` per gate, carried as a builtin dict in the test report's ``user_properties``.

The bottom of the package: it imports nothing of it, so every layer above (gates,
fixtures, the report) may use it. A gate calls :func:`record` (or the ``bm_record``
fixture) with what it measured and the limit it applied. The record goes into
``node.user_properties`` as ``("bm_result", Record.as_dict())``, the way
``record_property`` stores its values: pytest copies ``user_properties`` into every
``TestReport`` and pytest-xdist ships reports to the controller, so what is stored must
hold builtin types only. The controller reads them back from the reports.

Recording *is* asserting: a record with ``passed=False`` raises ``AssertionError`` right
after it is stored, so a test can never pass while one of its records failed.

Two optional ``extra`` entries are drawn by the HTML report (build them with the helpers
below, which fix their shape):

``per_layer``
    ``{"layers": [name, ...], "values": [float, ...], "first_divergent": name | None}``:
    one metric per layer in execution order; plotted against the record's ``limit``.
``per_batch``
    ``{"batch_sizes": [int, ...], "latency_ms": [float, ...]}``: a latency sweep.

A perf record with ``batch_size`` in its extras is a point of the summary's latency-against-
batch plot.
"""
from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

RECORD_KEY = "bm_result"
TAGS_KEY = "bm_tags"  # the family/device tags of a test, added at collection (placement.py)
# A perf grid point's data on a test that skipped it: a skip stores no record to carry it.
PERF_POINT_KEY = "bm_perf_point"
# The acceptance level a test judges and the target it runs, added at collection (placement.py):
# the scorecard places every test, a skipped one included, in its target's row and level's column.
LEVEL_KEY = "bm_level"
TARGET_KEY = "bm_target"
FAMILIES = ("precision", "perf", "atc")
# The scorecard's columns in reading order (report/scorecard.py says which test judges which).
LEVELS = ("operators", "tensor", "detection", "AP", "perf", "ATC")
Op = Literal["<=", ">="]
OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Record:
    """One gate's verdict: what was measured on which target, against which limit."""

    test: str  # the node id of the test that recorded it
    family: str  # one of FAMILIES
    target: str  # the target spec id, e.g. ``cpu:fp16``
    metric: str
    value: float | None  # None when nothing was measured; NaN allowed
    op: Op | None  # how value is held against limit; None for an informational record
    limit: float | None
    unit: str
    passed: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # builtin JSON types only

    def as_dict(self) -> dict[str, Any]:
        """The builtin dict stored in ``user_properties`` and written to FINAL_REPORT."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """The record of a stored dict (``as_dict``'s inverse)."""
        return cls(**data)


class _HasUserProperties(Protocol):
    nodeid: str
    user_properties: list[tuple[str, object]]


def _number(name: str, value: Any) -> float | None:
    """``value`` as a float (numpy and 0-d torch scalars included); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise TypeError(f"record: {name} must be a number or None; got {value!r}")
    return float(value)


def _holds(value: float | None, op: Op | None, limit: float | None) -> bool | None:
    """Whether ``value op limit`` holds (False for NaN); None when there is nothing to compare."""
    if value is None or op is None or limit is None:
        return None
    return bool(OPS[op](value, limit))


def record(
    request_or_node: Any,
    family: str,
    target: str,
    metric: str,
    value: Any,
    limit: Any,
    unit: str,
    passed: bool,
    *,
    op: Op | None = None,
    detail: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Store one verdict on the running test and fail the test when ``passed`` is False.

    Args:
        request_or_node: the ``request`` fixture or the test item (a function-scoped
            fixture's ``request`` is fine; session-scoped nodes have no user_properties).
        family: ``precision``, ``perf`` or ``atc``.
        target: the target spec id, e.g. ``cpu:fp16``.
        metric: what was measured, e.g. ``relative_l2_error`` or ``latency_p50``.
        value: the measurement (a number; NaN allowed) or None when nothing was measured.
        limit: the bound applied, or None for an informational record.
        unit: ``ms``, ``img/s``, ``%``... or ``""`` for ratios.
        passed: the gate's verdict.
        op: ``"<="`` (upper limit) or ``">="`` (lower limit); when given with a value and a
            limit, ``passed`` must agree with the comparison (ValueError otherwise).
        detail: the explanation shown in the report; also the assertion message.
        **extra: JSON-serialisable context (see the module docstring for plotted keys).

    Returns:
        The stored record, as a dict.

    Raises:
        AssertionError: after storing, when ``passed`` is False.
    """
    if family not in FAMILIES:
        raise ValueError(f"record: family must be one of {', '.join(FAMILIES)}; got {family!r}")
    if op is not None and op not in OPS:
        raise ValueError(f"record: op must be '<=' or '>=' or None; got {op!r}")
    node: _HasUserProperties = getattr(request_or_node, "node", request_or_node)
    if not hasattr(node, "user_properties"):
        raise TypeError(f"record: {node!r} has no user_properties; record from a test or a function-scoped fixture")
    measured, bound = _number("value", value), _number("limit", limit)
    expected = _holds(measured, op, bound)
    if expected is not None and expected != bool(passed):
        raise ValueError(f"record: passed={passed} contradicts {metric} {measured} {op} {bound}")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"record: extra values must be builtin JSON types (xdist ships them): {exc}") from None
    entry = Record(node.nodeid, family, target, metric, measured, op, bound, unit, bool(passed), detail, extra).as_dict()
    node.user_properties.append((RECORD_KEY, entry))
    if not passed:
        raise AssertionError(detail or f"{family} gate {metric} on {target}: {measured} {unit} vs limit {op or ''} {bound}")
    return entry


def records_in(user_properties: Iterable[tuple[str, object]]) -> list[dict[str, Any]]:
    """The records among a report's (or item's) user_properties, in recording order."""
    return [value for key, value in user_properties if key == RECORD_KEY and isinstance(value, dict)]


def layer_series(
    layers: Sequence[str], values: Sequence[float], first_divergent: str | None, *,
    lines: Mapping[str, Sequence[float]] | None = None, kind: str | None = None,
) -> dict[str, Any]:
    """The ``per_layer`` extra: one value per layer in execution order; ``lines``: more series
    drawn on the same chart (label -> values); ``kind``: LOCAL or ACCUMULATED, how
    ``first_divergent`` was found, when it came from the noise-floor comparison."""
    for label, series in {"values": values, **(lines or {})}.items():
        if len(series) != len(layers):
            raise ValueError(f"layer_series: {len(layers)} layers but {len(series)} {label}")
    if first_divergent is not None and first_divergent not in layers:
        raise ValueError(f"layer_series: first_divergent {first_divergent!r} is not one of the layers")
    series: dict[str, Any] = {"layers": list(layers), "values": [float(v) for v in values], "first_divergent": first_divergent}
    if lines:
        series["lines"] = {label: [float(v) for v in values] for label, values in lines.items()}
    if kind is not None:
        series["kind"] = kind
    return series


def batch_series(batch_sizes: Sequence[int], latency_ms: Sequence[float]) -> dict[str, Any]:
    """The ``per_batch`` extra: latency in milliseconds per batch size."""
    if len(batch_sizes) != len(latency_ms):
        raise ValueError(f"batch_series: {len(batch_sizes)} batch sizes but {len(latency_ms)} latencies")
    return {"batch_sizes": [int(b) for b in batch_sizes], "latency_ms": [float(v) for v in latency_ms]}


def is_finite_number(value: Any) -> bool:
    """True for a float or int that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
