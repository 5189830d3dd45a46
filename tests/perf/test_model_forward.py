"""Forward time of each model config on the reference CPU (issue 2's budget: lite 512x512 <= 0.25 s)."""
from __future__ import annotations

import pytest
import torch

from pytest_blendmask.model import build_model

FORWARD_BUDGET_S = {"lite": 0.25}


@pytest.mark.perf
@pytest.mark.parametrize("name, size", [("lite", 512), pytest.param("R_50", 640, marks=pytest.mark.slow)])
def test_cpu_fp32_forward_time(benchmark, name, size):
    model = build_model(name)
    batch = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    benchmark.extra_info.update(model=name, input_size=size, threads=torch.get_num_threads(), budget_s=FORWARD_BUDGET_S.get(name))
    with torch.no_grad():
        raw = benchmark.pedantic(model.forward_raw, args=(batch,), rounds=5, warmup_rounds=1)
    assert raw["bases"].shape == (1, model.cfg.num_bases, size // 4, size // 4)
