"""Each module's error against the noise floor, and where a fault started: LOCAL or ACCUMULATED.

Per module output (dump entry), four numbers: the device's local error (replay, on the
reference's inputs), the floor's local error (the same module in the emulated precision),
and the same pair accumulated (whole forwards, ``compare.py``). With ``n`` elements, the
reference output ``r``, ``atol`` and ``rtol`` = ``floor_atol`` and ``floor_rtol`` of
``[precision.local.<precision>]`` and ``allowance = atol * sqrt(n) + rtol * ||r||``:

    local floor ratio        ||d_local - r|| / (||f_local - r|| + allowance)
    local gain error         |g(d_local) - g(f_local)|,  g(x) = <x - r, r> / ||r||^2
    accumulated floor ratio  ||d - r|| / (||f - r|| + allowance)

``g`` is the output's scale error: the least-squares ``g`` of ``x = (1 + g) r + e`` with ``e``
orthogonal to ``r``. Rounding is nearly orthogonal to what it rounds, so a floor's gain is
near 0 even where its error norm is large (int8: 2-6 % per conv), while a wrong scale (a
mis-folded norm, a dropped factor) moves the gain by all of itself: the gain error sees a 5 %
fault that hides in the norm under int8's noise.

A module fails when its local floor ratio exceeds ``max_local_floor_ratio``, its local gain
error exceeds ``max_local_gain_error``, or its local relative L2 error exceeds
``max_local_relative_l2_error`` (the absolute standard: where the device is itself the CPU
emulation, device and floor share their arithmetic and only the standard can see a
precision too coarse for the model). Outputs smaller than the tensor
section's ``min_layer_numel`` are reported, not gated (a few values near zero are all
rounding), unless NaN/Inf or the shape differ.

Localisation. **LOCAL**: the first module, in execution order, whose local error fails:
it adds the error by itself, on exact inputs. **ACCUMULATED**: no local error fails but an
accumulated floor ratio exceeds ``max_accumulated_floor_ratio``: each module is within its
floor, yet the drift is beyond rounding; named is the module, among the first failing
output and what it was computed from, where the accumulated error grows the most over its
inputs' (a leaf module where there is one, a container's children included: a container's
growth includes its children's).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .compare import ComparisonResult
from .floor import Floor
from .replay import LocalError
from .thresholds import LocalThresholds

Kind = Literal["LOCAL", "ACCUMULATED"]


@dataclass(frozen=True)
class ModuleError:
    """One module output's errors (module doc); NaN where a run has no such output."""

    name: str  # the dump entry: module, call and output
    module: str  # the module's qualified name
    module_type: str
    numel: int
    local: float
    floor: float
    local_ratio: float
    gain_error: float  # |device's local gain - floor's| (module doc)
    accumulated: float
    accumulated_floor: float
    accumulated_ratio: float
    growth: float  # accumulated relative error minus the largest of its inputs'
    inputs: tuple[str, ...]
    covers: tuple[str, ...]  # other entries this one speaks for in a compiled graph (fused into or returning its tensor)
    gated: bool
    local_failures: tuple[str, ...]
    accumulated_failures: tuple[str, ...]


@dataclass(frozen=True)
class Localisation:
    """Where a failure started (module doc): the ``module`` and its output ``entry`` (a dump name);
    ``kind`` None when every module is within its floor."""

    kind: Kind | None
    module: str | None
    entry: str | None
    detail: str


@dataclass(frozen=True)
class LocalComparison:
    """Every module output in execution order, and the localisation over them."""

    modules: tuple[ModuleError, ...]
    localisation: Localisation
    floor: str  # the emulation the floor ran (precision/floor.py)

    @property
    def passed(self) -> bool:
        return self.localisation.kind is None

    def by_name(self) -> dict[str, ModuleError]:
        return {module.name: module for module in self.modules}


def _ratio(error_norm: float, floor_norm: float, limits: LocalThresholds, numel: int, reference_norm: float) -> float:
    allowance = floor_norm + limits.floor_atol * math.sqrt(numel) + limits.floor_rtol * reference_norm
    if math.isnan(error_norm) or math.isnan(floor_norm):
        return math.nan
    if error_norm == 0.0:
        return 0.0
    return error_norm / allowance if allowance > 0 else math.inf


