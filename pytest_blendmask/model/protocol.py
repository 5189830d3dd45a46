"""What the gate calls on a model: the protocol a user's ``--bm-model module:factory`` meets.

README section "Your own model" is the user-facing copy of this page. Two levels:

``GatedModel`` (the tensor and ATC levels)
    ``preprocess(images) -> (batch, image_sizes)``: ``images`` is a list of BGR uint8
    ``Tensor[3, H_i, W_i]``; ``batch`` the float ``Tensor[N, 3, H, W]`` the device part takes.
    ``forward_raw(batch) -> dict[str, Tensor]``: the device part, the one that is dumped,
    exported to ONNX and compiled; every value a tensor with the batch on dim 0.
``DetectionModel`` (adds the detection and AP levels)
    ``postprocess(raw, image_sizes, output_sizes=None) -> list[dict]``: one dict per image,
    ``boxes`` float ``[M, 4]`` xyxy pixels, ``scores`` ``[M]``, ``classes`` int64 ``[M]``
    (0-based), ``masks`` bool ``[M, H, W]`` (box-only detectors: ``has_masks = False``), and
    ``class_names``, one name per class id.

``as_gated_model`` takes what a factory returned: a model that has these methods is used
as is; any other ``nn.Module`` that maps a batch to tensors gets the tensor and ATC levels
through ``TensorModel``; a torchvision detector must come through
``pytest_blendmask.model.torchvision_detector.TorchvisionDetector``. Anything else is a
``ModelProtocolError`` naming what is missing, which the plugin turns into a usage error at
session start.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

README_SECTION = 'README section "Your own model"'


class ModelProtocolError(TypeError):
    """A factory's model that the gate cannot call; the message names what is missing."""


@runtime_checkable
class GatedModel(Protocol):
    """The tensor and ATC levels' view of a model (see the module docstring for shapes)."""

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]: ...

    def forward_raw(self, images: Tensor) -> dict[str, Tensor]: ...


@runtime_checkable
class DetectionModel(GatedModel, Protocol):
    """The detection and AP levels' view: a ``GatedModel`` that also post-processes."""

    class_names: Sequence[str]

    def postprocess(
        self, raw: dict[str, Tensor], image_sizes: list[tuple[int, int]], output_sizes: list[tuple[int, int]] | None = None
    ) -> list[dict[str, Tensor]]: ...


def is_detector(model: Any) -> bool:
    """Whether ``model`` has what the detection and AP levels call."""
    return isinstance(model, DetectionModel)


def missing_for_detection(model: Any) -> str | None:
    """None for a detector, else the skip reason of the detection and AP levels."""
    if is_detector(model):
        return None
    absent = [name for name in ("postprocess", "class_names") if not hasattr(model, name)]
    return (f"{_name_of(model)} has no {' and no '.join(absent)}: the detection and AP levels need a "
            f"DetectionModel ({README_SECTION})")


def _name_of(model: Any) -> str:
    """The user's class name, also through the ``TensorModel`` wrapper."""
    if isinstance(model, TensorModel):
        return f"{type(model.module).__name__} (as a TensorModel)"
    return type(model).__name__


class TensorModel(nn.Module):
    """Any ``nn.Module`` mapping a float batch to a tensor, a tuple of tensors or a dict of them, as a ``GatedModel``.

    Its preprocessing scales BGR uint8 images to RGB in [0, 1] and stacks them (all images
    of a batch the same size), which is what torchvision's classifiers take before their
    own normalisation; pass ``preprocess`` for anything else.
    """

    def __init__(self, module: nn.Module, preprocess: Any = None) -> None:
        super().__init__()
        self.module = module
        self._preprocess = preprocess

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        if self._preprocess is not None:
            return self._preprocess(images)
        import torch

        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        if len(set(sizes)) > 1:
            raise ValueError(f"TensorModel.preprocess stacks images of one size; got {sizes}")
        return torch.stack([im.flip(0).float() / 255 for im in images]), sizes

    def forward_raw(self, images: Tensor) -> dict[str, Tensor]:
        return _named_outputs(self.module(images), type(self.module).__name__)


