"""What a perf test times: the model-only and the end-to-end call of one configuration.

* **model-only** is ``forward_raw`` (or ``forward_with_streams``) on a batch already on the
  device, in the configuration's dtype: ais_bench's compute time, which the throughput
  floors are about.
* **end-to-end** starts from JPEG bytes on the host and ends with detections on the host:
  the tensor preprocessing path into a reused device buffer, the forward, ``postprocess``
  on the device, and the copy of the detections back.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pytest_blendmask.data import generate_sample
from pytest_blendmask.data.preprocess import encode_bgr_jpeg, tensor_preprocess
from pytest_blendmask.dtypes import Dtype, autocast

# A seed of its own, so that perf images are not the evaluation or training images.
PERF_IMAGE_SEED = 5


@functools.lru_cache(maxsize=16)
def synthetic_jpegs(count: int, size: tuple[int, int], seed: int = PERF_IMAGE_SEED) -> tuple[bytes, ...]:
    """``count`` distinct synthetic BGR images of ``size`` (H, W) as JPEG bytes, cached per process."""
    height, width = size
    return tuple(encode_bgr_jpeg(generate_sample(seed, index, height, width).image) for index in range(count))


@dataclass(frozen=True)
class Workload:
    """The two timed callables of one configuration."""

    model_only: Callable[[], dict[str, Tensor]]
    end_to_end: Callable[[], list[dict[str, Tensor]]]


def build_workload(
    model: Any, encoded: tuple[bytes, ...], size: tuple[int, int], device: torch.device, dtype: Dtype, streams: bool
) -> Workload:
    """Callables over ``model`` (already on ``device``, in eval mode) and the images ``encoded``.

    Args:
        model: a BlendMask (``forward_raw``, ``forward_with_streams``, ``postprocess``, ``cfg``).
        encoded: JPEG bytes of one batch.
        size: (H, W) of the network input.
        device: where the model runs.
        dtype: fp32, or fp16/bf16 run under autocast.
        streams: time ``forward_with_streams`` (cuda/npu) instead of ``forward_raw``.
    """
    mean, std = model.cfg.pixel_mean, model.cfg.pixel_std
    forward = model.forward_with_streams if streams else model.forward_raw
    batch = tensor_preprocess(encoded, size, mean, std, device).tensor
    staging = torch.empty_like(batch)  # the end-to-end loop's reused input buffer

    def model_only() -> dict[str, Tensor]:
        with torch.inference_mode(), autocast(device.type, dtype):
            return forward(batch)

    def end_to_end() -> list[dict[str, Tensor]]:
        pre = tensor_preprocess(encoded, size, mean, std, device, out=staging)
        with torch.inference_mode():
            with autocast(device.type, dtype):
                raw = forward(pre.tensor)
            detections = model.postprocess(raw, pre.image_sizes, pre.original_sizes)
        return [{key: value.cpu() for key, value in image.items()} for image in detections]

    return Workload(model_only, end_to_end)
