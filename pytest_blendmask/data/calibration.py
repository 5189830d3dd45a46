"""The images int8 targets (``atc/ort.py``) and their noise floor (``noise_floor.py``) calibrate on.

One ``CalibrationSet`` is threaded through both (``targets.LoadContext.calibration``), so that
the floor is measured on exactly the images the int8 graph was quantised with: the synthetic
training stream by default, the first images of ``--bm-dataset`` when one is given
(``data/dataset.py``). Its ``name`` is part of the cached int8 model's file name, so a new
calibration set never reuses a model quantised on another.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .synthetic import TRAIN_SEED, generate_sample

if TYPE_CHECKING:
    from torch import Tensor

SYNTHETIC_CALIBRATION_IMAGES = 8


@dataclass(frozen=True)
class CalibrationSet:
    """A named set of calibration images; ``images(input_hw)`` gives them as BGR uint8 ``[3, H, W]`` at the input size."""

    name: str  # in the cached int8 model's file name: it changes when the images do
    load: Callable[[tuple[int, int]], list[Tensor]]

    def images(self, input_hw: tuple[int, int]) -> list[Tensor]:
        return self.load(input_hw)


def synthetic_calibration(count: int = SYNTHETIC_CALIBRATION_IMAGES, seed: int = TRAIN_SEED) -> CalibrationSet:
    """``count`` synthetic images of the training stream (``seed``): never the evaluation images."""

    def load(input_hw: tuple[int, int]) -> list[Tensor]:
        import torch

        return [torch.from_numpy(generate_sample(seed, index, *input_hw).image).permute(2, 0, 1) for index in range(count)]

    return CalibrationSet(f"n{count}-s{seed}", load)