def _named_outputs(out: Any, owner: str) -> dict[str, Tensor]:
    """A module's output as the dict ``forward_raw`` returns: ``output``, ``output_<i>`` or the dict's own keys."""
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, dict) and all(isinstance(v, Tensor) for v in out.values()):
        return {str(k): v for k, v in out.items()}
    if isinstance(out, (tuple, list)) and all(isinstance(v, Tensor) for v in out):
        return {f"output_{i}": v for i, v in enumerate(out)}
    raise ModelProtocolError(
        f"{owner}(batch) returned {type(out).__name__}, not a tensor, a tuple of tensors or a dict of tensors; "
        f"give the model forward_raw(batch) -> dict[str, Tensor] ({README_SECTION})"
    )


def _looks_like_torchvision_detector(model: nn.Module) -> bool:
    # torchvision's detectors take a list of images and return a list of dicts: they carry a
    # GeneralizedRCNNTransform and decode inside forward.
    return hasattr(model, "transform") and (hasattr(model, "roi_heads") or hasattr(model, "postprocess_detections"))


def as_gated_model(made: Any, factory: str) -> nn.Module:
    """What ``factory`` returned, as a model the gate can call; ModelProtocolError says why not."""
    if isinstance(made, GatedModel):
        if not isinstance(made, nn.Module):
            raise ModelProtocolError(f"{factory} returned a {type(made).__name__}, not a torch.nn.Module ({README_SECTION})")
        return made
    if not isinstance(made, nn.Module):
        raise ModelProtocolError(
            f"{factory} returned a {type(made).__name__}; expected a torch.nn.Module (any module mapping a "
            f"batch to tensors) or a model with preprocess and forward_raw ({README_SECTION})"
        )
    if _looks_like_torchvision_detector(made):
        advice = (
            "wrap it: pytest_blendmask.model.torchvision_detector.TorchvisionDetector(model)" if hasattr(made, "roi_heads")
            and made.roi_heads.has_mask()
            else "give it preprocess, forward_raw (the network up to the heads) and postprocess"
        )
        raise ModelProtocolError(
            f"{factory} returned torchvision's {type(made).__name__}, whose forward takes a list of images and "
            f"decodes inside: it has no forward_raw; {advice} ({README_SECTION})"
        )
    present = [name for name in ("preprocess", "forward_raw") if hasattr(made, name)]
    if present:
        # Half the protocol: a model that means to implement it but lacks a method.
        absent = [name for name in ("preprocess", "forward_raw") if not hasattr(made, name)]
        raise ModelProtocolError(f"{factory} returned {type(made).__name__} with {present[0]} but no {absent[0]} ({README_SECTION})")
    return TensorModel(made)


def probe(model: nn.Module, input_hw: tuple[int, int], name: str) -> None:
    """Run ``forward_raw`` once on a zero batch at ``input_hw``; ModelProtocolError when what it returns is unusable."""
    import torch

    with torch.no_grad():
        try:
            raw = model.forward_raw(torch.zeros(1, 3, *input_hw))
        except ModelProtocolError:
            raise
        except Exception as exc:  # a user's model can fail in any way; the message is what helps
            raise ModelProtocolError(
                f"{name}: forward_raw on a [1, 3, {input_hw[0]}, {input_hw[1]}] batch raised {type(exc).__name__}: {exc} "
                f"(check --bm-input-size; {README_SECTION})"
            ) from None
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in raw.items()):
        raise ModelProtocolError(f"{name}: forward_raw returned {type(raw).__name__}, not a dict of named tensors ({README_SECTION})")
    unbatched = [k for k, v in raw.items() if v.dim() == 0 or v.shape[0] != 1]
    if unbatched:
        raise ModelProtocolError(f"{name}: forward_raw outputs {unbatched} have no batch dimension of 1 for a batch of 1 ({README_SECTION})")