def _fails(ratio: float, limit: float) -> bool:
    return not ratio <= limit  # NaN fails


def _accumulated(result: ComparisonResult | None) -> dict[str, tuple[float, float]]:
    """name -> (relative L2 error, ||d - r||) of each compared layer."""
    if result is None:
        return {}
    return {
        layer.name: (m.relative_l2_error, math.nan if m.nonfinite_mismatch else m.rmse * math.sqrt(m.numel))
        for layer in result.layers
        if (m := layer.metrics) is not None
    }


def _module(
    device: LocalError, floor: LocalError, acc: dict[str, tuple[float, float]], acc_floor: dict[str, tuple[float, float]],
    limits: LocalThresholds, min_layer_numel: float,
) -> ModuleError:
    missing = (math.nan, math.nan)
    # A tensor several modules return is, accumulated, what the outermost hands on (after an
    # output quantisation its inner module's value has not had yet): compare that one.
    order = {name: index for index, name in enumerate(acc)}
    handed_on = max((n for n in (device.name, *device.aliases) if n in order), key=order.__getitem__, default=device.name)
    accumulated, accumulated_floor = acc.get(handed_on, missing), acc_floor.get(handed_on, missing)
    growth = accumulated[0] - max((acc[name][0] for name in device.inputs if name in acc), default=0.0)
    local_ratio = _ratio(device.error_norm, floor.error_norm, limits, device.numel, device.reference_norm)
    gain_error = abs(device.gain - floor.gain)
    accumulated_ratio = _ratio(accumulated[1], accumulated_floor[1], limits, device.numel, device.reference_norm)
    nonfinite = math.isnan(device.error_norm) or math.isnan(accumulated[1])
    gated = device.numel >= min_layer_numel or nonfinite
    local_failures: list[str] = []
    accumulated_failures: list[str] = []
    if gated:
        if _fails(local_ratio, limits.max_local_floor_ratio):
            local_failures.append(f"local floor ratio {local_ratio:.4g} > {limits.max_local_floor_ratio:g}")
        if _fails(gain_error, limits.max_local_gain_error):
            local_failures.append(
                f"local gain error {gain_error:.4g} > {limits.max_local_gain_error:g} "
                f"(scale {1 + device.gain:.4f} against the floor's {1 + floor.gain:.4f})"
            )
        if _fails(device.relative_error, limits.max_local_relative_l2_error):
            local_failures.append(
                f"local relative_l2_error {device.relative_error:.4g} > {limits.max_local_relative_l2_error:g}"
            )
        if _fails(accumulated_ratio, limits.max_accumulated_floor_ratio):
            accumulated_failures.append(
                f"accumulated floor ratio {accumulated_ratio:.4g} > {limits.max_accumulated_floor_ratio:g}"
            )
    return ModuleError(
        device.name, device.module, device.module_type, device.numel, device.relative_error, floor.relative_error, local_ratio,
        gain_error, accumulated[0], accumulated_floor[0], accumulated_ratio, growth, device.inputs,
        device.covers + device.aliases, gated,
        tuple(local_failures), tuple(accumulated_failures),
    )


def _ancestors(start: ModuleError, by_name: dict[str, ModuleError]) -> list[ModuleError]:
    seen, stack, found = {start.name}, [start], [start]
    while stack:
        for name in stack.pop().inputs:
            if name in by_name and name not in seen:
                seen.add(name)
                stack.append(by_name[name])
                found.append(by_name[name])
    return found


def _is_container(module: ModuleError, modules: Sequence[str]) -> bool:
    return any(other.startswith(module.module + ".") for other in modules)


