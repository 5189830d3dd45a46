"""Profile a few iterations: the top operators by self time, and what fell back to the host or to AI CPU.

cpu and cuda run ``torch.profiler``; npu runs ``torch_npu.profiler``, which writes
``*_ascend_pt/ASCEND_PROFILER_OUTPUT/{operator_details,kernel_details}.csv`` and
``trace_view.json`` (anchors.md section 6). Both are reduced to the same ``OpStat`` rows:

* **top operators**: by self time on the device for accelerators (where the time goes
  on the card), by self host time on the CPU;
* **post-processing operators**: torchvision's (``nms``, ``roi_align``), those a port must
  bring to its device, with their times whether or not they reach the top operators; only
  those the profiler recorded are listed, so an empty list says they never ran (no
  detection reached the post-processing);
* **host fallbacks** (accelerator targets only): operators that launched no device work
  of their own (device self time 0) yet spent a real share of the host time, i.e. they
  computed on the host CPU. That is how seed 001's ``torchvision::nms`` / ``roi_align``
  CPU fallback on the NPU shows up: no kernel, milliseconds of host time;
* **AI CPU kernels** (npu only): rows of ``kernel_details.csv`` whose ``Accelerator Core``
  is ``AI_CPU``: operators CANN could not place on the AI Cores, which run on the
  card's control CPUs at a fraction of the speed.

The parsers and classifiers are pure functions over rows, so they are tested with recorded
CSV snippets; ``profile_callable`` is the only part that runs a profiler.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pytest_blendmask import devices

TOP_K = 10
# An operator counts as a host fallback from this share of the profiled host time: below
# it, a kernel-less operator is dispatch or bookkeeping overhead, not computation.
FALLBACK_MIN_HOST_SHARE = 0.02
# Operators that legitimately spend host time without device work: they wait for the
# device to finish (a scalar read back), they are not computing on the host.
SYNC_OPS = frozenset({"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero"})
AI_CPU_CORE = "AI_CPU"
ASCEND_OUTPUT_GLOB = "*_ascend_pt/ASCEND_PROFILER_OUTPUT"
TRACE_FILE = "trace.json"
# The namespace of torchvision's custom operators: the post-processing's nms and roi_align.
POSTPROCESS_NAMESPACE = "torchvision::"


@dataclass(frozen=True)
class OpStat:
    """One operator summed over the profiled iterations, times in microseconds."""

    name: str
    calls: int
    host_self_us: float
    device_self_us: float

    def self_us(self, by_device: bool) -> float:
        """Self time on the device or on the host."""
        return self.device_self_us if by_device else self.host_self_us


@dataclass(frozen=True)
class KernelStat:
    """Device kernels of one operator type on one kind of core, summed."""

    op_type: str
    core: str
    calls: int
    duration_us: float


@dataclass(frozen=True)
class ProfileSummary:
    """What one profile found; ``ai_cpu`` is None where there is no AI CPU (cpu, cuda)."""

    device: str
    iterations: int
    top_by: str  # "device" or "host": which self time ranks the top operators
    top: list[OpStat]
    table: str  # the top operators as Markdown, shares taken over all operators
    postprocess: list[OpStat]  # the torchvision operators that ran
    postprocess_table: str  # the same as Markdown
    host_fallbacks: list[OpStat] | None  # None on the CPU, which is the host
    ai_cpu: list[KernelStat] | None
    trace: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def postprocess_ms(self) -> float:
        """Self time per iteration of the post-processing operators together, on the ranking clock."""
        return sum(op.self_us(self.top_by == "device") for op in self.postprocess) / self.iterations / 1e3

    def postprocess_text(self) -> str:
        """The post-processing operators in words, e.g. ``torchvision::roi_align 8.080 ms x1``, per iteration."""
        by_device = self.top_by == "device"
        return ", ".join(
            f"{op.name} {op.self_us(by_device) / self.iterations / 1e3:.3f} ms x{op.calls / self.iterations:g}"
            for op in self.postprocess
        ) or "no torchvision operator ran"


def is_operator(name: str) -> bool:
    """Dispatcher operators are namespaced (``aten::conv2d``); runtime events and annotations are not."""
    return "::" in name


def top_ops(ops: Iterable[OpStat], *, by_device: bool, k: int = TOP_K) -> list[OpStat]:
    """The ``k`` operators with the most self time, on the device or on the host."""
    ranked = sorted((op for op in ops if is_operator(op.name) and op.self_us(by_device) > 0),
                    key=lambda op: op.self_us(by_device), reverse=True)
    return ranked[:k]


def postprocess_ops(ops: Iterable[OpStat], *, by_device: bool) -> list[OpStat]:
    """The torchvision operators among ``ops`` (nms, roi_align), most self time first."""
    found = [op for op in ops if op.name.startswith(POSTPROCESS_NAMESPACE)]
    return sorted(found, key=lambda op: op.self_us(by_device), reverse=True)


def host_fallbacks(ops: Sequence[OpStat], *, min_share: float = FALLBACK_MIN_HOST_SHARE) -> list[OpStat]:
    """Operators of an accelerator run that computed on the host, most host time first.

    Flagged: an operator with no device self time and host self time >= ``min_share`` of
    the host self time of all operators, unless it only waits for the device (``SYNC_OPS``).
    """
    operators = [op for op in ops if is_operator(op.name)]
    total = sum(op.host_self_us for op in operators)
    flagged = [
        op for op in operators
        if op.device_self_us == 0 and op.name not in SYNC_OPS and total > 0 and op.host_self_us >= min_share * total
    ]
    return sorted(flagged, key=lambda op: op.host_self_us, reverse=True)


def _float(text: str | None) -> float:
    # CANN writes large numbers with a trailing tab so spreadsheets keep them as text.
    return float(text.strip()) if text and text.strip() else 0.0


def _rows(csv_text: str) -> list[dict[str, str]]:
    # The profiler writes UTF-8 with a byte-order mark.
    return list(csv.DictReader(io.StringIO(csv_text.lstrip("\ufeff"))))


def _require(rows: list[dict[str, str]], columns: Sequence[str], what: str) -> None:
    present = set(rows[0]) if rows else set(columns)
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; found {sorted(present)}")


def parse_operator_details(csv_text: str) -> list[OpStat]:
    """torch_npu's ``operator_details.csv`` (one row per operator call) summed per operator name."""
    rows = _rows(csv_text)
    _require(rows, ("Name", "Host Self Duration(us)", "Device Self Duration(us)"), "operator_details.csv")
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for row in rows:
        entry = sums[row["Name"].strip()]
        entry[0] += 1
        entry[1] += _float(row["Host Self Duration(us)"])
        entry[2] += _float(row["Device Self Duration(us)"])
    return [OpStat(name, int(calls), host, dev) for name, (calls, host, dev) in sums.items()]


