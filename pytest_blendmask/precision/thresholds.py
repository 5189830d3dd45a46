"""The thresholds file: one TOML file, a section per family and precision, validated on load.

Layout (``thresholds_default.toml`` documents every key: formula, unit, what is averaged)::

    [precision.tensor.<precision>]       per-layer tensor limits, + optional .overrides
    [precision.local.<precision>]        each module's error against the noise floor
    [precision.detection.<precision>]    matched-detection limits
    [precision.accuracy.<precision>]     COCO AP drop limits
    [precision.operator.<fp precision>]  per-dtype operator standards (fp32, fp16, bf16 only:
                                         operators run eagerly, never in int8)
    [perf.default], [perf."<target>"]    performance floors; a target without its own
                                         section uses perf.default

with ``<precision>`` each of fp32, fp16, bf16, int8. Key names carry their direction:
``max_*`` is an upper limit (the measured value must be <= it), ``min_*`` a lower limit
(>=); a value equal to the limit passes, as in Polygraphy. ``inf`` switches an upper limit
off; 0 switches off a lower limit on a non-negative metric.

Validation is pure: any problem raises ``ThresholdsError`` naming the file, the section,
the key and the fix; the plugin turns it into a usage error at session start. Target
names under ``[perf]`` are not checked here (that needs the target grammar, which lives
above this package); the plugin checks them.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib.resources
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project runs 3.11; tomli is the same parser for 3.9/3.10
    import tomli as tomllib

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
OPERATOR_PRECISIONS = ("fp32", "fp16", "bf16")
OPERATOR = "operator"
DEFAULT_FILE = "thresholds_default.toml"
PERF_DEFAULT = "default"
OVERRIDES = "overrides"


class ThresholdsError(ValueError):
    """A thresholds file that cannot be used; the message names the file, key and fix."""


def _number(lo: float = -math.inf, hi: float = math.inf, finite: str | None = None) -> Any:
    """A float field accepting values in [lo, hi]; ``finite`` is why inf is refused, if it is."""
    return field(metadata={"lo": lo, "hi": hi, "finite": finite})


FRACTION = {"lo": 0.0, "hi": 1.0}


@dataclass(frozen=True)
class Limit:
    """One bound on one metric: ``key`` is ``max_<metric>`` or ``min_<metric>``."""

    key: str
    value: float

    @property
    def metric(self) -> str:
        return self.key[4:]

    @property
    def is_upper(self) -> bool:
        return self.key.startswith("max_")

    def holds(self, measured: float) -> bool:
        """measured <= value (max_) or >= value (min_); NaN never holds."""
        return measured <= self.value if self.is_upper else measured >= self.value

    def describe(self, measured: float) -> str:
        """E.g. ``relative_l2_error 0.0312 > 0.01``: the metric, the value, the broken bound."""
        sign = ("<=" if self.is_upper else ">=") if self.holds(measured) else (">" if self.is_upper else "<")
        return f"{self.metric} {measured:.4g} {sign} {self.value:.4g}"


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer limits replacing the section's for layers whose name matches ``pattern``."""

    pattern: str
    limits: tuple[Limit, ...]


