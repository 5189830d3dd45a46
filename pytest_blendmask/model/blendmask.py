"""The BlendMask meta-architecture: raw network, host-side post-processing, and both together."""
from __future__ import annotations

import importlib

import torch
from torch import Tensor, nn

from .. import devices
from .basis import BasisModule
from .blender import blend
from .configs import ModelConfig, get_config
from .decode import decode
from .fcos import FCOS
from .fpn import FPN
from .layers import pad_batch
from .postprocess import detector_postprocess
from .protocol import README_SECTION, ModelProtocolError, as_gated_model

RAW_KINDS = ("logits", "bbox_reg", "ctrness", "top_feats")


class BlendMask(nn.Module):
    """BlendMask with the released checkpoint's module names; a ``DetectionModel`` (``protocol.py``).

    ``forward_raw`` is the part that runs on the device and is exported to ONNX;
    ``postprocess`` (decode, NMS, blender, mask paste) runs on the tensors it is given;
    ``forward`` is both, called like a torchvision detector.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = FPN(cfg)
        self.proposal_generator = FCOS(cfg)
        self.top_layer = nn.Conv2d(cfg.fpn_channels, cfg.attn_channels, 3, padding=1)
        nn.init.normal_(self.top_layer.weight, std=0.01)
        nn.init.zeros_(self.top_layer.bias)
        self.basis_module = BasisModule(cfg)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.cfg.class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        """The dataset category id of each class id (COCO's 1..90 with gaps; 1..6 for lite)."""
        return self.cfg.category_ids

    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        return self.cfg.pixel_mean

    @property
    def pixel_std(self) -> tuple[float, float, float]:
        return self.cfg.pixel_std

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise BGR uint8 images and zero-pad them bottom/right into one batch.

        Args:
            images (list[Tensor[3, H_i, W_i]]): BGR, uint8 (or float in 0..255).

        Returns:
            tuple: batch Tensor[N, 3, Hp, Wp] (Hp, Wp multiples of 32) and the unpadded (h, w) of each image.
        """
        mean = torch.tensor(self.cfg.pixel_mean).view(3, 1, 1)
        std = torch.tensor(self.cfg.pixel_std).view(3, 1, 1)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        normalised = [(im.float() - mean.to(im.device)) / std.to(im.device) for im in images]
        return pad_batch(normalised, self.cfg.size_divisibility), sizes

    def _head(self, feat: Tensor, level_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits, bbox_reg, ctrness, box_feat = self.proposal_generator.fcos_head(feat, level_index)
        return logits, bbox_reg, ctrness, self.top_layer(box_feat)

    def _raw_dict(self, bases: Tensor, per_level: list[tuple[Tensor, ...]]) -> dict[str, Tensor]:
        # Output order of AdelaiDet's ONNX export: bases, then each kind over all levels.
        raw = {"bases": bases}
        for k, kind in enumerate(RAW_KINDS):
            for level, outs in zip(self.cfg.fpn_levels, per_level):
                raw[f"{kind}_p{level}"] = outs[k]
        return raw

    def forward_raw(self, images: Tensor) -> dict[str, Tensor]:
        """The device part: what ONNX exports and the dump collector sees.

        Args:
            images (Tensor[N, 3, H, W]): normalised, padded batch from ``preprocess``.

        Returns:
            dict[str, Tensor]: ``bases`` [N, K, H/4, W/4] and, per level l of ``cfg.fpn_levels``
            (P3..P7; P3..P6 for 550_R_50_3x, P3..P5 for RT_R_50_4x_bn-head_syncbn_shtw),
            ``logits_pl`` [N, C, h, w], ``bbox_reg_pl`` [N, 4, h, w], ``ctrness_pl`` [N, 1, h, w],
            ``top_feats_pl`` [N, K*A*A, h, w].
        """
        feats = self.backbone(images)
        bases = self.basis_module(feats[:3])
        return self._raw_dict(bases, [self._head(f, i) for i, f in enumerate(feats)])

    def forward_with_streams(self, images: Tensor) -> dict[str, Tensor]:
        """``forward_raw`` with each FPN level's head queued on its own stream (cuda or npu)."""
        device = images.device
        feats = self.backbone(images)
        bases = self.basis_module(feats[:3])
        main = devices.current_stream(device)
        streams = [devices.new_stream(device) for _ in feats]
        per_level = []
        for i, (feat, stream) in enumerate(zip(feats, streams)):
            stream.wait_stream(main)
            with devices.on_stream(stream, device):
                per_level.append(self._head(feat, i))
        for stream in streams:
            main.wait_stream(stream)
        for outs in per_level:
            for t in outs:
                # Tell the caching allocator these blocks are now used on the main stream.
                t.record_stream(main)
        return self._raw_dict(bases, per_level)

    @torch.no_grad()
    def postprocess(
        self, raw: dict[str, Tensor], image_sizes: list[tuple[int, int]], output_sizes: list[tuple[int, int]] | None = None
    ) -> list[dict[str, Tensor]]:
        """Decode, NMS, blend and paste: one dict per image.

        Args:
            raw: output of ``forward_raw``, on any device and in any float dtype: values
                are computed in that dtype, coordinates in float32 (``decode.py`` says why).
            image_sizes: unpadded (h, w) of each network input.
            output_sizes: (H, W) to report results in; defaults to ``image_sizes``.

        Returns:
            list[dict]: ``boxes`` [M, 4] xyxy float32, ``scores`` [M] (the raw tensors'
            dtype), ``classes`` [M] int64, ``masks`` bool [M, H, W], in descending score
            order, on the raw tensors' device.
        """
        cfg = self.cfg
        output_sizes = output_sizes or image_sizes
        bases = raw["bases"]
        results = []
        for i, props in enumerate(decode(raw, cfg)):
            rois = torch.cat((props.boxes.new_zeros((len(props.boxes), 1)), props.boxes), dim=1)
            mask_logits = blend(
                bases[i : i + 1], rois, props.attns, cfg.bottom_resolution, cfg.pooler_scale,
                sampling_ratio=cfg.pooler_sampling_ratio, aligned=cfg.pooler_aligned,
            )
            results.append(
                detector_postprocess(
                    props.boxes, props.scores, props.classes, mask_logits.sigmoid(), image_sizes[i], output_sizes[i]
                )
            )
        return results

    def forward(
        self,
        images: list[Tensor] | Tensor,
        image_sizes: list[tuple[int, int]] | None = None,
        output_sizes: list[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections of ``images``, as torchvision detectors are called.

        Args:
            images: a list of BGR uint8 ``Tensor[3, H_i, W_i]`` (preprocessed here, sizes
                taken from them), or a ``preprocess``-ed batch ``Tensor[N, 3, H, W]``, which
                then needs ``image_sizes``.
            image_sizes: unpadded (h, w) of each image of a batch tensor.
            output_sizes: (H, W) to report results in; defaults to the image sizes.

        Returns:
            ``postprocess``'s detections, one dict per image.
        """
        if isinstance(images, (list, tuple)):
            images, image_sizes = self.preprocess(list(images))
        elif image_sizes is None:
            raise TypeError("BlendMask(batch): a preprocessed batch tensor needs image_sizes; or pass a list of images")
        return self.postprocess(self.forward_raw(images), image_sizes, output_sizes)


def build_model(name: str = "lite", norm: str | None = None, seed: int = 0) -> nn.Module:
    """A model in eval mode: a named config with deterministic init, or a user's ``module:factory``
    (what it returns made a gated model by ``protocol.as_gated_model``).

    The seed is applied in a forked RNG so building a model never moves the caller's
    random state.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        factory = getattr(importlib.import_module(module_name), attr, None)
        if not callable(factory):
            raise ModelProtocolError(f"{name}: module {module_name!r} has no callable {attr!r} ({README_SECTION})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a factory's random init is the same in every process
            return as_gated_model(factory(), name).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BlendMask(get_config(name, norm)).eval()
