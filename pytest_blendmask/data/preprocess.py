"""Preprocessing from encoded images to the model-ready batch, two ways: a PIL baseline and a batched tensor path.

Both take encoded images (JPEG or PNG bytes, as read from disk or received from a camera)
and return the same thing: a float32 batch Tensor[N, 3, H, W] in BGR channel order,
normalised as (x - pixel_mean) / pixel_std with the model config's BGR constants, every
image resized to the network input size (H, W) with antialiased bilinear interpolation.
The aspect ratio is not kept: a static-shape compiled model takes one fixed H x W, as
ATC's AIPP resize does; ``postprocess(raw, image_sizes, original_sizes)`` maps results back.

* ``pil_preprocess`` is the usual Python pipeline, one image at a time: PIL decode,
  PIL resize, numpy normalise, HWC -> CHW, then stack.
* ``tensor_preprocess`` is seed 000's "fused tensor operations on the device": torchvision
  decodes (on the GPU with nvjpeg for cuda), the uint8 images are resized on the target
  device (a quarter of the bytes of float32 cross to it), and one cast-and-normalise pass
  writes the batch, optionally into a caller-owned buffer. Reusing that buffer matters on
  the CPU too: a fresh 39 MB float batch (8 x 3 x 640 x 640) is paged in on first touch,
  which costs as much as the cast itself.

The two agree within ``MAX_ABS_DIFF_LEVELS`` grey levels per pixel (``difference_in_levels``):
both decoders are libjpeg-turbo with the same defaults, and torchvision's uint8
antialiased resize reproduces PIL's bilinear filter up to rounding of the last bit.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg

# Agreement of the two paths, in grey levels (units of the uint8 input): both round the
# resized image to whole levels and may round a sum that lands near .5 differently. Measured
# on synthetic images: 0 without resize, mean 0.002 downscaling, 0.012 upscaling; never above 1.
MAX_ABS_DIFF_LEVELS = 1.0
MEAN_ABS_DIFF_LEVELS = 0.05
JPEG_QUALITY = 90


@contextlib.contextmanager
def _torchvision_io() -> Iterator[None]:
    """Silence torchvision 0.29's notice that its image codecs move to TorchCodec.

    The codecs still work in the pinned torchvision; moving to TorchCodec is a dependency
    change for later. Without this, every preprocessing call repeats the notice.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
        yield


@dataclass(frozen=True)
class PreprocessedBatch:
    """A model-ready batch and the sizes ``BlendMask.postprocess`` needs to map results back."""

    tensor: Tensor  # float32 [N, 3, H, W], BGR, normalised
    image_sizes: list[tuple[int, int]]  # (H, W) of each network input
    original_sizes: list[tuple[int, int]]  # (h, w) of each decoded image


def encode_bgr_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of a BGR uint8[H, W, 3] image (the synthetic data's layout); the file holds RGB, as JPEGs do."""
    rgb = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1)
    with _torchvision_io():
        return encode_jpeg(rgb.contiguous(), quality=quality).numpy().tobytes()


def _output_buffer(out: Tensor | None, shape: tuple[int, ...], device: torch.device) -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=torch.float32, device=device)
    if out.shape != shape or out.dtype != torch.float32 or out.device != device:
        raise ValueError(
            f"out must be float32 {list(shape)} on {device}; got {out.dtype} {list(out.shape)} on {out.device}"
        )
    return out


def pil_preprocess(
    encoded: Sequence[bytes],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    out: Tensor | None = None,
) -> PreprocessedBatch:
    """The PIL baseline: decode, resize, normalise, to tensor, one image at a time, on the CPU.

    Args:
        encoded: JPEG/PNG bytes of N images.
        size: (H, W) of the network input.
        mean, std: per-channel constants in BGR order (``ModelConfig.pixel_mean``/``pixel_std``).
        out: optional float32 [N, 3, H, W] CPU buffer the batch is written into.
    """
    height, width = size
    bgr_mean = np.asarray(mean, dtype=np.float32)
    bgr_std = np.asarray(std, dtype=np.float32)
    images, originals = [], []
    for data in encoded:
        with Image.open(io.BytesIO(data)) as decoded:
            rgb = decoded.convert("RGB")
        originals.append((rgb.height, rgb.width))
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        bgr = np.asarray(rgb, dtype=np.float32)[..., ::-1]
        images.append(torch.from_numpy(np.ascontiguousarray(((bgr - bgr_mean) / bgr_std).transpose(2, 0, 1))))
    batch = _output_buffer(out, (len(images), 3, height, width), torch.device("cpu"))
    torch.stack(images, out=batch)
    return PreprocessedBatch(batch, [size] * len(images), originals)


def _decode_rgb(encoded: Sequence[bytes], device: torch.device) -> list[Tensor]:
    """uint8 RGB [3, h, w] per image; batched nvjpeg decoding on a CUDA device, libjpeg-turbo/libpng otherwise."""
    # bytearray: torch refuses to wrap read-only bytes without a warning; the copy is a memcpy.
    raw = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    with _torchvision_io():
        if device.type == "cuda":
            return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        return [decode_image(r, mode=ImageReadMode.RGB).to(device, non_blocking=True) for r in raw]


def tensor_preprocess(
    encoded: Sequence[bytes],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    out: Tensor | None = None,
) -> PreprocessedBatch:
    """The batched tensor path on ``device``: decode, uint8 resize, one cast-and-normalise pass.

    Args:
        encoded: JPEG/PNG bytes of N images (JPEG only on cuda, where nvjpeg decodes them).
        size: (H, W) of the network input.
        mean, std: per-channel constants in BGR order (``ModelConfig.pixel_mean``/``pixel_std``).
        device: where the batch is built and left.
        out: optional float32 [N, 3, H, W] buffer on ``device``, reused across calls.
    """
    height, width = size
    decoded = _decode_rgb(encoded, device)
    originals = [(int(image.shape[-2]), int(image.shape[-1])) for image in decoded]
    batch = _output_buffer(out, (len(decoded), 3, height, width), device)
    for image, target in zip(decoded, batch):
        if image.shape[-2:] != size:
            image = TF.resize(image, [height, width], antialias=True)
        # RGB -> BGR and uint8 -> float32 in one copy per channel plane, straight into the
        # batch: no intermediate uint8 batch or flipped copy to allocate (and page in).
        for channel in range(3):
            target[channel].copy_(image[2 - channel])
    batch.sub_(torch.tensor(mean, device=device).view(1, 3, 1, 1))
    if any(s != 1 for s in std):  # detectron2's BGR configs use std 1: skip a no-op pass
        batch.div_(torch.tensor(std, device=device).view(1, 3, 1, 1))
    return PreprocessedBatch(batch, [size] * len(decoded), originals)


def difference_in_levels(a: Tensor, b: Tensor, std: Sequence[float]) -> tuple[float, float]:
    """(max, mean) of |a - b| in grey levels: normalised differences scaled back by ``std``."""
    levels = (a - b).abs() * torch.tensor(std, device=a.device).view(1, 3, 1, 1)
    return float(levels.max()), float(levels.mean())
