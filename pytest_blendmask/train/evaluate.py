"""Progress and final COCO AP of a model being trained, through ``evaluation.evaluate``."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from torch import nn

from ..evaluation import evaluate


def coco_ap(
    model: nn.Module, limit: int | None = None, device: str = "cpu", split_path: Path | None = None
) -> dict[str, float]:
    """Box and mask AP / AP50 / AP75 (x100) and the image count, on the first ``limit`` eval images.

    The model may be in train mode and on any device: an eval-mode CPU copy is evaluated
    (pre- and post-processing run on the host), its raw network on ``device``, over
    ``split_path`` (the cached evaluation split when None).
    """
    target = device if device == "cpu" or ":" in device else f"{device}:0"  # targets name the device index
    host_model = copy.deepcopy(model).cpu().eval()
    result = dataclasses.asdict(evaluate(host_model, target, split_path, limit=limit))
    return {key: value for key, value in result.items() if key not in ("target", "seconds")}
