"""The PIL baseline and the tensor path: same batch within the stated tolerance, model-ready layout."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_blendmask.data import generate_sample
from pytest_blendmask.data.preprocess import (
    MAX_ABS_DIFF_LEVELS,
    MEAN_ABS_DIFF_LEVELS,
    difference_in_levels,
    encode_bgr_jpeg,
    pil_preprocess,
    tensor_preprocess,
)
from pytest_blendmask.model import build_model, get_config

CPU = torch.device("cpu")
CFG = get_config("lite")
MEAN, STD = CFG.pixel_mean, CFG.pixel_std


def png_bytes(bgr: np.ndarray) -> bytes:
    """Lossless encoding, for tests that need exact pixel values."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("sources", "size"),
    [
        ([(96, 128), (96, 128)], (96, 128)),  # no resize
        ([(96, 128), (64, 160)], (128, 128)),  # upscale, images of different sizes
        ([(200, 300), (160, 160), (96, 96)], (64, 96)),  # antialiased downscale
    ],
    ids=["same-size", "upscale-mixed", "downscale"],
)
def test_paths_agree_within_the_stated_tolerance(sources: list[tuple[int, int]], size: tuple[int, int]) -> None:
    encoded = [encode_bgr_jpeg(generate_sample(3, i, h, w).image) for i, (h, w) in enumerate(sources)]
    pil = pil_preprocess(encoded, size, MEAN, STD)
    tensor = tensor_preprocess(encoded, size, MEAN, STD, CPU)
    assert pil.tensor.shape == tensor.tensor.shape == (len(sources), 3, *size)
    assert pil.tensor.dtype == tensor.tensor.dtype == torch.float32
    worst, mean = difference_in_levels(pil.tensor, tensor.tensor, STD)
    assert worst <= MAX_ABS_DIFF_LEVELS and mean <= MEAN_ABS_DIFF_LEVELS, (worst, mean)
    assert pil.image_sizes == tensor.image_sizes == [size] * len(sources)
    assert pil.original_sizes == tensor.original_sizes == sources


@pytest.mark.parametrize("preprocess", [pil_preprocess, lambda *a, **k: tensor_preprocess(*a, device=CPU, **k)],
                         ids=["pil", "tensor"])
def test_output_is_bgr_and_normalised(preprocess) -> None:  # noqa: ANN001
    bgr = np.zeros((32, 64, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 120, 250  # blue, green, red
    batch = preprocess([png_bytes(bgr)], (32, 64), MEAN, (2.0, 4.0, 5.0)).tensor
    expected = [(10 - MEAN[0]) / 2.0, (120 - MEAN[1]) / 4.0, (250 - MEAN[2]) / 5.0]
    for channel, value in enumerate(expected):
        assert torch.allclose(batch[0, channel], torch.tensor(value)), channel


def test_tensor_path_matches_the_models_own_normalisation() -> None:
    images = [generate_sample(4, i, 64, 96).image for i in range(2)]
    batch = tensor_preprocess([png_bytes(im) for im in images], (64, 96), MEAN, STD, CPU).tensor
    model_batch, sizes = build_model("lite").preprocess([torch.from_numpy(im).permute(2, 0, 1) for im in images])
    assert sizes == [(64, 96)] * 2
    assert torch.equal(batch, model_batch)


@pytest.mark.parametrize("path", ["pil", "tensor"])
def test_out_buffer_is_filled_in_place(path: str) -> None:
    encoded = [encode_bgr_jpeg(generate_sample(5, i, 64, 64).image) for i in range(2)]
    out = torch.full((2, 3, 64, 64), float("nan"))
    run = pil_preprocess if path == "pil" else (lambda *a, **k: tensor_preprocess(*a, device=CPU, **k))
    result = run(encoded, (64, 64), MEAN, STD, out=out)
    assert result.tensor.data_ptr() == out.data_ptr() and not out.isnan().any()


@pytest.mark.parametrize("path", ["pil", "tensor"])
def test_wrong_out_buffer_is_rejected_with_what_was_expected(path: str) -> None:
    encoded = [encode_bgr_jpeg(generate_sample(5, 0, 64, 64).image)]
    run = pil_preprocess if path == "pil" else (lambda *a, **k: tensor_preprocess(*a, device=CPU, **k))
    expected = r"out must be float32 \[1, 3, 64, 64\] on cpu; got torch.float32 \[2, 3, 64, 64\] on cpu"
    with pytest.raises(ValueError, match=expected):
        run(encoded, (64, 64), MEAN, STD, out=torch.empty(2, 3, 64, 64))


def test_encode_bgr_jpeg_stores_rgb() -> None:
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 200  # red in BGR
    decoded = np.asarray(Image.open(io.BytesIO(encode_bgr_jpeg(bgr))).convert("RGB"))
    assert abs(int(decoded[..., 0].mean()) - 200) <= 2 and decoded[..., 2].mean() < 3
