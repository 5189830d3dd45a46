"""Export a dump in msprobe's dump layout, so that ``msprobe compare`` can read our dumps.

Layout written (msprobe's PyTorch L0 dump, anchors.md section 1)::

    <dump_path>/step<step>/rank<rank>/
        dump.json        {task, level: "L0", framework: "pytorch", dump_data_dir, data}
        stack.json       {} (we record no call stacks)
        construct.json   {} (no parent map: msprobe only needs it for -fm/-dm mapping)
        dump_tensor_data/<node>.output.<i>.pt   (task "tensor" only)

``rank<N>`` rather than msprobe's single-process ``proc<pid>``: ``msprobe compare -da``
(first-diff analysis) only finds ``rank`` directories. Each module call is a node
``Module.<name>.<Class>.forward.<k>``, k its 0-based call index; ``output`` lists the
call's tensors in our flattening order, each ``{type, dtype, shape, Max, Min, Mean, Norm,
requires_grad, data_name}``. ``input_args`` and ``input_kwargs`` are empty on both sides,
so msprobe's rule that matched nodes have equal input/output counts holds. Tensor files
are saved in the output's original dtype (our float32 copy converts back exactly).
A ``stats`` dump exports as task ``statistics``: the same entries without files.
Statistics that are NaN/Inf (all NaN for an empty tensor) are written the way Python's
json writes them (``NaN``, ``Infinity``), which msprobe, also Python, reads back.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .dump import Dump, DumpEntry

LEVEL = "L0"
FRAMEWORK = "pytorch"
TENSOR_DIR = "dump_tensor_data"
TASKS = {"full": "tensor", "stats": "statistics"}


def node_name(entry: DumpEntry) -> str:
    """msprobe's module node name, e.g. ``Module.backbone.fpn_output3.Conv2d.forward.0``.

    The root module (recorded only with ``include_root``) has no name in msprobe, which
    never dumps it; it keeps our ``<root>``.
    """
    return f"Module.{entry.module}.{entry.module_type}.forward.{entry.call}"


def _tensor_entry(entry: DumpEntry, data_name: str | None) -> dict:
    stats = entry.stats
    row = {
        "type": "torch.Tensor",
        "dtype": entry.dtype,
        "shape": list(entry.shape),
        "Max": stats.max,
        "Min": stats.min,
        "Mean": stats.mean,
        "Norm": stats.norm,
        "requires_grad": False,  # not recorded: dumps compare inference, where it is False
    }
    if data_name is not None:
        row["data_name"] = data_name
    return row


def output_names(dump: Dump) -> list[str]:
    """Each entry's name in msprobe, ``<node>.output.<i>``, in entry order: the row ``msprobe
    compare`` writes for it (its ``NPU Name``) and, with ``.pt``, its tensor file; i counts
    the node's outputs. By position, not by our entry name, which a module's dict output can
    share with a child (``backbone.bottom_up.res3`` is both ResNet's output ``res3`` and the
    stage's own); msprobe's names, which carry the class, do not collide.
    """
    counts: dict[str, int] = {}
    names = []
    for entry in dump:
        node = node_name(entry)
        names.append(f"{node}.output.{counts.get(node, 0)}")
        counts[node] = counts.get(node, 0) + 1
    return names


def export_msprobe(dump: Dump, dump_path: Path | str, step: int = 0, rank: int = 0,
                   located_at: Path | str | None = None) -> Path:
    """Write ``dump`` as msprobe's ``dump_path/step<step>/rank<rank>``; returns dump.json's path.

    ``located_at``: where ``dump_path`` will be once moved (a tree written aside and renamed
    into place), for the absolute ``dump_data_dir`` dump.json records; ``msprobe compare``
    itself looks for the tensors next to dump.json.
    """
    rank_dir = Path(dump_path) / f"step{step}" / f"rank{rank}"
    tensor_dir = rank_dir / TENSOR_DIR
    task = TASKS[dump.mode]
    if task == "tensor":
        tensor_dir.mkdir(parents=True, exist_ok=True)
    else:
        rank_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(dump)
    data: dict[str, dict] = {}
    for entry, name in zip(dump, names):
        node = data.setdefault(node_name(entry), {"input_args": [], "input_kwargs": {}, "output": []})
        data_name = None
        if entry.data is not None:
            data_name = f"{name}.pt"
            torch.save(entry.data.to(getattr(torch, entry.dtype.removeprefix("torch."))), tensor_dir / data_name)
        node["output"].append(_tensor_entry(entry, data_name))
    final_tensor_dir = Path(located_at or dump_path) / tensor_dir.relative_to(dump_path)
    document = {
        "task": task,
        "level": LEVEL,
        "framework": FRAMEWORK,
        "dump_data_dir": str(final_tensor_dir.resolve()) if task == "tensor" else None,
        "data": data,
    }
    path = rank_dir / "dump.json"
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    for name in ("stack.json", "construct.json"):
        (rank_dir / name).write_text("{}", encoding="utf-8")
    return path
