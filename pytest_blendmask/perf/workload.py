"""What a perf test times: a model whose weights detect, and its model-only and end-to-end calls.

* **the model** is the session's, with its weights (the shipped lite weights, or
  --bm-weights), in the norm layout of the grid point: as trained, or with its norm layers
  refitted to the trained ones on a few training images (``model.renorm``), so that
  end-to-end times include NMS, the blender and the paste over real detections;
* **model-only** is ``forward_raw`` (or ``forward_with_streams``) on a batch already on the
  device, in the configuration's dtype: ais_bench's compute time, which the throughput
  floors are about.
* **end-to-end** starts from JPEG bytes on the host and ends with detections on the host:
  the tensor preprocessing path into a reused device buffer, the forward, ``postprocess``
  on the device, and the copy of the detections back.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pytest_blendmask.data import TRAIN_SEED, generate_sample
from pytest_blendmask.data.preprocess import encode_bgr_jpeg, tensor_preprocess
from pytest_blendmask.dtypes import Dtype, autocast
from pytest_blendmask.model.renorm import with_norm

# A seed of its own, so that perf images are not the evaluation or training images.
PERF_IMAGE_SEED = 5
# Training images a norm refit is fitted on. With 4 the lite weights' all-BN refit kept box AP
# (49.2 against 49.0 as trained, first 20 evaluation images) and the all-GN one lost 1.2 points.
CALIBRATION_IMAGES = 4


@dataclass(frozen=True)
class TimedModel:
    """A model to time, and what its parameters are (for ``extra_info``)."""

    model: Any  # a BlendMask in eval mode
    weights: str  # the weight file, or the random init
    norm_layers: str  # as trained, or how they were refitted

    def on(self, device: torch.device) -> TimedModel:
        """A fresh copy on ``device``, so that its first call is the first anything makes of it (``timing.measure``)."""
        return dataclasses.replace(self, model=copy.deepcopy(self.model).to(device))


def calibration_batch(model: Any, count: int = CALIBRATION_IMAGES) -> Tensor:
    """``count`` training images at the config's input size, preprocessed by ``model``: what a norm refit fits on."""
    size = model.cfg.input_size
    images = [torch.from_numpy(generate_sample(TRAIN_SEED, i, size, size).image).permute(2, 0, 1) for i in range(count)]
    return model.preprocess(images)[0]


def timed_model(model: Any, norm: str, weights: str) -> TimedModel:
    """``model`` (a BlendMask with its weights, on the CPU) in the ``norm`` layout.

    ``weights`` says what ``model``'s weights are. In the trained layout this is ``model``
    itself (``TimedModel.on`` copies it); in another, a new model whose norm layers are
    refitted to the trained ones (``model.renorm.with_norm``).
    """
    trained = model.cfg.norm
    if norm == trained:
        return TimedModel(model, weights, f"as trained ({trained})")
    refit = with_norm(model, norm, calibration_batch(model))
    how = f"refitted to the trained {trained} layers on {CALIBRATION_IMAGES} training images (model/renorm.py)"
    return TimedModel(refit, weights, how)


def detections_per_image(detections: Sequence[dict[str, Tensor]]) -> list[int]:
    """How many detections each image of an end-to-end call's output has."""
    return [len(image["scores"]) for image in detections]


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
