"""Forward time of each model config on the CPU, fp32, batch 1 (issue 2: lite at 512x512 in at most 0.25 s
on the 2-core development machine).

A benchmark, not a timed assertion: the budget goes into extra_info next to the measurement,
and pytest-benchmark's --benchmark-compare-fail guards regressions against a saved run.
"""
from __future__ import annotations

import pytest
import torch

from pytest_blendmask.model import build_model

LITE_BUDGET_S = 0.25

CONFIGS = [
    ("lite", 512),
    pytest.param("R_50", 640, marks=pytest.mark.slow),
    pytest.param("R_101", 640, marks=pytest.mark.slow),
    pytest.param("R_101_dcni3", 640, marks=pytest.mark.slow),
]


@pytest.mark.perf
@pytest.mark.parametrize("name, size", CONFIGS)
def test_cpu_fp32_forward_time(benchmark, name, size):
    model = build_model(name)
    batch = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    benchmark.extra_info.update(
        model=name, input_size=size, threads=torch.get_num_threads(), budget_s=LITE_BUDGET_S if name == "lite" else None
    )
    with torch.inference_mode():
        raw = benchmark.pedantic(model.forward_raw, args=(batch,), rounds=3 if name != "lite" else 5, warmup_rounds=1)
    assert raw["bases"].shape == (1, model.cfg.num_bases, size // 4, size // 4)
    assert all(torch.isfinite(t).all() for t in raw.values())
