"""COCO box and mask AP of a target on the synthetic evaluation split.

    python -m pytest_blendmask.eval --target cpu [--limit N] [--json] [--weights PATH] [--model lite]

``--json`` prints one JSON object (AP values are COCO AP x 100); otherwise a table. A bad
option value or an unusable weight file exits with status 2 and a message naming it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from torch import nn

from .data import ANNOTATIONS_FILE, ensure_split
from .model import CONFIG_NAMES, WeightsError, build_model, load_weights
from .evaluation import evaluate
from .settings import SEED, Settings, weights_path
from .targets import Target, parse_target

T = TypeVar("T")

EAGER_FORMS = "cpu[:fp16|bf16], cuda:N[:fp16|bf16] or npu:N[:fp16|bf16]"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--weights``, shared by the eval and demo commands."""
    parser.add_argument("--model", default="lite", choices=CONFIG_NAMES, help="BlendMask config. Default: %(default)r")
    parser.add_argument(
        "--weights", type=Path, default=None, metavar="PATH",
        help="Weight file (.safetensors or AdelaiDet .pth). Default: the shipped weights of the model, "
        f"else random init (seed {SEED})",
    )


def load_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[nn.Module, Path | None]:
    """The model of ``--model`` with ``--weights`` (else shipped, else random) loaded, and that file.

    A missing or unusable weight file ends the command through ``parser.error`` (status 2);
    random init is announced on stderr, since its AP and detections mean nothing.
    """
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights: file not found: {args.weights}")
    model = build_model(args.model, seed=SEED)
    path = weights_path(Settings(model=args.model, weights=args.weights))
    if path is None:
        print(
            f"warning: no --weights and no shipped weights for {args.model!r} "
            f"(pytest_blendmask/weights/{args.model}.safetensors): using random init (seed {SEED})",
            file=sys.stderr,
        )
        return model, None
    try:
        load_weights(model, path)
    except WeightsError as exc:
        parser.error(f"{'--weights' if args.weights else 'shipped weights'}: {exc}")
    return model, path


def _eager_target(text: str) -> Target:
    """argparse type: an eager target spec (ArgumentTypeError names the accepted forms)."""
    try:
        spec = parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if spec.compiled:
        raise argparse.ArgumentTypeError(f"this command runs eager targets, {EAGER_FORMS}; got {text!r}")
    return spec


def checked(convert: Callable[[str], T], accept: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse type: ``convert(text)`` when it converts and is accepted, else an error saying what was expected."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


positive_int = checked(int, lambda value: value >= 1, "a positive integer")


def build_parser() -> argparse.ArgumentParser:
    """The command's options; ``--help`` shows each default."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_blendmask.eval",
        description="COCO box and mask AP (x100) of BlendMask on a target, over the synthetic evaluation split.",
    )
    parser.add_argument("--target", type=_eager_target, metavar="SPEC", default=parse_target("cpu"), help=f"{EAGER_FORMS}. Default: cpu")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N", help="Evaluate the first N images only. Default: all")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="N", help="Images per forward pass. Default: %(default)r")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR", help="A split directory. Default: the cached evaluation split")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table")
    add_model_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns 0, or exits with status 2 on a bad option (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    reason = args.target.skip_reason()
    if reason is not None:
        parser.error(f"--target {args.target.id}: cannot run here: {reason}")
    if args.data is not None and not (args.data / ANNOTATIONS_FILE).is_file():
        parser.error(f"--data: no {ANNOTATIONS_FILE} in {args.data}")
    model, weights = load_model(parser, args)
    split = args.data if args.data is not None else ensure_split()
    result = evaluate(model, args.target, split, limit=args.limit, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "model": args.model,
                          "weights": None if weights is None else str(weights), "split": str(split)}))
        return 0
    print(f"model {args.model}, weights {weights or f'none (random init, seed {SEED})'}")
    print(f"target {result.target}: {result.num_images} images of {split} in {result.seconds:.1f} s")
    print(f"{'':6}{'AP':>7}{'AP50':>7}{'AP75':>7}")
    for kind in ("bbox", "segm"):
        values = (getattr(result, f"{kind}_{stat}") for stat in ("AP", "AP50", "AP75"))
        print(f"{kind:6}" + "".join(f"{v:7.1f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
