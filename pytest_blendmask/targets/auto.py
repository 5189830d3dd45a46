"""Which targets run when none is given, and the report-header lines that say so."""
from __future__ import annotations

from .base import Target
from .npu import npu_environment
from .registry import parse_target

AUTO_ACCELERATORS = (parse_target("npu:0"), parse_target("cuda:0"))
AUTO_FALLBACK = parse_target("cpu:fp16")
AUTO_ORT = parse_target("ort")


def auto_targets() -> list[Target]:
    """Targets picked when none is given: npu:0, else cuda:0, else cpu:fp16; plus ort."""
    eager = next((t for t in AUTO_ACCELERATORS if t.skip_reason() is None), AUTO_FALLBACK)
    return [eager, AUTO_ORT]


def describe_targets(chosen: list[Target], auto: bool) -> list[str]:
    """Report-header lines: the targets chosen, the unavailable ones with reasons, NPU knobs."""
    how = "auto: none given" if auto else "from --bm-target"
    lines = [f"targets: {', '.join(t.id for t in chosen)} ({how})"]
    # With auto-selection the accelerators passed over are worth naming too: they are
    # what a reviewer expects on an Ascend runner.
    considered = chosen + [t for t in AUTO_ACCELERATORS if auto and t not in chosen]
    for target in considered:
        reason = target.skip_reason()
        if reason is not None:
            verb = "skipped" if target in chosen else "not chosen"
            lines.append(f"{verb}: {target.id}: {reason}")
    knobs = " ".join(f"{k}={v if v is not None else '<unset>'}" for k, v in npu_environment().items())
    lines.append(f"npu env: {knobs}")
    return lines