@dataclass(frozen=True)
class TensorThresholds:
    """Limits on the layer-by-layer comparison (metrics defined in ``precision/metrics.py``).

    ``max_mean_relative_l2_error`` bounds the mean over compared layers; the other
    ``max_``/``min_`` metric keys bound every single layer (the *per-layer* limits, which
    ``overrides`` may replace for named layers). ``min_layer_numel`` is the size below
    which an output is compared and reported but not held to the per-layer limits: a
    handful of values near zero is all rounding (msprobe calls size-1 tensors unsupported).
    """

    max_mean_relative_l2_error: float = _number(0.0)
    max_relative_l2_error: float = _number(
        0.0, finite="cosine and KL cannot see a uniform scale error, so the relative L2 error must stay gated"
    )
    min_cosine_similarity: float = _number(-1.0, 1.0)
    max_kl_divergence: float = _number(0.0)
    min_layer_numel: float = _number(1.0)
    overrides: tuple[LayerOverride, ...] = ()

    PER_LAYER_KEYS = ("max_relative_l2_error", "min_cosine_similarity", "max_kl_divergence")

    def layer_limits(self, layer: str) -> tuple[tuple[Limit, ...], str | None]:
        """The per-layer limits for ``layer`` and the override pattern that set them, if any.

        The first override whose fnmatch pattern matches the layer name wins; keys it does
        not set keep the section's values.
        """
        limits = {key: Limit(key, getattr(self, key)) for key in self.PER_LAYER_KEYS}
        for override in self.overrides:
            if fnmatch.fnmatchcase(layer, override.pattern):
                limits.update({limit.key: limit for limit in override.limits})
                return tuple(limits.values()), override.pattern
        return tuple(limits.values()), None

    def layer_limit(self, layer: str, key: str) -> float:
        """The per-layer limit ``key`` (one of ``PER_LAYER_KEYS``) that applies to ``layer``."""
        if key not in self.PER_LAYER_KEYS:
            raise ValueError(f"{key!r} is not a per-layer key; per-layer keys: {', '.join(self.PER_LAYER_KEYS)}")
        return next(limit.value for limit in self.layer_limits(layer)[0] if limit.key == key)


@dataclass(frozen=True)
class LocalThresholds:
    """Limits on each module's error against the noise floor (``precision/local.py`` defines them).

    ``floor_atol`` is the absolute allowance per element that keeps a zero floor (exact
    modules) from making every last-bit difference a failure; ``floor_rtol`` the allowance
    relative to the output's norm for a precision whose floor rounds less than other
    implementations of it do (fp32, whose floor is the reference's own rounding).
    """

    max_local_floor_ratio: float = _number(1.0)
    max_local_gain_error: float = _number(0.0)
    max_local_relative_l2_error: float = _number(0.0)
    max_accumulated_floor_ratio: float = _number(1.0)
    floor_atol: float = _number(0.0, finite="an infinite allowance would pass every module")
    floor_rtol: float = _number(0.0, finite="an infinite allowance would pass every module")


@dataclass(frozen=True)
class DetectionThresholds:
    """Limits on matched detections (metrics defined in ``precision/match.py``)."""

    match_iou: float = _number(**FRACTION)
    max_box_error: float = _number(0.0)
    max_score_relative_error: float = _number(0.0)
    min_class_agreement: float = _number(**FRACTION)
    min_top5_class_overlap: float = _number(**FRACTION)
    min_mask_iou: float = _number(**FRACTION)
    max_unmatched_fraction: float = _number(**FRACTION)
    min_class_match: float = _number(**FRACTION)


@dataclass(frozen=True)
class AccuracyThresholds:
    """Limits on the COCO AP drop, reference AP minus target AP, in AP points (0-100)."""

    max_box_ap_drop: float = _number()
    max_mask_ap_drop: float = _number()


@dataclass(frozen=True)
class OperatorThresholds:
    """One dtype's operator standards (rules defined in ``precision/op_standards.py``)."""

    max_relative_error: float = _number(0.0)
    small_value: float = _number(0.0)
    max_small_value_error: float = _number(0.0)
    max_position_error: float = _number(0.0)
    ulp_threshold: float = _number(0.0)
    max_share_above_ulp_threshold: float = _number(**FRACTION)
    nms_iou_tie_tolerance: float = _number(**FRACTION)


@dataclass(frozen=True)
class PerfThresholds:
    """Performance floors of one target."""

    min_throughput_ips: float = _number(0.0)
    max_latency_p50_ms: float = _number(0.0)
    max_latency_p99_ms: float = _number(0.0)


