"""ATC's fusion switch file (``--fusion_switch_file``) and its fusion report (``fusion_result.json``).

Switch file, JSON form (anchors.md section 4; CANN "fusion_switch_file")::

    {"Switch": {"GraphFusion": {"ConvBatchnormFusionPass": "on"}, "UBFusion": {"ALL": "off"}}}

``"ALL": "off"`` switches off most passes of that engine; ATC keeps some on because turning
them off would break the graph. Only the JSON form is read here: the older ``PassName:off``
line form does not say which engine a pass belongs to.

After a compile, ATC writes ``fusion_result.json`` in its working directory with, per graph,
``graph_fusion`` and ``ub_fusion`` passes and their ``match_times``/``effect_times`` (strings).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CONV_BN_FUSION = "ConvBatchnormFusionPass"
ALL_PASSES = "ALL"
ENGINES = {"GraphFusion": "graph_fusion", "UBFusion": "ub_fusion"}  # switch-file key -> report key
FUSION_RESULT_FILE = "fusion_result.json"
_STATES = {"on": True, "off": False}


class FusionSwitchError(ValueError):
    """A fusion switch file that ATC would reject or misread; the message names the file and the key."""


@dataclass(frozen=True)
class FusionSwitches:
    """Pass name -> enabled, per fusion engine (``GraphFusion``, ``UBFusion``)."""

    graph: Mapping[str, bool] = field(default_factory=dict)
    ub: Mapping[str, bool] = field(default_factory=dict)

    def switched_off(self) -> set[str]:
        """Passes named ``off`` (``ALL`` included when a whole engine is off)."""
        return {name for engine in (self.graph, self.ub) for name, on in engine.items() if not on}


# The checked-in default: Conv+BN folding on, named explicitly so that the log shows it was asked for.
DEFAULT_SWITCHES = FusionSwitches(graph={CONV_BN_FUSION: True})
# Triage variant (anchors.md section 4): compare with fusion off to see whether a pass costs accuracy.
ALL_OFF = FusionSwitches(graph={ALL_PASSES: False}, ub={ALL_PASSES: False})


def render_fusion_switch(switches: FusionSwitches) -> str:
    """The JSON switch file for ``switches``; an engine with no entries is left out."""
    body = {}
    for key, passes in zip(ENGINES, (switches.graph, switches.ub)):
        if passes:
            body[key] = {name: "on" if on else "off" for name, on in passes.items()}
    return json.dumps({"Switch": body}, indent=4) + "\n"


def parse_fusion_switch(text: str, source: str = "<fusion switch>") -> FusionSwitches:
    """Read a JSON switch file, checking its layout and that every value is ``on`` or ``off``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FusionSwitchError(
            f"{source}: not JSON ({exc}); expected {{\"Switch\": {{\"GraphFusion\": {{\"<Pass>\": \"on\"|\"off\"}}, "
            "\"UBFusion\": {...}}}}} (the PassName:off line form is not supported here)"
        ) from exc
    switch = data.get("Switch") if isinstance(data, dict) else None
    if not isinstance(switch, dict):
        raise FusionSwitchError(f"{source}: expected a top-level \"Switch\" object; got {text[:80]!r}")
    unknown = set(switch) - set(ENGINES)
    if unknown:
        raise FusionSwitchError(f"{source}: unknown engine(s) {sorted(unknown)} under \"Switch\"; expected {list(ENGINES)}")
    engines = []
    for key in ENGINES:
        passes = switch.get(key, {})
        if not isinstance(passes, dict):
            raise FusionSwitchError(f"{source}: \"Switch\".\"{key}\" must be an object of pass names; got {passes!r}")
        bad = {name: value for name, value in passes.items() if value not in _STATES}
        if bad:
            raise FusionSwitchError(f"{source}: \"{key}\" values must be \"on\" or \"off\"; got {bad}")
        engines.append({name: _STATES[value] for name, value in passes.items()})
    return FusionSwitches(graph=engines[0], ub=engines[1])


def read_fusion_switch(path: Path) -> FusionSwitches:
    """``parse_fusion_switch`` of a file; a missing file names the path and how to make one."""
    path = Path(path)
    if not path.is_file():
        raise FusionSwitchError(f"{path}: fusion switch file not found; write one with write_fusion_switch() or pass another path")
    return parse_fusion_switch(path.read_text(encoding="utf-8"), str(path))


def write_fusion_switch(path: Path, switches: FusionSwitches = DEFAULT_SWITCHES) -> Path:
    """Write the JSON switch file for ``switches`` and return its path."""
    path = Path(path)
    path.write_text(render_fusion_switch(switches), encoding="utf-8")
    return path


@dataclass(frozen=True)
class FusionPass:
    """One pass from ``fusion_result.json``: how often it matched and how often it rewrote the graph."""

    name: str
    engine: str  # "graph_fusion" or "ub_fusion"
    match_times: int
    effect_times: int


def parse_fusion_result(text: str) -> list[FusionPass]:
    """Passes of a ``fusion_result.json``, summed over its ``session_and_graph_id_*`` graphs."""
    totals: dict[tuple[str, str], list[int]] = {}
    for graph in json.loads(text).values():
        for engine in ENGINES.values():
            for name, stats in graph.get(engine, {}).items():
                counts = totals.setdefault((engine, name), [0, 0])
                counts[0] += int(stats.get("match_times", 0))
                counts[1] += int(stats.get("effect_times", 0))
    return [FusionPass(name, engine, match, effect) for (engine, name), (match, effect) in sorted(totals.items())]


def applied_passes(passes: list[FusionPass]) -> set[str]:
    """Names of the passes that actually rewrote the graph (``effect_times > 0``)."""
    return {p.name for p in passes if p.effect_times > 0}
