"""Run the default BlendMask on one image and draw what it found.

    python -m pytest_blendmask.demo IMAGE.png --out out.png [--score-threshold 0.3] [--weights PATH]
    python -m pytest_blendmask.demo --synthetic 7 --out out.png     # image 7 of the evaluation split

The PNG has the input's size and shows, for every detection scoring at least the
threshold, its mask (tinted, with a solid outline), its box, its class name and its score.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from torch import Tensor

from .data import EVAL_SEED, EVAL_SIZE, generate_sample, read_image
from .eval import add_model_options, checked, load_model

# Okabe-Ito colours (RGB), distinguishable with the common colour-vision deficiencies;
# one per class, so that equal colours mean equal classes.
PALETTE = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (204, 121, 167),  # reddish purple
    (213, 94, 0),  # vermilion
)
SUMMARY_LIMIT = 10  # detections named on stdout; the picture shows them all
MASK_ALPHA = 0.45  # tint = (1 - alpha) * pixel + alpha * colour: the image stays visible


def _mask_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of bool[H, W] ``mask`` with a 4-neighbour outside it (or on the image border)."""
    p = np.pad(mask, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def draw_detections(
    image_bgr: np.ndarray, dets: dict[str, Tensor], class_names: Sequence[str], score_threshold: float = 0.3
) -> np.ndarray:
    """Draw masks, boxes and ``"name score"`` labels of the detections scoring >= the threshold.

    Masks, then boxes, then labels, each lowest score first: the most confident ends on
    top, and no tint or box line crosses a label.

    Args:
        image_bgr: uint8[H, W, 3], BGR (the model's layout).
        dets: one image's ``postprocess`` output in the image's pixels: ``boxes`` [M, 4]
            xyxy, ``scores`` [M], ``classes`` [M], ``masks`` bool [M, H, W].
        class_names: name of each 0-based class id.

    Returns:
        uint8[H, W, 3]: the drawing, RGB.
    """
    keep = (dets["scores"] >= score_threshold).nonzero().flatten()
    keep = keep[torch.argsort(dets["scores"][keep], stable=True)]
    boxes, scores = dets["boxes"][keep].tolist(), dets["scores"][keep].tolist()
    classes, masks = dets["classes"][keep].tolist(), dets["masks"][keep].cpu().numpy()
    colours = [PALETTE[c % len(PALETTE)] for c in classes]

    canvas = image_bgr[..., ::-1].astype(np.float32)
    for mask, colour in zip(masks, colours):
        canvas[mask] = (1 - MASK_ALPHA) * canvas[mask] + MASK_ALPHA * np.float32(colour)
        canvas[_mask_edge(mask)] = colour
    picture = Image.fromarray(np.rint(canvas).astype(np.uint8))

    draw = ImageDraw.Draw(picture)
    height, width = image_bgr.shape[:2]
    font = ImageFont.load_default(size=max(10, min(height, width) // 40))
    line = max(1, min(height, width) // 256)
    for box, colour in zip(boxes, colours):
        draw.rectangle(box, outline=colour, width=line)
    for box, score, cls, colour in zip(boxes, scores, classes, colours):
        label = f"{class_names[cls]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left + 4, bottom - top + 4
        # Above the box when it fits, else just inside its top edge.
        x = min(max(box[0], 0), max(width - text_w, 0))
        y = box[1] - text_h if box[1] >= text_h else box[1]
        draw.rectangle((x, y, x + text_w, y + text_h), fill=colour)
        draw.text((x + 2 - left, y + 2 - top), label, fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def detect(model: torch.nn.Module, image_bgr: np.ndarray) -> dict[str, Tensor]:
    """Detections of ``model`` on one image, in that image's pixels.

    The image is resized (aspect kept) so that its longer side is the config's input size,
    the scale the model was trained at; ``postprocess`` maps the results back.
    """
    height, width = image_bgr.shape[:2]
    scale = model.cfg.input_size / max(height, width)
    net_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if net_size != (height, width):
        resized = Image.fromarray(image_bgr).resize((net_size[1], net_size[0]), Image.Resampling.BILINEAR)
        image_bgr = np.array(resized)  # a copy: torch.from_numpy wants a writable array
    batch, sizes = model.preprocess([torch.from_numpy(image_bgr).permute(2, 0, 1)])
    with torch.inference_mode():
        return model(batch, sizes, [(height, width)])[0]


_probability = checked(float, lambda value: 0.0 <= value <= 1.0, "a number in [0, 1]")


def build_parser() -> argparse.ArgumentParser:
    """The command's options; ``--help`` shows each default."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_blendmask.demo",
        description="Run BlendMask on an image and write a PNG with masks, boxes, class names and scores.",
    )
    parser.add_argument("image", nargs="?", type=Path, metavar="IMAGE", help="Image file (any format Pillow reads)")
    parser.add_argument("--synthetic", type=int, metavar="INDEX", help="Use image INDEX of the synthetic evaluation split instead")
    parser.add_argument("--out", type=Path, default=Path("demo.png"), metavar="PNG", help="PNG to write. Default: %(default)s")
    parser.add_argument("--score-threshold", type=_probability, default=0.3, metavar="P", help="Draw detections scoring at least this. Default: %(default)r")
    add_model_options(parser)
    return parser


def _read_input(parser: argparse.ArgumentParser, args: argparse.Namespace) -> np.ndarray:
    """The BGR image named by IMAGE or ``--synthetic``; a bad choice ends via ``parser.error``."""
    if (args.image is None) == (args.synthetic is None):
        parser.error("give either IMAGE or --synthetic INDEX")
    if args.synthetic is not None:
        if args.synthetic < 0:
            parser.error(f"--synthetic: expected an index >= 0; got {args.synthetic}")
        return generate_sample(EVAL_SEED, args.synthetic, EVAL_SIZE, EVAL_SIZE).image
    if not args.image.is_file():
        parser.error(f"IMAGE: file not found: {args.image}")
    try:
        return read_image(args.image)
    except (UnidentifiedImageError, OSError) as exc:
        parser.error(f"IMAGE: cannot read {args.image}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns 0, or exits with status 2 on a bad option (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    image = _read_input(parser, args)
    model, weights = load_model(parser, args)
    dets = detect(model, image)
    drawing = draw_detections(image, dets, model.cfg.class_names, args.score_threshold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(drawing).save(args.out)
    shown = [
        f"{model.cfg.class_names[c]} {s:.2f}"
        for s, c in zip(dets["scores"].tolist(), dets["classes"].tolist())
        if s >= args.score_threshold
    ]
    print(f"weights: {weights or 'none (random init)'}")
    listed = ", ".join(shown[:SUMMARY_LIMIT]) + (", ..." if len(shown) > SUMMARY_LIMIT else "")
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}): {len(shown)} of {len(dets['scores'])} detections "
          f"score >= {args.score_threshold}{': ' if shown else ''}{listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