@dataclass(frozen=True)
class Thresholds:
    """A validated thresholds file; the dicts are keyed by precision (perf: by target id).

    Plain dicts, so that ``dataclasses.asdict`` can put the thresholds in the report.
    """

    path: Path
    tensor: dict[str, TensorThresholds]
    detection: dict[str, DetectionThresholds]
    accuracy: dict[str, AccuracyThresholds]
    perf: dict[str, PerfThresholds]
    perf_by_model: dict[str, dict[str, PerfThresholds]] = field(default_factory=dict)
    operator: dict[str, OperatorThresholds] = field(default_factory=dict)
    local: dict[str, LocalThresholds] = field(default_factory=dict)

    def perf_for(self, target: str, model: str | None = None) -> PerfThresholds:
        """The most specific perf section: ``[perf."<target>".<model>]``, ``[perf."<target>"]``,
        ``[perf.default.<model>]``, then ``[perf.default]``."""
        for key in (target, PERF_DEFAULT):
            by_model = self.perf_by_model.get(key, {})
            if model in by_model:
                return by_model[model]
            if key in self.perf:
                return self.perf[key]
        return self.perf[PERF_DEFAULT]


FAMILIES: dict[str, type] = {
    "tensor": TensorThresholds,
    "local": LocalThresholds,
    "detection": DetectionThresholds,
    "accuracy": AccuracyThresholds,
}

_Section = TypeVar("_Section")


def default_thresholds_path() -> Path:
    """The packaged ``thresholds_default.toml``."""
    return Path(str(importlib.resources.files(__package__).joinpath(DEFAULT_FILE)))


def _toml_key(key: str) -> str:
    """A key as TOML writes it in a header: bare when it can be, else quoted."""
    return key if key and all(c.isalnum() or c in "_-" for c in key) else f'"{key}"'


