"""DumpCollector: record every module's output during one forward, in execution order.

Naming. An entry is named after the module's qualified name (``named_modules``). A module
called more than once in the forward (the FCOS head and ``top_layer`` run once per FPN
level) gets ``name#k`` for its k-th call, k from 0; a module called once keeps the plain
name. Tuple/list outputs are flattened with ``.i`` suffixes and dict outputs with ``.key``,
recursively: the FCOS head's third call yields ``proposal_generator.fcos_head#2.0`` (logits)
to ``...#2.3``. Only floating-point tensors are recorded; None, ints and integer/bool
tensors (indices, masks) are skipped. The golden and target runs must execute the same
Python control flow for names to line up (msprobe has the same rule).

Order. Entries are in the order the modules *finished*, which is when their outputs
exist: a child comes before the module that contains it, so the first entry that differs
from the reference points at the innermost module that introduced the difference.

Root. The model passed in is not recorded unless ``include_root=True`` (msprobe does not
dump it either); it is then named ``<root>``. Its hooks only fire when the model is
*called*: ``model.forward_raw(x)`` is a plain method, so its outputs are recorded through
the submodules that produce them (``basis_module``, ``proposal_generator.fcos_head#k``,
``top_layer#k``).

Modes. ``full`` keeps a CPU float32 copy of every output (exact for fp16/bf16), whose
statistics are computed when first asked for; ``stats`` keeps only max/min/mean/L2 norm,
computed on the output's device in float32 and fetched once when the forward ends (a CPU
float32 output in one pass, ``stats_kernel.py``), so big models fit. A module that returns
an unchanged tensor already recorded (``Conv2dNorm`` returns its norm's output, a
``Sequential`` its last child's) shares that entry's copy instead of making another one:
unchanged means the same tensor object with the same version counter or, for inference
tensors which have none, the same contents.
Sharing halves the work of comparing a whole R_50 forward (342 entries, 246 tensors).
"""
from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .stats_kernel import one_pass_sums

Mode = Literal["full", "stats"]
MODES = ("full", "stats")
ROOT_NAME = "<root>"
INDEX_FILE = "index.json"
INDEX_FORMAT = "pytest-blendmask-dump"
INDEX_VERSION = 1

_UNSAFE_FILENAME = re.compile(r"[^\w.#-]+")


@dataclass(frozen=True)
class TensorStats:
    """msprobe's summary of one tensor: Max, Min, Mean and L2 Norm (NaN for an empty tensor)."""

    max: float
    min: float
    mean: float
    norm: float


@dataclass(frozen=True)
class DumpEntry:
    """One recorded output tensor.

    ``name`` is the entry's key in the dump (module doc); ``module``, ``call`` and
    ``output`` are its parts: the qualified module name, the 0-based call index and the
    flattening suffix ("" for a module returning a single tensor). ``dtype`` is the
    tensor's original dtype, e.g. ``torch.float16``. ``data`` is the CPU float32 copy,
    None in ``stats`` mode.
    """

    name: str
    module: str
    module_type: str
    call: int
    output: str
    dtype: str
    shape: tuple[int, ...]
    data: Tensor | None = field(repr=False, compare=False)
    recorded_stats: TensorStats | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def stats(self) -> TensorStats:
        """Max/min/mean/L2 norm: recorded in ``stats`` mode, computed from ``data`` on first use
        in ``full`` mode (not during the forward, where it would cost time for nothing)."""
        if self.recorded_stats is not None:
            return self.recorded_stats
        return _stats_on_host([_stats_sums(self.data)], [self.data.numel()])[0]


