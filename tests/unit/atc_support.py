"""Shared pieces of the atc unit tests: the lite model, its ONNX export, images and the error metric.

The export is cached in one directory per test session, so the modules that use
``lite_onnx`` export the model once between them.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pytest_blendmask.atc.export import ExportedModel, export_onnx
from pytest_blendmask.data import EVAL_SEED, generate_sample
from pytest_blendmask.model import build_model

IMAGE_HW = (128, 128)  # small: the unit tests run on a busy 2-core machine
FP32_REL_L2 = 1e-4  # fp32 vs fp32 through another runtime: only summation order differs


@pytest.fixture(scope="module")
def lite_model() -> nn.Module:
    """The lite BlendMask (frozen-BN backbone, GN head), seeded random init, eval."""
    return build_model("lite")


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the whole session, so that each configuration is exported once."""
    return tmp_path_factory.getbasetemp() / "onnx-cache"


@pytest.fixture(scope="module")
def lite_onnx(lite_model: nn.Module, onnx_cache: Path) -> ExportedModel:
    """The lite model exported at opset 11, static batch 1, for IMAGE_HW."""
    return export_onnx(lite_model, IMAGE_HW, opset=11, cache_dir=onnx_cache)


def bgr_images(count: int, hw: tuple[int, int] = IMAGE_HW, seed: int = EVAL_SEED) -> list[np.ndarray]:
    """Synthetic uint8 [H, W, 3] BGR images."""
    return [generate_sample(seed, index, *hw).image for index in range(count)]


def to_chw(image: np.ndarray) -> Tensor:
    """uint8 [H, W, 3] -> uint8 [3, H, W], what ``BlendMask.preprocess`` takes."""
    return torch.from_numpy(image).permute(2, 0, 1)


def reference_raw(model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
    """PyTorch fp32 ``forward_raw`` of a preprocessed batch."""
    with torch.no_grad():
        return model.forward_raw(batch)


def relative_l2(got: Tensor, ref: Tensor) -> float:
    """||got - ref||_2 / ||ref||_2 over all elements, in float64."""
    got64, ref64 = got.double(), ref.double()
    return float(torch.linalg.vector_norm(got64 - ref64) / torch.linalg.vector_norm(ref64))


def relative_l2_per_output(got: Mapping[str, Tensor], ref: Mapping[str, Tensor]) -> dict[str, float]:
    """``relative_l2`` of each output; the names must match exactly."""
    assert list(got) == list(ref), f"output names differ: {list(got)} vs {list(ref)}"
    return {name: relative_l2(got[name], ref[name]) for name in ref}
