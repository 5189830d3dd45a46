"""The dumps an acceptance run leaves in --bm-dump-dir, read by the real ``msprobe compare``.

One small real suite run (lite, 128x128, cpu:bf16 and ort against cpu) writes the dumps;
msprobe (the optional ``msprobe`` extra, PyPI ``mindstudio-probe``) then compares each
target with the reference, and its Cosine and MaxAbsErr columns must be the values our
comparison computes, to 1e-6. About 30 s on 2 CPU cores.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_blendmask.precision.compare import compare
from pytest_blendmask.precision.dump import Dump
from pytest_blendmask.precision.dump_dir import folder_name
from pytest_blendmask.precision.msprobe import output_names
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.targets import parse_target

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("cpu:bf16", "ort")  # an eager target (module outputs) and a compiled one (graph outputs)
REFERENCE = "cpu"
TOLERANCE = 1e-6  # msprobe prints Cosine to 6 decimals, MaxAbsErr to 12


def msprobe_command() -> str | None:
    """The ``msprobe`` of this interpreter's environment (CI runs the venv's pytest without
    activating it), else the one on PATH."""
    beside = Path(sys.executable).with_name("msprobe")
    return str(beside) if beside.is_file() else shutil.which("msprobe")


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
        assert len(list((folder / "step0" / "rank0" / "dump_tensor_data").glob("*.pt"))) == len(index["entries"])


def read_msprobe_csv(out: Path) -> dict[str, dict[str, str]]:
    """The rows of msprobe's compare_result_<time>.csv, by NPU Name."""
    (path,) = out.glob("compare_result_*.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["NPU Name"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("target_id", TARGETS)
def test_msprobe_compare_reports_our_cosine_and_max_abs_error(suite_dumps: Path, target_id: str, tmp_path: Path) -> None:
    msprobe = msprobe_command()
    if msprobe is None:
        pytest.skip(f"mindstudio-probe not installed (no msprobe beside {sys.executable} or on PATH): "
                    "pip install -c constraints.txt -e '.[dev,msprobe]'")
    folder = suite_dumps / folder_name(target_id)
    index = json.loads((folder / "index.json").read_text())
    # The README's command: msprobe compare -tp D/<dut>/step0/rank0/dump.json -gp D/cpu/step0/rank0/dump.json -o out
    command = [msprobe, "compare", "-tp", str(suite_dumps / index["msprobe_dump"]),
               "-gp", str(suite_dumps / index["golden"]), "-o", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    rows = read_msprobe_csv(tmp_path / "out")

    dut = Dump.load(folder)
    reference = Dump.load((suite_dumps / index["golden"]).parents[2])  # <folder>/step0/rank0/dump.json
    ours = compare(reference, dut, load_thresholds().tensor[parse_target(target_id).precision])
    layers = {layer.name: layer for layer in ours.layers}
    matched = [row for row in rows.values() if row["Bench Name"] not in ("", "N/A")]
    assert len(matched) >= len(dut)
    for entry, name in zip(dut, output_names(dut)):
        row, metrics = rows[name], layers[entry.name].metrics
        assert row["Bench Name"] == name
        assert float(row["Cosine"]) == pytest.approx(metrics.cosine_similarity, abs=TOLERANCE), name
        assert float(row["MaxAbsErr"]) == pytest.approx(metrics.max_abs_error, abs=TOLERANCE), name
