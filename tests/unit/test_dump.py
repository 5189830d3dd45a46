"""DumpCollector: naming, order, flattening, modes, aliasing, hooks, persistence, msprobe export,
and the --bm-dump-dir layout."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_blendmask.model import build_model
from pytest_blendmask.precision.dump import ROOT_NAME, Dump, DumpCollector, dump_from_outputs
from pytest_blendmask.precision.dump_dir import folder_name, write_target_dump
from pytest_blendmask.precision.msprobe import export_msprobe


class PassThrough(nn.Module):
    """Returns its child's output object unchanged: the two entries may share one copy."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class InPlaceAfterChild(nn.Module):
    """Returns its child's output object *modified in place*: the entries must differ."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv(x))


class Head(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple:
        return x * 2, {"a": x + 1, "none": None, "index": torch.zeros(1, dtype=torch.long)}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = PassThrough()
        self.inplace = InPlaceAfterChild()
        self.head = Head()  # called twice, like the FCOS head per FPN level

    def forward(self, x: torch.Tensor) -> list:
        x = self.inplace(self.block(x))
        return [self.head(x), self.head(x * 3)]


TINY_NAMES = ["block.conv", "block", "inplace.conv", "inplace", "head#0.0", "head#0.1.a", "head#1.0", "head#1.1.a"]
GRAD_MODES = [
    pytest.param(torch.no_grad, id="no_grad"),
    pytest.param(torch.inference_mode, id="inference_mode"),
    pytest.param(torch.enable_grad, id="grad"),
]


def tiny() -> tuple[Tiny, torch.Tensor]:
    torch.manual_seed(0)
    return Tiny().eval(), torch.randn(1, 2, 4, 4)


def record(model: nn.Module, x: torch.Tensor, grad_mode=torch.no_grad, **options) -> Dump:
    collector = DumpCollector(model, **options)
    with collector, grad_mode():
        model(x)
    return collector.dump


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_names_execution_order_and_flattening(grad_mode):
    model, x = tiny()
    dump = record(model, x, grad_mode)
    # Children finish before their parents; repeated calls get #k; tuple/dict outputs get
    # .i/.key; None and integer tensors are skipped; the root is not recorded by default.
    assert dump.names() == TINY_NAMES
    head = dump.by_name()["head#1.1.a"]
    assert (head.module, head.module_type, head.call, head.output) == ("head", "Head", 1, "1.a")


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_full_mode_copies_are_exact_and_shared_only_when_unchanged(grad_mode):
    model, x = tiny()
    entries = record(model, x, grad_mode).by_name()
    with torch.no_grad():
        conv = model.block.conv(x)
        inner = model.inplace.conv(conv)
    assert torch.equal(entries["block.conv"].data, conv)
    assert entries["block"].data is entries["block.conv"].data
    # The in-place ReLU ran after inplace.conv finished: its entry keeps the negatives.
    assert torch.equal(entries["inplace.conv"].data, inner) and inner.min() < 0
    assert torch.equal(entries["inplace"].data, inner.relu())
    assert entries["inplace"].data is not entries["inplace.conv"].data


def mapped_file(t: torch.Tensor) -> Path:
    """The file whose memory map holds ``t``'s data (Linux: /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps to tell a memory-mapped tensor from one in memory")
    address = t.data_ptr()
    for line in maps.read_text().splitlines():
        span, *fields = line.split(maxsplit=5)
        low, high = (int(bound, 16) for bound in span.split("-"))
        if low <= address < high:
            return Path(fields[4]) if len(fields) == 5 else Path()
    raise AssertionError(f"address {address:#x} is in no mapping")


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_a_spilled_full_dump_writes_each_copy_while_the_forward_runs_and_holds_maps_of_them(tmp_path, grad_mode):
    model, x = tiny()
    on_disk_when_head_ran: list[int] = []
    handle = model.head.register_forward_pre_hook(lambda *_: on_disk_when_head_ran.append(len(list(tmp_path.glob("*.npy")))))
    spilled = record(model, x, grad_mode, spill_dir=tmp_path)
    handle.remove()
    in_memory = record(model, x, grad_mode)
    # block.conv (shared by block), inplace.conv and inplace are on disk before the head first
    # runs; its first call's two outputs before its second.
    assert on_disk_when_head_ran == [3, 5]
    assert spilled.names() == in_memory.names()
    for kept, held in zip(spilled, in_memory):
        assert torch.equal(kept.data, held.data), kept.name
        assert mapped_file(kept.data).parent == tmp_path, kept.name
    assert spilled.by_name()["block"].data is spilled.by_name()["block.conv"].data
    assert len(list(tmp_path.glob("*.npy"))) == len({id(entry.data) for entry in spilled})


