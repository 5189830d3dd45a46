"""torchvision's Mask R-CNN split into the gate's three parts.

torchvision's ``GeneralizedRCNN.forward`` resizes, runs the network and decodes in one call
on a list of images. A port runs the network on the device and decodes where it can, so the
adapter cuts it where AdelaiDet's export cuts BlendMask:

- ``preprocess``: BGR uint8 images to RGB in [0, 1], normalised with the model's own
  ``transform`` mean/std and zero-padded to a multiple of 32, *without* torchvision's
  resize (the gate fixes the input size with ``--bm-input-size``);
- ``forward_raw``: the backbone with its FPN and the RPN head: the tensors a device computes
  (``feature_<level>``, ``objectness_<level>``, ``rpn_deltas_<level>``);
- ``postprocess``: anchors, proposal decoding and filtering, the RoI heads (box and, for
  mask) on the raw features, and the paste to image size, through torchvision's own modules,
  returned as the gate's ``boxes``/``scores``/``classes``/``masks``.

Box-only detectors (Faster R-CNN) are refused: every detection gate pairs masks, and a
detector without them has none to give.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

from .layers import pad_batch, padded_size

SIZE_DIVISIBILITY = 32
MASK_THRESHOLD = 0.5  # torchvision's masks are probabilities; the gate compares binary masks


class TorchvisionDetector(nn.Module):
    """A torchvision Mask R-CNN (``maskrcnn_*``) as a ``DetectionModel``.

    Args:
        detector: the torchvision model, in eval mode.
        class_names: one name per 0-based class (torchvision's label 0 is the background,
            so class ``c`` is label ``c + 1``); default ``class_<c>``.
    """

    def __init__(self, detector: nn.Module, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        if not all(hasattr(detector, part) for part in ("backbone", "rpn", "roi_heads", "transform")):
            raise TypeError(f"TorchvisionDetector takes a torchvision GeneralizedRCNN (backbone, rpn, roi_heads); got {type(detector).__name__}")
        if not detector.roi_heads.has_mask():
            raise TypeError(f"TorchvisionDetector needs a mask head (Mask R-CNN); {type(detector).__name__} detects boxes only")
        self.detector = detector
        labels = detector.roi_heads.box_predictor.cls_score.out_features
        self.class_names = tuple(class_names) if class_names is not None else tuple(f"class_{c}" for c in range(labels - 1))

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        transform = self.detector.transform
        mean = torch.tensor(transform.image_mean).view(3, 1, 1)
        std = torch.tensor(transform.image_std).view(3, 1, 1)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        normalised = [(im.flip(0).float() / 255 - mean.to(im.device)) / std.to(im.device) for im in images]
        return pad_batch(normalised, SIZE_DIVISIBILITY), sizes

    def forward_raw(self, images: Tensor) -> dict[str, Tensor]:
        features = self.detector.backbone(images)
        objectness, deltas = self.detector.rpn.head(list(features.values()))
        raw = {f"feature_{name}": feat for name, feat in features.items()}
        for name, obj, delta in zip(features, objectness, deltas):
            raw[f"objectness_{name}"] = obj
            raw[f"rpn_deltas_{name}"] = delta
        return raw

    @torch.no_grad()
    def postprocess(
        self, raw: dict[str, Tensor], image_sizes: list[tuple[int, int]], output_sizes: list[tuple[int, int]] | None = None
    ) -> list[dict[str, Tensor]]:
        rpn = self.detector.rpn
        levels = [key[len("feature_"):] for key in raw if key.startswith("feature_")]
        features = OrderedDict((level, raw[f"feature_{level}"].float()) for level in levels)
        objectness = [raw[f"objectness_{level}"].float() for level in levels]
        deltas = [raw[f"rpn_deltas_{level}"].float() for level in levels]
        first = features[levels[0]]
        height, width = padded_size(image_sizes, SIZE_DIVISIBILITY)
        # The anchors read only the padded input's shape, which preprocess fixed.
        image_list = ImageList(first.new_zeros(first.shape[0], 3, height, width), list(image_sizes))
        anchors = rpn.anchor_generator(image_list, list(features.values()))
        per_level = [int(o[0].numel()) for o in objectness]
        flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(flat_deltas, anchors).view(len(anchors), -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, flat_objectness, image_list.image_sizes, per_level)
        detections, _ = self.detector.roi_heads(features, boxes, image_list.image_sizes)
        detections = self.detector.transform.postprocess(detections, image_list.image_sizes, output_sizes or list(image_sizes))
        return [self._as_gate_detections(d) for d in detections]

    @staticmethod
    def _as_gate_detections(found: dict[str, Tensor]) -> dict[str, Tensor]:
        masks = found["masks"][:, 0] > MASK_THRESHOLD
        return {"boxes": found["boxes"], "scores": found["scores"], "classes": found["labels"] - 1, "masks": masks}