def parse_kernel_details(csv_text: str) -> list[KernelStat]:
    """torch_npu's ``kernel_details.csv`` summed per (operator type, accelerator core), longest first."""
    rows = _rows(csv_text)
    _require(rows, ("Type", "Accelerator Core", "Duration(us)"), "kernel_details.csv")
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for row in rows:
        entry = sums[(row["Type"].strip(), row["Accelerator Core"].strip())]
        entry[0] += 1
        entry[1] += _float(row["Duration(us)"])
    stats = [KernelStat(op_type, core, int(calls), total) for (op_type, core), (calls, total) in sums.items()]
    return sorted(stats, key=lambda k: k.duration_us, reverse=True)


def ai_cpu_kernels(kernels: Iterable[KernelStat]) -> list[KernelStat]:
    """The kernels that ran on AI CPU rather than the AI Cores."""
    return [k for k in kernels if k.core == AI_CPU_CORE]


def ops_from_key_averages(events: Iterable[Any]) -> list[OpStat]:
    """``torch.profiler``'s ``key_averages()`` as ``OpStat`` rows."""
    return [
        OpStat(e.key, int(e.count), float(e.self_cpu_time_total), float(getattr(e, "self_device_time_total", 0.0)))
        for e in events
    ]


def ops_table(rows: Sequence[OpStat], ops: Sequence[OpStat], *, by_device: bool, iterations: int) -> str:
    """``rows`` as a Markdown table: rank by self time among all ``ops`` (- with none), calls and
    self time per iteration, share of the self time of all ``ops``."""
    total = sum(op.self_us(by_device) for op in ops if is_operator(op.name)) or 1.0
    ranks = {op.name: rank for rank, op in enumerate(top_ops(ops, by_device=by_device, k=len(ops)), start=1)}
    where = "device" if by_device else "host"
    lines = [
        f"| # | operator | calls/iter | {where} self ms/iter | share |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for op in rows:
        value = op.self_us(by_device)
        calls, ms = op.calls / iterations, value / iterations / 1e3
        lines.append(f"| {ranks.get(op.name, '-')} | `{op.name}` | {calls:g} | {ms:.3f} | {value / total:.1%} |")
    return "\n".join(lines)


def top_table(ops: Sequence[OpStat], *, by_device: bool, iterations: int) -> str:
    """The top operators as a Markdown table: self time per iteration and share of the total."""
    return ops_table(top_ops(ops, by_device=by_device), ops, by_device=by_device, iterations=iterations)


def _ascend_output(out_dir: Path) -> Path:
    found = sorted(out_dir.glob(ASCEND_OUTPUT_GLOB), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"torch_npu profiler wrote no {ASCEND_OUTPUT_GLOB} under {out_dir}")
    return found[-1]


def _profile_torch(run: Callable[[], None], device: torch.device, out_dir: Path) -> tuple[list[OpStat], None, Path]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
    trace = out_dir / TRACE_FILE
    prof.export_chrome_trace(str(trace))
    return ops_from_key_averages(prof.key_averages()), None, trace


def _profile_npu(run: Callable[[], None], out_dir: Path) -> tuple[list[OpStat], list[KernelStat], Path]:
    import torch_npu

    npu_profiler = torch_npu.profiler
    config = npu_profiler._ExperimentalConfig(profiler_level=npu_profiler.ProfilerLevel.Level1)
    with npu_profiler.profile(
        activities=[npu_profiler.ProfilerActivity.CPU, npu_profiler.ProfilerActivity.NPU],
        on_trace_ready=npu_profiler.tensorboard_trace_handler(str(out_dir)),
        experimental_config=config,
    ):
        run()
    output = _ascend_output(out_dir)
    ops = parse_operator_details((output / "operator_details.csv").read_text(encoding="utf-8"))
    kernels = parse_kernel_details((output / "kernel_details.csv").read_text(encoding="utf-8"))
    return ops, ai_cpu_kernels(kernels), output / "trace_view.json"


def profile_callable(fn: Callable[[], Any], device: torch.device, *, iterations: int, out_dir: Path) -> ProfileSummary:
    """Profile ``iterations`` synchronised calls of ``fn`` (after one untimed warm-up call), trace under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fn()  # one-off costs (compilation, allocator growth) stay out of the profile
    devices.synchronize(device)

    def run() -> None:
        for _ in range(iterations):
            fn()
        devices.synchronize(device)

    if device.type == "npu":
        ops, ai_cpu, trace = _profile_npu(run, out_dir)
    else:
        ops, ai_cpu, trace = _profile_torch(run, device, out_dir)
    accelerator = devices.is_accelerator(device)
    postprocessing = postprocess_ops(ops, by_device=accelerator)
    return ProfileSummary(
        device=str(device),
        iterations=iterations,
        top_by="device" if accelerator else "host",
        top=top_ops(ops, by_device=accelerator),
        table=top_table(ops, by_device=accelerator, iterations=iterations),
        postprocess=postprocessing,
        postprocess_table=ops_table(postprocessing, ops, by_device=accelerator, iterations=iterations),
        host_fallbacks=host_fallbacks(ops) if accelerator else None,
        ai_cpu=ai_cpu,
        trace=str(trace),
    )


def write_summary(summary: ProfileSummary, out_dir: Path) -> Path:
    """``summary.json`` and ``top_ops.md`` (top operators, then post-processing operators) in ``out_dir``; the JSON path."""
    postprocess = summary.postprocess_table if summary.postprocess else "none ran"
    markdown = f"{summary.table}\n\nPost-processing operators (torchvision):\n\n{postprocess}\n"
    (out_dir / "top_ops.md").write_text(markdown, encoding="utf-8")
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    return path