def _localise(modules: list[ModuleError]) -> Localisation:
    local = next((m for m in modules if m.local_failures), None)
    if local is not None:
        together = f", one tensor with {', '.join(local.covers)}" if local.covers else ""
        return Localisation(
            "LOCAL", local.module, local.name,
            f"LOCAL at {local.name} ({local.module_type}{together}): {'; '.join(local.local_failures)} "
            f"(local error {local.local:.4g}, floor {local.floor:.4g}, on the reference's own inputs)",
        )
    drifting = next((m for m in modules if m.accumulated_failures), None)
    if drifting is None:
        worst = max(modules, key=lambda m: -1.0 if math.isnan(m.local_ratio) else m.local_ratio, default=None)
        where = f"; highest local floor ratio {worst.local_ratio:.3g} at {worst.name}" if worst is not None else ""
        return Localisation(None, None, None, f"every module within its floor{where}")
    by_name = {m.name: m for m in modules}
    names = sorted({m.module for m in modules})
    candidates = _ancestors(drifting, by_name)
    # A container's children are not its inputs, but what it computes: they are candidates too.
    candidates += [m for m in modules if m not in candidates and any(m.module.startswith(c.module + ".") for c in candidates)]
    leaves = [m for m in candidates if not _is_container(m, names)] or candidates
    fastest = max(leaves, key=lambda m: -math.inf if math.isnan(m.growth) else m.growth)
    return Localisation(
        "ACCUMULATED", fastest.module, fastest.name,
        f"ACCUMULATED at {fastest.name} ({fastest.module_type}): no module's local error fails, but "
        f"{drifting.name} has {'; '.join(drifting.accumulated_failures)}; the drift grows fastest at "
        f"{fastest.name} (accumulated error {fastest.accumulated:.4g}, +{fastest.growth:.4g} over its inputs)",
    )


def _floor_of(device: Sequence[LocalError], floor: Sequence[LocalError]) -> list[LocalError]:
    """The floor's local error for each device entry, in the device's order: the floor's own entry,
    or, for a compiled graph's tensor that stands for several entries (``covers``: fused into it;
    ``aliases``: returning it, like a ``Conv2dNorm`` whose own conv precedes its norm, or a
    container handing on its child's output, whose floor is then 0), their errors combined in
    quadrature (independent roundings add so) and their gains summed (the scale errors of a
    chain multiply)."""
    if [e.name for e in device] == [e.name for e in floor]:
        return list(floor)
    by_name = {e.name: e for e in floor}
    missing = sorted({n for d in device for n in (d.name, *d.covers, *d.aliases) if n not in by_name})
    if missing:
        raise ValueError(f"the floor replay recorded no {', '.join(missing[:5])}: the two took different code paths")
    combined = []
    for d in device:
        parts = [by_name[n] for n in (d.name, *d.covers, *d.aliases)]
        error = math.sqrt(sum(p.error_norm ** 2 for p in parts))
        reference_norm = by_name[d.name].reference_norm
        dot = sum(p.gain for p in parts) * reference_norm ** 2
        combined.append(LocalError(d.name, d.module, d.module_type, d.numel, reference_norm, error, d.inputs, error_dot=dot))
    return combined


def compare_local(
    device: Sequence[LocalError],
    floor: Sequence[LocalError],
    accumulated: ComparisonResult,
    accumulated_floor: ComparisonResult,
    limits: LocalThresholds,
    min_layer_numel: float,
    floor_name: str,
) -> LocalComparison:
    """Hold each module's local and accumulated error to its floor (module doc).

    Args:
        device: the device's local errors; ``floor``: the floor replay's, the same entries in
            the same order, or a superset where the device's are a compiled graph's (``covers``).
        accumulated: the device's whole-forward comparison; ``accumulated_floor``: the floor's.
        limits: ``[precision.local.<precision>]``; ``min_layer_numel``: the tensor section's.
        floor_name: the emulation the floor ran, for the report.

    Raises:
        ValueError: the floor has no entry for a device entry: the two took different code paths.
    """
    acc, acc_floor = _accumulated(accumulated), _accumulated(accumulated_floor)
    modules = [_module(d, f, acc, acc_floor, limits, min_layer_numel) for d, f in zip(device, _floor_of(device, floor))]
    return LocalComparison(tuple(modules), _localise(modules), floor_name)


def against_floor(
    device: Sequence[LocalError], floor: Floor, accumulated: ComparisonResult, limits: LocalThresholds,
    min_layer_numel: float,
) -> LocalComparison:
    """Hold the device's local errors (``Target.local_errors``) and its ``accumulated`` comparison
    to ``floor`` (``compare_local``)."""
    return compare_local(device, floor.local, accumulated, floor.accumulated, limits, min_layer_numel, floor.emulation.name)