def _did_you_mean(word: str, choices: list[str]) -> str:
    # A truncated key ('max_rel') is the commonest typo; difflib's ratio undervalues it.
    close = [c for c in choices if c.startswith(word)] or difflib.get_close_matches(word, choices, n=1, cutoff=0.4)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Reader:
    """Validates tables against the section dataclasses, raising errors that name the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, message: str) -> ThresholdsError:
        return ThresholdsError(f"{self.path.name}: [{where}] {message} (file: {self.path})")

    def table(self, parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        if key not in parent:
            raise self.error(
                where,
                f"missing section; add it with all its keys (the packaged default has them: {default_thresholds_path()})",
            )
        value = parent[key]
        if not isinstance(value, dict):
            raise self.error(where, f"expected a table of keys, got {type(value).__name__} {value!r}")
        return value

    def known_keys(self, table: Mapping[str, Any], accepted: list[str], where: str, what: str = "key") -> None:
        for key in table:
            if key not in accepted:
                raise self.error(
                    where,
                    f"unknown {what} {key!r}{_did_you_mean(key, accepted)}; accepted: {', '.join(accepted)}",
                )

    def number(self, table: Mapping[str, Any], key: str, spec: Mapping[str, Any], where: str) -> float:
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(
                where, f"{key} = {value!r}: expected a number, got {type(value).__name__}; write e.g. `{key} = 0.1`"
            )
        value = float(value)
        if math.isnan(value):
            raise self.error(where, f"{key} = nan: expected a number (use inf to switch an upper limit off)")
        if spec["finite"] and math.isinf(value):
            raise self.error(where, f"{key} = {value}: must be finite: {spec['finite']}")
        if not spec["lo"] <= value <= spec["hi"]:
            raise self.error(where, f"{key} = {value}: expected a value in [{spec['lo']}, {spec['hi']}]")
        return value

    def section(self, cls: type[_Section], table: Mapping[str, Any], where: str) -> _Section:
        """Build ``cls`` from ``table``: every number field required, no other key allowed."""
        specs = {f.name: f.metadata for f in fields(cls) if f.metadata}
        accepted = list(specs) + ([OVERRIDES] if cls is TensorThresholds else [])
        self.known_keys(table, accepted, where)
        for key in specs:
            if key not in table:
                raise self.error(
                    where, f"missing key {key!r}; add `{key} = <number>` (see the packaged default for its meaning)"
                )
        values: dict[str, Any] = {key: self.number(table, key, spec, where) for key, spec in specs.items()}
        if OVERRIDES in table:
            values[OVERRIDES] = self.overrides(table, f"{where}.{OVERRIDES}", specs)
        return cls(**values)

    def per_precision(
        self, precision: Mapping[str, Any], family: str, cls: type[_Section], precisions: tuple[str, ...]
    ) -> dict[str, _Section]:
        """``[precision.<family>.<p>]`` as a ``cls`` section for every ``p`` of ``precisions``."""
        where = f"precision.{family}"
        by_precision = self.table(precision, family, where)
        self.known_keys(by_precision, list(precisions), where, "precision")
        return {p: self.section(cls, self.table(by_precision, p, f"{where}.{p}"), f"{where}.{p}") for p in precisions}

    def overrides(self, table: Mapping[str, Any], where: str, specs: Mapping[str, Any]) -> tuple[LayerOverride, ...]:
        patterns = self.table(table, OVERRIDES, where)
        result = []
        for pattern in patterns:
            at = f"{where}.{_toml_key(pattern)}"
            limits = self.table(patterns, pattern, at)
            self.known_keys(limits, list(TensorThresholds.PER_LAYER_KEYS), at)
            result.append(LayerOverride(pattern, tuple(Limit(k, self.number(limits, k, specs[k], at)) for k in limits)))
        return tuple(result)


def parse_thresholds(document: Mapping[str, Any], path: Path) -> Thresholds:
    """Validate a parsed TOML document (``path`` is only used in messages)."""
    reader = _Reader(path)
    reader.known_keys(document, ["precision", "perf"], "top level", "section")
    precision = reader.table(document, "precision", "precision")
    reader.known_keys(precision, [*FAMILIES, OPERATOR], "precision", "section")
    families = {family: reader.per_precision(precision, family, cls, PRECISIONS) for family, cls in FAMILIES.items()}
    operator = reader.per_precision(precision, OPERATOR, OperatorThresholds, OPERATOR_PRECISIONS)
    perf = reader.table(document, "perf", "perf")
    reader.table(perf, PERF_DEFAULT, f"perf.{PERF_DEFAULT}")
    perf_sections: dict[str, PerfThresholds] = {}
    perf_by_model: dict[str, dict[str, PerfThresholds]] = {}
    for target in perf:
        at = f"perf.{_toml_key(target)}"
        table = reader.table(perf, target, at)
        # Sub-tables are per-model sections; a target table holding only those has no section of its own.
        models = {key: value for key, value in table.items() if isinstance(value, dict)}
        numbers = {key: value for key, value in table.items() if key not in models}
        if numbers or not models:
            perf_sections[target] = reader.section(PerfThresholds, numbers, at)
        perf_by_model[target] = {
            model: reader.section(PerfThresholds, limits, f"{at}.{_toml_key(model)}") for model, limits in models.items()
        }
    if PERF_DEFAULT not in perf_sections:
        reader.section(PerfThresholds, {}, f"perf.{PERF_DEFAULT}")  # raises: names the missing keys
    return Thresholds(
        path, families["tensor"], families["detection"], families["accuracy"], perf_sections, perf_by_model, operator,
        families["local"],
    )


def load_thresholds(path: Path | str | None = None) -> Thresholds:
    """Read and validate a thresholds file; None reads the packaged default.

    Raises:
        ThresholdsError: the file is missing, is not TOML, or breaks the schema.
    """
    path = Path(path) if path is not None else default_thresholds_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ThresholdsError(f"{path}: cannot read the thresholds file: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ThresholdsError(f"{path.name}: not valid TOML: {exc} (file: {path})") from None
    return parse_thresholds(document, path)