def test_only_a_full_dump_spills():
    with pytest.raises(ValueError, match="spill_dir: only a 'full' dump has tensors to write; got mode 'stats'"):
        DumpCollector(Tiny(), mode="stats", spill_dir=Path("unused"))


def test_stats_mode_keeps_statistics_only():
    model, x = tiny()
    full, stats = record(model, x, mode="full"), record(model, x, mode="stats")
    assert stats.mode == "stats" and all(entry.data is None for entry in stats)
    for a, b in zip(full, stats):
        expected = (a.data.max().item(), a.data.min().item(), a.data.mean().item(), a.data.norm().item())
        for s in (a.stats, b.stats):
            assert (s.max, s.min, s.mean, s.norm) == pytest.approx(expected, rel=1e-6)


def test_reduced_precision_outputs_keep_their_dtype_and_are_widened_exactly():
    model, x = tiny()
    collector = DumpCollector(model)
    with collector, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    entry = collector.dump.by_name()["block.conv"]
    assert entry.dtype == "torch.bfloat16" and entry.data.dtype == torch.float32
    assert torch.equal(entry.data.bfloat16().float(), entry.data)


class Constant(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


SPECIALS = [0.0, -0.0, 1.0, -3.5, 1e-40, -1e38, 3e38, float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(torch.tensor(SPECIALS).bfloat16(), id="bfloat16-specials"),
        pytest.param(torch.tensor(SPECIALS[:6] + SPECIALS[7:]).half(), id="float16-specials"),
        pytest.param(torch.arange(12.0).reshape(3, 4).t(), id="float32-non-contiguous"),
        pytest.param(torch.arange(12.0, dtype=torch.float64).reshape(3, 4), id="float64"),
    ],
)
def test_copies_are_exact_float32_for_every_input_dtype_and_layout(value):
    module = nn.Sequential(Constant(value))
    dump = record(module, torch.zeros(1))
    data = dump.entries[0].data
    assert data.dtype == torch.float32 and data.shape == value.shape
    assert torch.equal(data.nan_to_num(), value.float().nan_to_num())
    assert torch.equal(data.isnan(), value.isnan())


@pytest.mark.parametrize(
    "options, names",
    [
        pytest.param({"include": ["head"]}, ["head#0.0", "head#0.1.a", "head#1.0", "head#1.1.a"], id="include"),
        pytest.param({"exclude": ["*.conv", "head"]}, ["block", "inplace"], id="exclude"),
        pytest.param(
            {"include_root": True, "include": ["block", ROOT_NAME]},
            ["block", f"{ROOT_NAME}.0.0", f"{ROOT_NAME}.0.1.a", f"{ROOT_NAME}.1.0", f"{ROOT_NAME}.1.1.a"],
            id="root",
        ),
    ],
)
def test_include_exclude_and_root(options, names):
    model, x = tiny()
    assert record(model, x, **options).names() == names


def test_include_pattern_matching_nothing_is_an_error():
    model, _ = tiny()
    with pytest.raises(ValueError, match="include pattern 'haed' matches no module of Tiny"):
        DumpCollector(model, include=["haed"]).__enter__()


