"""PNG plots for the HTML report, drawn with matplotlib's Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` and rendered by ``FigureCanvasAgg``
directly, not through ``pyplot``: no global backend switch, no figure registry to leak
from a long test session, and it works without a display.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pytest_blendmask.results import is_finite_number

SIZE_INCHES = (9.0, 3.6)
DPI = 100
_LIMIT_COLOUR = "tab:red"
_DIVERGENT_COLOUR = "tab:orange"


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _as_float(value: float | str | None) -> float:
    """A plotted value: non-finite values, the report's "NaN"/"Infinity" strings and None become NaN (a gap)."""
    return float(value) if is_finite_number(value) else math.nan


def _log_y_if_wide(axes: Axes, ys: Sequence[float], ratio: float) -> None:
    """A log y axis when the positive values span more than ``ratio``: else the small ones sit on the floor."""
    positive = [y for y in ys if y > 0]
    if positive and max(positive) / min(positive) > ratio:
        axes.set_yscale("log")


def layer_error_plot(
    layers: Sequence[str],
    values: Sequence[float | str | None],
    *,
    limit: float | None,
    first_divergent: str | None,
    title: str,
    ylabel: str,
    lines: Mapping[str, Sequence[float | str | None]] | None = None,
    kind: str | None = None,
) -> bytes:
    """One metric against execution order, the limit as a line, the first divergent layer marked.

    ``lines`` are more series on the same axes (the noise-floor comparison draws accumulated
    error, local error and the floor's together); ``kind`` (LOCAL, ACCUMULATED) labels the mark.
    """
    ys = [_as_float(v) for v in values]
    figure = Figure(figsize=SIZE_INCHES)
    axes = figure.add_subplot()
    axes.plot(range(len(ys)), ys, marker=".", linewidth=1, label=ylabel)
    every = list(ys)
    for label, series in (lines or {}).items():
        line = [_as_float(v) for v in series]
        axes.plot(range(len(line)), line, linewidth=1, alpha=0.8, label=label)
        every += line
    _log_y_if_wide(axes, every, 100)  # layer errors span orders of magnitude between stem and head
    if limit is not None and math.isfinite(limit) and not lines:  # a ratio's limit is not on the errors' scale
        axes.axhline(limit, color=_LIMIT_COLOUR, linestyle="--", label=f"limit {limit:g}")
    if first_divergent is not None:
        index = list(layers).index(first_divergent)
        axes.axvline(index, color=_DIVERGENT_COLOUR, linestyle=":")
        mark = f"{kind} at" if kind else "first divergent:"
        axes.plot([index], [ys[index]], "o", color=_DIVERGENT_COLOUR, label=f"{mark} {first_divergent}")
    axes.set_xlabel(f"layer in execution order ({len(ys)} layers)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _png(figure)


def latency_plot(series: Mapping[str, tuple[Sequence[int], Sequence[float | str | None]]], *, title: str) -> bytes:
    """Latency (ms) against batch size, one line per label; batch sizes on a log2 axis."""
    figure = Figure(figsize=SIZE_INCHES)
    axes = figure.add_subplot()
    ticks: set[int] = set()
    every_ms: list[float] = []
    for label, (batches, latency) in series.items():
        points = sorted(zip(batches, map(_as_float, latency)))
        axes.plot([b for b, _ in points], [ms for _, ms in points], marker="o", label=label)
        ticks.update(batches)
        every_ms += [ms for _, ms in points]
    _log_y_if_wide(axes, every_ms, 10)  # e.g. CPU bf16 autocast at 50x the fp32 latency
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(ticks), labels=[str(b) for b in sorted(ticks)])  # 1, 2, 4... not 2^0, 2^1...
    axes.set_xlabel("batch size")
    axes.set_ylabel("latency (ms)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _png(figure)
