"""The demo command and its drawing function."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_blendmask import demo
from pytest_blendmask.demo import PALETTE, draw_detections

NAMES = ("circle", "square")


def _image() -> np.ndarray:
    return np.full((48, 64, 3), 100, dtype=np.uint8)


def _one_detection(score: float) -> dict[str, torch.Tensor]:
    mask = torch.zeros((1, 48, 64), dtype=torch.bool)
    mask[0, 20:40, 30:60] = True
    return {
        "boxes": torch.tensor([[30.0, 20.0, 60.0, 40.0]]),
        "scores": torch.tensor([score]),
        "classes": torch.tensor([1]),
        "masks": mask,
    }


def test_draw_detections_tints_the_mask_and_leaves_the_rest():
    drawn = draw_detections(_image(), _one_detection(0.8), NAMES, score_threshold=0.5)
    assert drawn.shape == (48, 64, 3) and drawn.dtype == np.uint8
    colour = np.array(PALETTE[1], dtype=np.float32)
    inside = drawn[30, 45].astype(np.float32)
    assert np.allclose(inside, 0.55 * 100 + 0.45 * colour, atol=1)
    assert (drawn[45, 5] == 100).all()  # far from the box and its label


def test_draw_detections_skips_detections_below_the_threshold():
    drawn = draw_detections(_image(), _one_detection(0.2), NAMES, score_threshold=0.5)
    assert (drawn == 100).all()


def test_demo_writes_a_png_of_the_input_size(tmp_path, capsys):
    # Not square and not the model's size: the input is resized for the network and the
    # detections mapped back.
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "sub" / "out.png"
    assert demo.main([str(source), "--out", str(out), "--score-threshold", "0.5"]) == 0
    with Image.open(out) as picture:
        assert (picture.format, picture.size, picture.mode) == ("PNG", (160, 96), "RGB")
    assert f"wrote {out} (160x96)" in capsys.readouterr().out


def test_demo_draws_a_synthetic_evaluation_image(tmp_path):
    out = tmp_path / "synthetic.png"
    assert demo.main(["--synthetic", "0", "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.size == (512, 512)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give either IMAGE or --synthetic INDEX"),
        (["x.png", "--synthetic", "1"], "give either IMAGE or --synthetic INDEX"),
        (["missing.png"], "IMAGE: file not found: missing.png"),
        (["--synthetic", "-1"], "--synthetic: expected an index >= 0; got -1"),
        (["--synthetic", "0", "--score-threshold", "2"], "argument --score-threshold: expected a number in [0, 1]; got '2'"),
    ],
)
def test_demo_rejects_bad_options_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")