def test_unknown_mode_is_an_error():
    model, _ = tiny()
    with pytest.raises(ValueError, match="mode: expected one of full, stats; got 'all'"):
        DumpCollector(model, mode="all")


def test_hooks_are_removed_when_the_forward_raises_and_the_partial_dump_is_kept():
    model, x = tiny()

    def broken_forward(features: torch.Tensor) -> None:
        model.block(features)
        raise RuntimeError("device error")

    model.forward = broken_forward
    collector = DumpCollector(model)
    with pytest.raises(RuntimeError, match="device error"), collector, torch.no_grad():
        model(x)
    assert all(not module._forward_hooks for module in model.modules())
    assert collector.dump.names() == ["block.conv", "block"]


def test_no_dump_before_a_block_has_run():
    with pytest.raises(RuntimeError, match="no dump yet"):
        DumpCollector(tiny()[0]).dump


@pytest.mark.parametrize("mode", ["full", "stats"])
def test_save_and_load_round_trip_with_shared_files(tmp_path, mode):
    model, x = tiny()
    dump = record(model, x, mode=mode)
    index = dump.save(tmp_path)
    loaded = Dump.load(tmp_path)
    assert index == tmp_path / "index.json"
    assert [(e.name, e.dtype, e.shape, e.stats) for e in loaded] == [(e.name, e.dtype, e.shape, e.stats) for e in dump]
    files = sorted(p.name for p in tmp_path.glob("*.npy"))
    if mode == "stats":
        assert not files and all(e.data is None for e in loaded)
        return
    assert len(files) == len({id(e.data) for e in dump}) == len(dump) - 1  # block shares block.conv's copy
    by_name = loaded.by_name()
    assert by_name["block"].data is by_name["block.conv"].data
    assert all(torch.equal(a.data, b.data) for a, b in zip(dump, loaded))


def test_load_rejects_a_foreign_index(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="not a pytest-blendmask-dump index version 1"):
        Dump.load(tmp_path)


def test_blendmask_head_calls_are_named_per_fpn_level():
    model = build_model("lite")
    batch = torch.randn(1, 3, 128, 128)
    collector = DumpCollector(model)
    with collector, torch.inference_mode():
        raw = model.forward_raw(batch)
    entries = collector.dump.by_name()
    for level in range(5):
        for k, kind in enumerate(("logits", "bbox_reg", "ctrness")):
            assert torch.equal(entries[f"proposal_generator.fcos_head#{level}.{k}"].data, raw[f"{kind}_p{level + 3}"])
        assert torch.equal(entries[f"top_layer#{level}"].data, raw[f"top_feats_p{level + 3}"])
    assert torch.equal(entries["basis_module"].data, raw["bases"])
    assert "proposal_generator.fcos_head#5.0" not in entries and ROOT_NAME not in entries


@pytest.mark.parametrize("mode, task", [("full", "tensor"), ("stats", "statistics")])
def test_msprobe_export_layout(tmp_path, mode, task):
    model, x = tiny()
    dump = record(model, x, mode=mode)
    path = export_msprobe(dump, tmp_path)
    rank_dir = tmp_path / "step0" / "rank0"
    assert path == rank_dir / "dump.json"
    assert json.loads((rank_dir / "stack.json").read_text()) == {} == json.loads((rank_dir / "construct.json").read_text())
    document = json.loads(path.read_text())
    assert list(document) == ["task", "level", "framework", "dump_data_dir", "data"]
    assert (document["task"], document["level"], document["framework"]) == (task, "L0", "pytorch")
    assert list(document["data"]) == [
        "Module.block.conv.Conv2d.forward.0",
        "Module.block.PassThrough.forward.0",
        "Module.inplace.conv.Conv2d.forward.0",
        "Module.inplace.InPlaceAfterChild.forward.0",
        "Module.head.Head.forward.0",
        "Module.head.Head.forward.1",
    ]
    node = document["data"]["Module.head.Head.forward.1"]
    assert node["input_args"] == [] and node["input_kwargs"] == {} and len(node["output"]) == 2
    output = node["output"][1]
    entry = dump.by_name()["head#1.1.a"]
    assert {k: output[k] for k in ("type", "dtype", "shape", "requires_grad")} == {
        "type": "torch.Tensor", "dtype": "torch.float32", "shape": [1, 2, 4, 4], "requires_grad": False,
    }
    assert (output["Max"], output["Min"], output["Mean"], output["Norm"]) == (
        entry.stats.max, entry.stats.min, entry.stats.mean, entry.stats.norm,
    )
    if mode == "stats":
        assert document["dump_data_dir"] is None and "data_name" not in output
        return
    assert output["data_name"] == "Module.head.Head.forward.1.output.1.pt"
    saved = torch.load(f"{document['dump_data_dir']}/{output['data_name']}", weights_only=True)
    assert torch.equal(saved, entry.data)


