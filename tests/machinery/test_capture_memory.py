"""What a capture adds to a forward's peak memory (issue 14): R_101 at 640x640, batch 8.

Each forward runs in a fresh process, whose peak resident set (``ru_maxrss``) is the
measure: the plain forward, a ``stats`` capture (budget 1.2x the plain forward's peak) and a
``full`` capture spilled to disk as ``--bm-dump-dir`` does it (``DumpCollector(spill_dir=)``).
The spilled capture's bound is the stats capture's peak plus the largest single output's
float32 copy, which the collector holds while writing it; the test holds it to that. (The
hooks themselves, stats or not, cost about 100 MiB of peak on R_50 at batch 2: the forward
under ``no_grad`` instead of ``inference_mode``, and the allocator's interleaving.)
Kept in memory instead, the same full dump would be every output at once (reported for
scale from the sum of the dump's tensor sizes, not run).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MODEL, SIZE, BATCH = "R_101", 640, 8
STATS_BUDGET_RATIO = 1.2
REPO = Path(__file__).resolve().parents[2]

CAPTURE = r"""
import json, math, resource, sys
from pathlib import Path
import torch
from pytest_blendmask.model import build_model
from pytest_blendmask.precision.dump import DumpCollector
mode, model_name, size, batch, spill = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
model = build_model(model_name).eval()
x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "plain":
    with torch.inference_mode():
        model.forward_raw(x)
    largest = held = distinct = 0
else:
    collector = DumpCollector(model, mode=mode, spill_dir=Path(spill) if mode == "full" else None)
    with collector, torch.no_grad():
        model.forward_raw(x)
    sizes = {id(e.data): 4 * math.prod(e.shape) for e in collector.dump} if mode == "full" else {0: 0}
    largest, held, distinct = max(sizes.values()), sum(sizes.values()), len(sizes)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "model_kib": before,
                  "largest_output_bytes": largest, "all_outputs_bytes": held, "distinct_outputs": distinct}))
"""


def peak(mode: str, spill: Path) -> dict:
    command = [sys.executable, "-c", CAPTURE, mode, MODEL, str(SIZE), str(BATCH), str(spill)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{mode} capture exited {result.returncode}:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_capture_peak_memory_of_r101_batch8(benchmark, tmp_path):
    measured: dict[str, dict] = {}

    def run_all() -> None:
        for mode in ("plain", "stats", "full"):
            measured[mode] = peak(mode, tmp_path / "spill")

    benchmark.pedantic(run_all, rounds=1, warmup_rounds=0)
    plain, stats, full = (measured[mode]["peak_kib"] * 1024 for mode in ("plain", "stats", "full"))
    largest, held = measured["full"]["largest_output_bytes"], measured["full"]["all_outputs_bytes"]
    spilled = list((tmp_path / "spill").glob("*.npy"))
    benchmark.extra_info.update(
        model=MODEL, input_size=SIZE, batch=BATCH, plain_peak_bytes=plain, stats_peak_bytes=stats,
        full_spilled_peak_bytes=full, stats_ratio=stats / plain, full_spilled_ratio=full / plain,
        largest_output_bytes=largest, full_dump_bytes_if_held=held, spilled_files=len(spilled),
        budget_stats_ratio=STATS_BUDGET_RATIO,
    )
    assert stats <= STATS_BUDGET_RATIO * plain, f"stats capture peak {stats / 2**30:.2f} GiB, {stats / plain:.2f}x the plain forward's {plain / 2**30:.2f} GiB; budget {STATS_BUDGET_RATIO}x"
    assert len(spilled) == measured["full"]["distinct_outputs"] and sum(p.stat().st_size for p in spilled) >= held
    assert full <= stats + largest, (
        f"spilled full capture peak {full / 2**30:.2f} GiB exceeds the stats capture's {stats / 2**30:.2f} GiB plus the "
        f"largest output's copy ({largest / 2**30:.2f} GiB); held in memory the dump would be {held / 2**30:.2f} GiB"
    )
