"""The ``--bm-dump-dir`` layout: one folder per target, in msprobe's layout, with our index.

Each target the session ran (the reference included) gets the dump of its sample-batch
run, the first batch of the session::

    D/<folder>/
        index.json                 ours: Dump.save's index (entries, statistics, tensor files)
                                   plus target, granularity, reference, golden, batch, run, mode
        step0/rank0/dump.json      msprobe's (precision/msprobe.py), with stack.json,
        step0/rank0/...            construct.json and dump_tensor_data/ (full mode only)
        graph_outputs/             the reference only: its graph outputs, in the same layout,
                                   what a compiled target's graph outputs are compared with

``<folder>`` is the target id with every character other than a letter, a digit, ``_`` or
``.`` replaced by ``-`` (``cpu:bf16`` -> ``cpu-bf16``, ``npu:0:fp16`` -> ``npu-0-fp16``):
``:`` is not allowed in Windows file names, and no target id contains ``-``, so the folder
names the target without ambiguity. Tensors are stored once, as msprobe's ``.pt`` files, and
our index points at them.

Writes are atomic and once per run: a tree is written in a hidden folder beside its place
and renamed into it. A folder already there from the same run (another xdist worker ran the
same target) is kept and ours dropped; one from an earlier run is replaced.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .dump import INDEX_FILE, Dump
from .msprobe import TENSOR_DIR, export_msprobe, output_names

STEP, RANK = 0, 0
RANK_DIR = Path(f"step{STEP}") / f"rank{RANK}"
GRAPH_OUTPUTS = "graph_outputs"
Granularity = Literal["module outputs", "graph outputs"]

_UNSAFE = re.compile(r"[^\w.]")


def folder_name(target_id: str) -> str:
    """The folder of a target's dump under the dump dir (module doc): ``cpu:bf16`` -> ``cpu-bf16``."""
    return _UNSAFE.sub("-", target_id)


def dump_json(target_id: str, graph_outputs: bool = False) -> Path:
    """msprobe's dump.json of a target, relative to the dump dir: what ``msprobe compare -tp/-gp`` take."""
    base = Path(folder_name(target_id))
    return (base / GRAPH_OUTPUTS if graph_outputs else base) / RANK_DIR / "dump.json"


def _write_tree(directory: Path, dump: Dump, located_at: Path, header: Mapping[str, Any]) -> None:
    """msprobe's tree of ``dump`` and our index pointing at its tensor files."""
    export_msprobe(dump, directory, STEP, RANK, located_at=located_at)
    files = [(RANK_DIR / TENSOR_DIR / f"{name}.pt").as_posix() for name in output_names(dump)]
    dump.save(directory, files=files, header=header)


def _run_of(folder: Path) -> str | None:
    """The run that wrote ``folder``, None when it holds no index of ours."""
    try:
        return json.loads((folder / INDEX_FILE).read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError):
        return None


def _move_into_place(written: Path, final: Path, run: str) -> None:
    """Rename ``written`` to ``final`` (module doc: kept if the same run got there first, else replaced)."""
    while True:
        try:
            os.rename(written, final)  # atomic; fails when final is a non-empty folder
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if _run_of(final) == run:
            shutil.rmtree(written)
            return
        stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(final, stale)
        except FileNotFoundError:  # another worker moved it aside first: try again
            continue
        shutil.rmtree(stale, ignore_errors=True)


def write_target_dump(
    root: Path, target_id: str, dump: Dump, *, run: str, granularity: Granularity,
    reference_id: str, batch: Mapping[str, Any], graph_outputs: Dump | None = None,
) -> Path:
    """Write one target's dump under ``root`` (module doc); returns its folder.

    Args:
        dump: the target's dump, written in its mode (``Dump.without_data`` for stats).
        run: an id shared by every process of one session (xdist workers included).
        granularity: ``module outputs`` (eager targets) or ``graph outputs`` (compiled).
        reference_id: the reference's target id; the index names the dump.json this
            target's is compared with (its graph outputs for a compiled target), None for
            the reference itself.
        batch: what was run, for the index.
        graph_outputs: the reference's graph outputs, written under ``graph_outputs/``.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / folder_name(target_id)
    golden = None
    if target_id != reference_id:
        golden = dump_json(reference_id, granularity == "graph outputs").as_posix()
    header = {
        "target": target_id, "granularity": granularity, "reference": reference_id, "golden": golden,
        "msprobe_dump": dump_json(target_id).as_posix(), "batch": dict(batch), "run": run,
    }
    written = root / f".{final.name}.{uuid.uuid4().hex}"
    written.mkdir()  # not tempfile.mkdtemp, whose 0700 would stay on the folder users open
    try:
        _write_tree(written, dump, final, header)
        if graph_outputs is not None:
            graph_header = {**header, "granularity": "graph outputs", "golden": None,
                            "msprobe_dump": dump_json(target_id, graph_outputs=True).as_posix()}
            _write_tree(written / GRAPH_OUTPUTS, graph_outputs, final / GRAPH_OUTPUTS, graph_header)
        _move_into_place(written, final, run)
    finally:
        shutil.rmtree(written, ignore_errors=True)  # left only when writing failed
    return final