def test_msprobe_export_saves_tensors_in_their_original_dtype(tmp_path):
    model, x = tiny()
    collector = DumpCollector(model, include=["block.conv"])
    with collector, torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        model(x)
    document = json.loads(export_msprobe(collector.dump, tmp_path).read_text())
    output = document["data"]["Module.block.conv.Conv2d.forward.0"]["output"][0]
    saved = torch.load(f"{document['dump_data_dir']}/{output['data_name']}", weights_only=True)
    assert output["dtype"] == "torch.float16" and saved.dtype == torch.float16
    assert torch.equal(saved.float(), collector.dump.entries[0].data)


@pytest.mark.parametrize(
    "target_id, folder",
    [("cpu", "cpu"), ("cpu:bf16", "cpu-bf16"), ("npu:0:fp16:force", "npu-0-fp16-force"), ("ort:int8", "ort-int8"),
     ("om", "om")],
)
def test_dump_folder_is_the_target_id_with_colons_as_dashes(target_id, folder):
    assert folder_name(target_id) == folder


def write(root, dump, target_id="cpu:bf16", run="run-1", **options):
    options = {"granularity": "module outputs", "reference_id": "cpu", "batch": {"images": 1}, **options}
    return write_target_dump(root, target_id, dump, run=run, **options)


def test_target_dump_is_msprobes_tree_plus_our_index_over_the_same_tensor_files(tmp_path):
    model, x = tiny()
    collector = DumpCollector(model)
    with collector, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    dump = collector.dump
    folder = write(tmp_path, dump)
    assert folder == tmp_path / "cpu-bf16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-bf16"]  # nothing left aside
    rank_dir = folder / "step0" / "rank0"
    assert {p.name for p in rank_dir.iterdir()} == {"dump.json", "stack.json", "construct.json", "dump_tensor_data"}
    document = json.loads((rank_dir / "dump.json").read_text())
    assert document["dump_data_dir"] == str((rank_dir / "dump_tensor_data").resolve())  # the final place
    index = json.loads((folder / "index.json").read_text())
    assert {k: index[k] for k in ("target", "granularity", "reference", "golden", "msprobe_dump", "run", "mode")} == {
        "target": "cpu:bf16", "granularity": "module outputs", "reference": "cpu",
        "golden": "cpu/step0/rank0/dump.json", "msprobe_dump": "cpu-bf16/step0/rank0/dump.json", "run": "run-1",
        "mode": "full",
    }
    # Each tensor once on disk: our index points at msprobe's .pt files.
    assert not list(folder.rglob("*.npy"))
    assert all(row["file"].startswith("step0/rank0/dump_tensor_data/") for row in index["entries"])
    loaded = Dump.load(folder)
    assert [(e.name, e.dtype, e.shape) for e in loaded] == [(e.name, e.dtype, e.shape) for e in dump]
    assert all(b.data.dtype == torch.float32 and torch.equal(a.data, b.data) for a, b in zip(dump, loaded))
    # msprobe gets a file per entry; read back, entries that held one tensor hold one again (compared once).
    assert loaded.by_name()["block"].data is loaded.by_name()["block.conv"].data


