"""The AdelaiDet golden case: its arrays, and its weights rebuilt from key names.

The weights follow the rules published with the golden file (shared/golden/README.md):
each tensor draws from numpy's PCG64 seeded with (seed, crc32(key)); conv kernels are He
normal, conv biases N(0, 0.01) except the constant cls (-1.5) and box (2.0) prediction
biases, norm weights U(0.8, 1.2) (U(0.1, 0.3) for the norm closing a residual branch), norm
biases N(0, 0.05), running means N(0, 0.05), running variances U(0.8, 1.2).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GOLDEN_FILE = Path(__file__).with_name("adelaidet_blendmask_R_50_1x_seed2026_256x320.npz")
CLS_PRIOR_BIAS = -1.5
BOX_PRIOR_BIAS = 2.0


def _golden_tensor(key: str, shape: tuple[int, ...], is_conv_bias: bool, seed: int) -> np.ndarray:
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key.endswith("running_mean"):
        values = rng.normal(0.0, 0.05, shape)
    elif key.endswith("running_var"):
        values = rng.uniform(0.8, 1.2, shape)
    elif len(shape) == 4:
        values = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    elif is_conv_bias and key.endswith("cls_logits.bias"):
        values = np.full(shape, CLS_PRIOR_BIAS)
    elif is_conv_bias and key.endswith("bbox_pred.bias"):
        values = np.full(shape, BOX_PRIOR_BIAS)
    elif is_conv_bias:
        values = rng.normal(0.0, 0.01, shape)
    elif key.endswith("conv3.norm.weight"):
        values = rng.uniform(0.1, 0.3, shape)
    elif key.endswith(".weight"):
        values = rng.uniform(0.8, 1.2, shape)
    else:
        values = rng.normal(0.0, 0.05, shape)
    return values.astype(np.float32)


def golden_state_dict(keys_and_shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """Weights for any key layout by the golden rule: the same key and seed give the same tensor."""
    ndim = dict((k, len(s)) for k, s in keys_and_shapes)
    return {
        key: torch.from_numpy(
            _golden_tensor(key, shape, key.endswith(".bias") and ndim.get(key[: -len("bias")] + "weight") == 4, seed)
        )
        for key, shape in keys_and_shapes
    }


@dataclass(frozen=True)
class GoldenCase:
    arrays: np.lib.npyio.NpzFile
    meta: dict

    @property
    def image(self) -> torch.Tensor:
        """The input as a BGR uint8 [3, H, W] tensor."""
        return torch.from_numpy(self.arrays["input_bgr_uint8"]).permute(2, 0, 1).contiguous()

    def keys_and_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(str(k), tuple(json.loads(str(s)))) for k, s in zip(self.arrays["weights/keys"], self.arrays["weights/shapes"])]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The official-layout checkpoint the reference ran with (379 keys for R_50)."""
        return golden_state_dict(self.keys_and_shapes(), self.meta["seed"])

    def masks(self) -> torch.Tensor:
        unpacked = np.unpackbits(self.arrays["det/masks_packed"], axis=-1, count=self.meta["width"])
        return torch.from_numpy(unpacked.astype(bool))


def load_golden() -> GoldenCase:
    arrays = np.load(GOLDEN_FILE)
    return GoldenCase(arrays, json.loads(str(arrays["meta_json"])))
