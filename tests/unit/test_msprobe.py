"""The dumps an acceptance run leaves in --bm-dump-dir, read by the real ``msprobe compare``.

One small real suite run (lite, 128x128, cpu:bf16 and ort against cpu) writes the dumps;
msprobe (the optional ``msprobe`` extra, PyPI ``mindstudio-probe``) then compares each
target with the reference, and its Cosine and MaxAbsErr columns must be the values our
comparison computes, to 1e-6. 40 to 60 s on 2 busy CPU cores (the suite run is most of it).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_blendmask.precision.compare import compare
from pytest_blendmask.precision.dump import Dump
from pytest_blendmask.precision.dump_dir import folder_name, write_target_dump
from pytest_blendmask.precision.msprobe import output_names
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.targets import parse_target
from .msprobe_support import run_msprobe_compare

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("cpu:bf16", "ort")  # an eager target (module outputs) and a compiled one (graph outputs)
REFERENCE = "cpu"
TOLERANCE = 1e-6  # msprobe prints Cosine to 6 decimals, MaxAbsErr to 12


@pytest.fixture(scope="module")
def suite_dumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """--bm-dump-dir of a real tensor-level run: the dumps of cpu:bf16, ort and the reference."""
    root = tmp_path_factory.mktemp("suite")
    targets = [arg for target in TARGETS for arg in ("--bm-target", target)]
    command = [
        sys.executable, "-m", "pytest", str(REPO / "tests" / "precision" / "test_tensors.py"), "-m", "precision",
        "--bm-model", "lite", "--bm-input-size", "128", *targets, "--bm-reference", REFERENCE,
        "--bm-dump-dir", str(root / "dumps"), "--bm-report-dir", str(root / "reports"),
        "-p", "no:cacheprovider", "-q",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return root / "dumps"


def test_a_suite_run_leaves_every_targets_dump_in_msprobes_layout(suite_dumps: Path) -> None:
    assert sorted(p.name for p in suite_dumps.iterdir()) == sorted(map(folder_name, (REFERENCE, *TARGETS)))
    for target_id, granularity in [(REFERENCE, "module outputs"), ("cpu:bf16", "module outputs"), ("ort", "graph outputs")]:
        folder = suite_dumps / folder_name(target_id)
        index = json.loads((folder / "index.json").read_text())
        assert (index["target"], index["granularity"], index["mode"]) == (target_id, granularity, "full")
        assert index["batch"] == {"name": "sample_batch", "images": 2, "shape": [2, 3, 128, 128]}
        assert (suite_dumps / index["msprobe_dump"]).is_file()
        assert index["golden"] is None or (suite_dumps / index["golden"]).is_file()
        # msprobe wants a file per entry (it leaves out entries naming another's file); our index
        # says which entries hold one tensor, so that reading the dump back compares it once.
        assert len(list((folder / "step0" / "rank0" / "dump_tensor_data").glob("*.pt"))) == len(index["entries"])
        distinct = {entry["tensor"] for entry in index["entries"]}
        assert len(distinct) < len(index["entries"]) if granularity == "module outputs" else len(distinct) == len(index["entries"])


def msprobe_compare(target: Path, golden: Path, out: Path) -> dict[str, dict[str, str]]:
    """The README's ``msprobe compare -tp <target dump.json> -gp <golden dump.json> -o out``: the rows
    of its compare_result_<time>.csv, by NPU Name; skips where mindstudio-probe is not installed."""
    with run_msprobe_compare(target, golden, out).open(newline="", encoding="utf-8") as handle:
        return {row["NPU Name"]: row for row in csv.DictReader(handle)}


def dumps_of(suite_dumps: Path, target_id: str) -> tuple[dict, Dump, Dump]:
    """(the target's index, its dump, the reference dump it is compared with), read back from disk."""
    folder = suite_dumps / folder_name(target_id)
    index = json.loads((folder / "index.json").read_text())
    return index, Dump.load(folder), Dump.load((suite_dumps / index["golden"]).parents[2])  # <folder>/step0/rank0/dump.json


def matched_rows(rows: dict[str, dict[str, str]], dut: Dump) -> list[dict[str, str]]:
    """The rows msprobe found a reference output for, after checking there are at least as many as our entries."""
    matched = [row for row in rows.values() if row["Bench Name"] not in ("", "N/A")]
    assert len(matched) >= len(dut)
    return matched


@pytest.mark.parametrize("target_id", TARGETS)
def test_msprobe_compare_reports_our_cosine_and_max_abs_error(suite_dumps: Path, target_id: str, tmp_path: Path) -> None:
    index, dut, reference = dumps_of(suite_dumps, target_id)
    rows = msprobe_compare(suite_dumps / index["msprobe_dump"], suite_dumps / index["golden"], tmp_path / "out")
    matched_rows(rows, dut)
    ours = compare(reference, dut, load_thresholds().tensor[parse_target(target_id).precision])
    layers = {layer.name: layer for layer in ours.layers}
    for entry, name in zip(dut, output_names(dut)):
        row, metrics = rows[name], layers[entry.name].metrics
        assert row["Bench Name"] == name
        assert float(row["Cosine"]) == pytest.approx(metrics.cosine_similarity, abs=TOLERANCE), name
        assert float(row["MaxAbsErr"]) == pytest.approx(metrics.max_abs_error, abs=TOLERANCE), name


def test_msprobe_compare_reads_stats_dumps(suite_dumps: Path, tmp_path: Path) -> None:
    """--bm-dump-mode stats's dumps (the suite's, without their tensors): msprobe compares the statistics."""
    index, dut, reference = dumps_of(suite_dumps, TARGETS[0])
    stats_dir = tmp_path / "stats"
    for target_id, dump in [(TARGETS[0], dut), (REFERENCE, reference)]:
        write_target_dump(stats_dir, target_id, dump.without_data(), run="stats", granularity="module outputs",
                          reference_id=REFERENCE, batch=index["batch"])
    assert not list(stats_dir.rglob("*.pt"))
    rows = msprobe_compare(stats_dir / index["msprobe_dump"], stats_dir / index["golden"], tmp_path / "out")
    matched_rows(rows, dut)
    ref_stats = {entry.name: entry.stats for entry in reference}
    for entry, name in zip(dut, output_names(dut)):
        expected = entry.stats.max - ref_stats[entry.name].max
        assert float(rows[name]["Max diff"]) == pytest.approx(expected, rel=TOLERANCE, abs=TOLERANCE), name