def test_compiled_target_index_says_graph_outputs_and_the_reference_keeps_its_own(tmp_path):
    outputs = {"bases": torch.randn(1, 4, 8, 8), "logits_p3": torch.randn(1, 3, 4, 4)}
    graph = dump_from_outputs(outputs)
    write(tmp_path, graph, "ort", granularity="graph outputs")
    model, x = tiny()
    write(tmp_path, record(model, x), "cpu", graph_outputs=graph)
    ort = json.loads((tmp_path / "ort" / "index.json").read_text())
    assert (ort["granularity"], ort["golden"]) == ("graph outputs", "cpu/graph_outputs/step0/rank0/dump.json")
    reference = json.loads((tmp_path / "cpu" / "index.json").read_text())
    assert (reference["granularity"], reference["golden"]) == ("module outputs", None)
    assert (tmp_path / ort["golden"]).is_file()
    assert Dump.load(tmp_path / "cpu" / "graph_outputs").names() == ["bases", "logits_p3"]


def test_stats_dump_holds_no_tensor_in_memory_or_on_disk(tmp_path):
    """What --bm-dump-mode stats keeps of a BlendMask forward: statistics only (the R_101 batch-8
    case was measured by hand, see the README section "Dumps and msprobe")."""
    model = build_model("lite").eval()
    collector = DumpCollector(model, mode="stats")
    with collector, torch.inference_mode():
        model.forward_raw(torch.randn(2, 3, 128, 128))
    dump = collector.dump
    assert len(dump) > 100 and all(entry.data is None for entry in dump)
    folder = write(tmp_path, dump)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == {"index.json", "step0/rank0/dump.json", "step0/rank0/stack.json", "step0/rank0/construct.json"}
    assert not (folder / "step0" / "rank0" / "dump_tensor_data").exists()
    assert json.loads((folder / "step0" / "rank0" / "dump.json").read_text())["task"] == "statistics"
    loaded = Dump.load(folder)
    assert loaded.mode == "stats" and all(entry.data is None for entry in loaded)
    assert [e.stats for e in loaded] == [e.stats for e in dump]


def test_without_data_keeps_the_statistics_of_a_full_dump():
    model, x = tiny()
    full = record(model, x)
    stats = full.without_data()
    assert stats.mode == "stats" and all(e.data is None for e in stats)
    assert [(e.name, e.stats) for e in stats] == [(e.name, e.stats) for e in full]


def test_a_folder_of_the_same_run_is_kept_and_one_of_an_earlier_run_replaced(tmp_path):
    model, x = tiny()
    first, second = record(model, x), record(model, x * 2)
    write(tmp_path, first, run="run-1")
    write(tmp_path, second, run="run-1")  # another xdist worker of the same session: first one kept
    assert torch.equal(Dump.load(tmp_path / "cpu-bf16").entries[0].data, first.entries[0].data)
    write(tmp_path, second, run="run-2")  # a later session replaces it
    assert torch.equal(Dump.load(tmp_path / "cpu-bf16").entries[0].data, second.entries[0].data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-bf16"]


def test_concurrent_writers_leave_one_complete_folder(tmp_path):
    model, x = tiny()
    dumps = [record(model, x * k) for k in range(1, 7)]
    # Half of the writers belong to an earlier run: they race to replace and to be kept.
    threads = [threading.Thread(target=write, args=(tmp_path, d), kwargs={"run": f"run-{k % 2}"})
               for k, d in enumerate(dumps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-bf16"]
    loaded = Dump.load(tmp_path / "cpu-bf16")
    assert any(all(torch.equal(a.data, b.data) for a, b in zip(d, loaded)) for d in dumps)