@dataclass(frozen=True)
class Dump:
    """The entries of one forward, in execution order."""

    mode: Mode
    entries: tuple[DumpEntry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DumpEntry]:
        return iter(self.entries)

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def by_name(self) -> dict[str, DumpEntry]:
        return {entry.name: entry for entry in self.entries}

    def subset(self, names: Iterable[str]) -> Dump:
        """The entries named in ``names``, in this dump's order."""
        wanted = set(names)
        return Dump(self.mode, tuple(entry for entry in self.entries if entry.name in wanted))

    def without_data(self) -> Dump:
        """This dump in ``stats`` mode: the same entries and statistics, no tensors kept."""
        entries = tuple(replace(e, data=None, recorded_stats=e.stats) for e in self.entries)
        return Dump("stats", entries)

    def save(self, directory: Path | str, files: Sequence[str] | None = None,
             header: Mapping[str, Any] | None = None) -> Path:
        """Write ``index.json`` and one ``.npy`` per distinct tensor; returns the index path.

        Entries that share a copy (module doc) share a file, and the same ``tensor`` number
        in the index (``load`` shares it again, also where ``files`` gives each its own). ``stats`` dumps write the
        index only. ``files`` names, per entry in order, its tensor file already written under
        ``directory`` (the msprobe export's ``.pt`` files): the index refers to those and no
        ``.npy`` is written, so a folder holds each tensor once. ``header`` adds fields to
        the index (who ran the dump, on what).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[int, str] = {}
        tensors: dict[int, int] = {}
        rows = []
        for position, entry in enumerate(self.entries):
            row = {k: v for k, v in asdict(entry).items() if k not in ("data", "recorded_stats")}
            row["stats"] = asdict(entry.stats)
            if entry.data is not None:
                row["tensor"] = tensors.setdefault(id(entry.data), len(tensors))
            if entry.data is not None and files is not None:
                row["file"] = files[position]
            elif entry.data is not None:
                if id(entry.data) not in written:
                    filename = f"{len(written):04d}_{_UNSAFE_FILENAME.sub('_', entry.name)}.npy"
                    np.save(directory / filename, entry.data.numpy())
                    written[id(entry.data)] = filename
                row["file"] = written[id(entry.data)]
            rows.append(row)
        index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, **(header or {}), "mode": self.mode, "entries": rows}
        path = directory / INDEX_FILE
        path.write_text(json.dumps(index, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Path | str) -> Dump:
        """Read a dump written by ``save``; entries that shared a tensor share one again.
        Fields of the index other than the entries and the mode (``save``'s ``header``) are not read."""
        path = Path(directory) / INDEX_FILE
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != INDEX_FORMAT or index.get("version") != INDEX_VERSION:
            raise ValueError(
                f"{path}: not a {INDEX_FORMAT} index version {INDEX_VERSION} "
                f"(format {index.get('format')!r}, version {index.get('version')!r})"
            )
        tensors: dict[Any, Tensor] = {}
        entries = []
        for row in index["entries"]:
            filename = row.pop("file", None)
            key = row.pop("tensor", filename)  # indexes before "tensor" existed: shared files share
            if filename is not None and key not in tensors:
                tensors[key] = _load_tensor(path.parent / filename)
            stats, shape = TensorStats(**row.pop("stats")), tuple(row.pop("shape"))
            data = tensors.get(key) if filename is not None else None
            entries.append(DumpEntry(**row, shape=shape, data=data, recorded_stats=stats))
        return cls(index["mode"], tuple(entries))


def _load_tensor(path: Path) -> Tensor:
    """A saved tensor as CPU float32: our ``.npy`` copies, or msprobe's ``.pt`` files, which keep
    the original dtype (widening fp16/bf16 back is exact). float32 files are memory-mapped, not
    read: loading an R_50 forward's dump then costs nothing, and comparing it reads each page once."""
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True, mmap=True).float()
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def flatten_output(output: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """(suffix, tensor) for every floating-point tensor in a nested output, in order."""
    if isinstance(output, Tensor):
        if output.is_floating_point():
            yield prefix, output
    elif isinstance(output, (list, tuple)):
        for i, item in enumerate(output):
            yield from flatten_output(item, f"{prefix}.{i}" if prefix else str(i))
    elif isinstance(output, Mapping):
        for key, item in output.items():
            yield from flatten_output(item, f"{prefix}.{key}" if prefix else str(key))


def _cpu_float32_copy(t: Tensor) -> Tensor:
    """A CPU float32 copy of ``t``, exact for float16/bfloat16.

    Host-side copies go through numpy: on a busy 2-core machine torch's CPU copy and cast
    kernels were measured 15x slower than numpy's (their OpenMP threads wait on each other),
    which alone broke the full-dump budget.
    """
    if t.device.type != "cpu":
        return t.to("cpu", torch.float32)  # the transfer makes the copy
    if t.dtype == torch.bfloat16:
        # bfloat16 is the upper half of a float32: widen by shifting the bits into place.
        bits = t.view(torch.int16).numpy().astype(np.int32) << 16
        return torch.from_numpy(bits.view(np.float32))
    return torch.from_numpy(t.numpy().astype(np.float32))  # astype always copies


def _same_contents(copy: Tensor, t: Tensor) -> bool:
    """Whether ``t`` still holds the values of its earlier ``copy`` (NaN counts as changed).

    Cheaper than keeping a second copy, and than comparing that copy again later; a CPU
    float32 tensor is compared without converting it first.
    """
    current = t if t.device.type == "cpu" and t.dtype == torch.float32 else _cpu_float32_copy(t)
    return np.array_equal(copy.numpy(), current.numpy())


_StatSums = tuple[Tensor, Tensor, Tensor, Tensor] | tuple[float, float, float, float]


def _stats_sums(t: Tensor) -> _StatSums:
    """(max, min, sum, sum of squares) of ``t``: host floats from ``stats_kernel``'s one pass
    for a dense CPU float32 tensor, else 0-d float32 tensors on ``t``'s device (no host sync).

    ``_stats`` turns the sums into mean and L2 norm once they are on the host. A tuple, not
    one stacked tensor: a stack per output cost as much as the three reductions of a small
    one. float32 accumulation: a float16 sum of squares overflows at 65504.
    """
    if t.numel() == 0:
        nan = torch.full((), float("nan"), device=t.device)
        return nan, nan, nan, nan
    one_pass = one_pass_sums(t)
    if one_pass is not None:
        return one_pass
    lo, hi = torch.aminmax(t)
    if t.dtype == torch.float32:
        flat = t.reshape(-1)
        # dot is a single pass; vector_norm(dtype=float32) is kept for narrower dtypes.
        return hi, lo, flat.sum(), torch.dot(flat, flat)
    squares = torch.linalg.vector_norm(t, dtype=torch.float32) ** 2
    return hi.float(), lo.float(), t.sum(dtype=torch.float32), squares


def _stats_on_host(sums: Sequence[_StatSums], numels: Sequence[int]) -> list[TensorStats]:
    """The statistics of each tensor from its ``_stats_sums``, with one device-to-host transfer
    for all those still on a device."""
    on_device = [four for four in sums if isinstance(four[0], Tensor)]
    fetched = iter(torch.stack([v for four in on_device for v in four]).view(-1, 4).cpu().tolist() if on_device else [])
    rows = [next(fetched) if isinstance(four[0], Tensor) else list(four) for four in sums]
    return [_stats(row, numel) for row, numel in zip(rows, numels)]


def _stats(row: list[float], numel: int) -> TensorStats:
    high, low, total, squares = row
    if numel == 0:
        return TensorStats(high, low, total, squares)  # all NaN
    return TensorStats(high, low, total / numel, squares**0.5)


@dataclass
class _Seen:
    """The last payload recorded for one tensor object, to share it when the tensor recurs."""

    ref: weakref.ref
    version: int | None  # None for inference tensors, which have no version counter
    payload: Tensor | _StatSums


class _Record(NamedTuple):  # a NamedTuple: built once per module output, in the forward's hot path
    module: str
    module_type: str
    call: int
    output: str
    dtype: str
    shape: tuple[int, ...]
    payload: Tensor | _StatSums  # full: CPU float32 copy; stats: its _stats_sums


class DumpCollector:
    """Forward hooks that record module outputs while the ``with`` block runs.

    Example::

        collector = DumpCollector(model, mode="full", exclude=["*.relu"])
        with collector, torch.no_grad():
            model.forward_raw(batch)
        dump = collector.dump

    Under ``no_grad`` (not ``inference_mode``) tensors keep version counters, so an output
    that a container returns unchanged is shared with its child's entry for free.

    Args:
        model: the module whose submodules are hooked.
        mode: ``full`` or ``stats`` (module doc).
        include: fnmatch patterns on qualified module names; a module is hooked if it
            matches one of them and none of ``exclude``.
        exclude: fnmatch patterns of modules to skip.
        include_root: also record ``model`` itself, as ``<root>`` (module doc).
        spill_dir: ``full`` mode only: write each copy to ``<spill_dir>/<n>.npy`` as it is
            made and keep a copy-on-write memory map of the file instead of the copy, so the
            dump holds no tensor in memory. Peak memory is then the forward's own plus the
            largest single output's copy; the mapped pages are file-backed, and the kernel
            drops them under pressure instead of swapping. The folder is created; the files
            must outlive the dump (POSIX keeps a mapped file's data after it is deleted).

    The hooks are removed when the block exits, also when the forward raises; ``dump``
    then holds what was recorded up to the error.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: Mode = "full",
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        include_root: bool = False,
        spill_dir: Path | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}; got {mode!r}")
        if spill_dir is not None and mode != "full":
            raise ValueError(f"spill_dir: only a 'full' dump has tensors to write; got mode {mode!r}")
        self.model = model
        self.mode: Mode = mode
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.include_root = include_root
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        self._spilled = 0
        self._dump: Dump | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._records: list[_Record] = []
        self._calls: Counter[str] = Counter()
        self._seen: dict[int, _Seen] = {}

    def selected_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs that will be hooked, in ``named_modules`` order.

        Raises:
            ValueError: an include pattern matches no module (a typo would otherwise
                silently record nothing).
        """
        named = [(name or ROOT_NAME, module) for name, module in self.model.named_modules()]
        if not self.include_root:
            named = named[1:]
        for pattern in self.include:
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
                raise ValueError(f"include pattern {pattern!r} matches no module of {type(self.model).__name__}")
        return [
            (name, module)
            for name, module in named
            if any(fnmatch.fnmatchcase(name, p) for p in self.include)
            and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)
        ]

    @property
    def dump(self) -> Dump:
        """The dump of the last completed ``with`` block."""
        if self._dump is None:
            raise RuntimeError("no dump yet: run the forward inside `with collector:` first")
        return self._dump

    def __enter__(self) -> DumpCollector:
        self._records, self._calls, self._seen = [], Counter(), {}
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._handles = [
            module.register_forward_hook(self._hook_for(name)) for name, module in self.selected_modules()
        ]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._seen = {}
        self._dump = self._finish()

    def _hook_for(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            call = self._calls[name]
            self._calls[name] += 1
            for suffix, tensor in flatten_output(output):
                self._records.append(
                    _Record(
                        name, type(module).__name__, call, suffix, str(tensor.dtype), tuple(tensor.shape),
                        self._capture(tensor),
                    )
                )

        return hook

    def _capture(self, t: Tensor) -> Tensor:
        """The payload of ``t``, shared with an earlier record when ``t`` is unchanged since.

        ``t`` is the module's own output object (not a ``detach()``-ed one, which would be
        a new object every time), so identity tells when a parent returns its child's output.
        """
        version = None if t.is_inference() else t._version
        seen = self._seen.get(id(t))
        same_object = seen is not None and seen.ref() is t
        if same_object and version is not None and seen.version == version:
            return seen.payload
        data = t.detach() if t.requires_grad else t  # requires_grad only outside no_grad
        if self.mode == "stats":
            payload = _stats_sums(data)
        elif same_object and version is None and _same_contents(seen.payload, data):
            return seen.payload
        else:
            payload = _cpu_float32_copy(data)
            if self.spill_dir is not None:
                payload = self._spilled_copy(payload)
        self._seen[id(t)] = _Seen(weakref.ref(t), version, payload)
        return payload

    def _spilled_copy(self, copy: Tensor) -> Tensor:
        """``copy`` written to the spill folder, returned as a memory map of the file."""
        assert self.spill_dir is not None
        path = self.spill_dir / f"{self._spilled:05d}.npy"
        self._spilled += 1
        np.save(path, copy.numpy())
        return torch.from_numpy(np.load(path, mmap_mode="c"))

    def _finish(self) -> Dump:
        full = self.mode == "full"
        stats: dict[int, TensorStats] = {}
        if not full:
            # One device-to-host transfer for all statistics, after the forward.
            distinct = {id(r.payload): r for r in self._records}
            computed = _stats_on_host([r.payload for r in distinct.values()], [math.prod(r.shape) for r in distinct.values()])
            stats = dict(zip(distinct, computed))
        return Dump(
            self.mode,
            tuple(
                DumpEntry(
                    name=entry_name(r.module, r.call, self._calls[r.module], r.output),
                    module=r.module,
                    module_type=r.module_type,
                    call=r.call,
                    output=r.output,
                    dtype=r.dtype,
                    shape=r.shape,
                    data=r.payload if full else None,
                    recorded_stats=None if full else stats[id(r.payload)],
                )
                for r in self._records
            ),
        )


def entry_name(module: str, call: int, calls: int, output: str) -> str:
    """An entry's name (module doc): ``module``, ``module#call`` when it was called ``calls`` > 1
    times, then ``.output`` for an output inside a tuple, list or dict."""
    base = module if calls == 1 else f"{module}#{call}"
    return f"{base}.{output}" if output else base


def dump_from_outputs(outputs: dict[str, Tensor]) -> Dump:
    """A ``full`` dump of named graph outputs, for targets whose layers cannot be hooked
    (ONNX Runtime, .om): each output is one entry, in the order given."""
    entries = tuple(
        DumpEntry(name, name, "GraphOutput", 0, "", str(t.dtype), tuple(t.shape), t.detach().float().cpu())
        for name, t in outputs.items()
    )
    return Dump("full", entries)
