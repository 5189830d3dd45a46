"""How far a clean target sits from its noise-floor limits, over many images: the false-alarm sweep.

    python -m pytest_blendmask.floor_sweep --target ort:int8 [--target ...] [--model lite]
        [--weights PATH] [--size 512] [--images 10] [--batch-size 2] [--thresholds PATH] [--json]
        [--log PATH [--resume]]

Each target is held to its floor (``noise_floor.against_its_floor``, as the ``floor_comparison``
fixture does) on the evaluation images, a batch at a time, the floor measured anew for each
batch. Printed per target: the highest value of each floor metric over every batch and module
with where it was, the batches that raised an alarm, the seconds and the process's peak RSS.
Exit status 1 when any batch raised an alarm, 2 on a bad option.

A sweep of R_50 at 640x640 takes minutes to a quarter of an hour a target here, so ``--log``
writes each batch's result as a JSON line as soon as it is measured, and ``--resume`` continues a
stopped sweep from its log: logged batches count without being run again. The log's first
line holds the sweep's settings; resuming with other settings is refused.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import EVAL_SEED, generate_sample
from .eval import positive_int, add_model_options, load_model
from .model.fingerprint import weights_digest
from .noise_floor import against_its_floor, target_floor
from .precision.compare import compare
from .precision.thresholds import load_thresholds
from .targets import LoadContext, Target, parse_target

METRICS = ("local_ratio", "gain_error", "local", "accumulated_ratio")


@dataclass
class Sweep:
    """One target's highest floor metrics over the batches, and its alarms."""

    target: str
    highest: dict[str, tuple[float, str]] = field(default_factory=dict)  # metric -> (value, where)
    alarms: list[str] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0
    from_log: int = 0  # batches taken from a --resume'd log, not run again

    def add(self, batch: dict[str, Any]) -> None:
        """Count one batch's result (``BatchLog`` line)."""
        self.batches += 1
        self.seconds += batch["seconds"]
        if batch["alarm"] is not None:
            self.alarms.append(f"images {batch['images']}: {batch['alarm']}")
        for metric, (value, where) in batch["highest"].items():
            _keep_highest(self.highest, metric, value, where)


def _keep_highest(highest: dict[str, tuple[float, str]], metric: str, value: float, where: str) -> None:
    if value > highest.get(metric, (-math.inf, ""))[0]:
        highest[metric] = (value, where)


class BatchLog:
    """The ``--log`` file: a settings line, then one JSON line per measured batch (module doc)."""

    def __init__(self, path: Path, settings: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.done: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
        if path.exists() and not resume:
            raise ValueError(f"--log {path}: exists; pass --resume to continue that sweep, or remove the file")
        if path.exists() and path.stat().st_size:
            self._read(settings)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"settings": settings})

    def _read(self, settings: dict[str, Any]) -> None:
        rows = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                # A sweep stopped while writing leaves its last line cut short.
                raise ValueError(f"--log {self.path}: line {number} is not JSON; remove it to resume") from None
        if rows[0].get("settings") != settings:
            raise ValueError(f"--log {self.path}: written by a sweep with other settings {rows[0].get('settings')}; "
                             f"this one is {settings}. Use another --log, or remove the file")
        for row in rows[1:]:
            self.done[row["target"], tuple(row["images"])] = row

    def _append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(row) + "\n")

    def record(self, batch: dict[str, Any]) -> None:
        self._append(batch)


def _target(text: str) -> Target:
    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_blendmask.floor_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=_target, action="append", required=True, metavar="SPEC",
                        help="A target with a floor (eager or ort*); repeat for several")
    parser.add_argument("--size", type=positive_int, default=512, metavar="S", help="Square input size, a multiple of 32. Default: %(default)r")
    parser.add_argument("--images", type=positive_int, default=10, metavar="N", help="Evaluation images. Default: %(default)r")
    parser.add_argument("--batch-size", type=positive_int, default=2, metavar="N", help="Images per batch. Default: %(default)r")
    parser.add_argument("--thresholds", type=Path, default=None, metavar="PATH", help="Thresholds file. Default: the packaged one")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table")
    parser.add_argument("--log", type=Path, default=None, metavar="PATH",
                        help="Write each batch's result to PATH as a JSON line as soon as it is measured")
    parser.add_argument("--resume", action="store_true",
                        help="Continue the sweep logged in --log: its batches are not run again")
    add_model_options(parser)
    return parser


def sweep(target: Target, model: torch.nn.Module, size: int, images: int, batch_size: int,
          thresholds_path: Path | None, log: BatchLog | None = None) -> Sweep:
    """``target`` against its floor over the first ``images`` evaluation images (module doc);
    batches already in ``log`` are taken from it, and each batch measured is written to it."""
    thresholds = load_thresholds(thresholds_path)
    reference_target = parse_target("cpu")
    runner = target.load(model, LoadContext((size, size)))
    result = Sweep(target.id)
    for first in range(0, images, batch_size):
        seeds = list(range(first, min(first + batch_size, images)))
        logged = log.done.get((target.id, tuple(seeds))) if log else None
        if logged is not None:
            result.add(logged)
            result.from_log += 1
            continue
        start = time.perf_counter()
        pictures = [torch.from_numpy(generate_sample(EVAL_SEED, s, size, size).image).permute(2, 0, 1).contiguous() for s in seeds]
        batch, sizes = model.preprocess(pictures)
        reference = reference_target.run(model, batch, sizes)
        floor = target_floor(target, model, batch, reference, thresholds)
        accumulated = lambda: compare(reference.dump, target.run(model, batch, sizes, runner=runner).dump,  # noqa: E731
                                      thresholds.tensor[target.precision])
        comparison = against_its_floor(target, runner, model, batch, reference, lambda: floor, thresholds, accumulated)
        if comparison is None:
            raise ValueError(f"{target.id} has no noise floor")
        highest: dict[str, tuple[float, str]] = {}
        for metric in METRICS:
            for module in comparison.modules:
                value = getattr(module, metric)
                if module.gated and not math.isnan(value):
                    _keep_highest(highest, metric, value, f"{module.name} (images {seeds})")
        measured = {"target": target.id, "images": seeds, "seconds": time.perf_counter() - start, "highest": highest,
                    "alarm": None if comparison.passed else comparison.localisation.detail}
        result.add(measured)
        if log is not None:
            log.record(measured)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error(f"--size: expected a multiple of 32; got {args.size}")
    for target in args.target:
        if target.floor is None:
            parser.error(f"--target {target.id}: has no noise floor (an .om runs whole)")
        reason = target.skip_reason()
        if reason is not None:
            parser.error(f"--target {target.id}: cannot run here: {reason}")
    if args.resume and args.log is None:
        parser.error("--resume: continues the sweep of a --log file; give --log PATH")
    model, weights = load_model(parser, args)
    log = None
    if args.log is not None:
        settings = {"model": args.model, "weights_digest": weights_digest(model), "size": args.size,
                    "batch_size": args.batch_size, "thresholds": None if args.thresholds is None else str(args.thresholds)}
        try:
            log = BatchLog(args.log, settings, args.resume)
        except ValueError as exc:
            parser.error(str(exc))
    if not args.json:
        print(f"model {args.model} ({weights or 'random init'}), {args.images} images at {args.size}, batches of {args.batch_size}")
    results = []
    for target in args.target:
        results.append(sweep(target, model, args.size, args.images, args.batch_size, args.thresholds, log))
        if not args.json:
            _print(results[-1])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps({"model": args.model, "weights": None if weights is None else str(weights), "size": args.size,
                          "images": args.images, "peak_rss_mb": peak_rss_mb,
                          "targets": [vars(r) for r in results]}))
    else:
        print(f"peak RSS {peak_rss_mb:.0f} MB")
    return 1 if any(r.alarms for r in results) else 0


def _print(result: Sweep) -> None:
    logged = f" ({result.from_log} from the log)" if result.from_log else ""
    print(f"{result.target}: {result.batches} batches{logged} in {result.seconds:.0f} s, {len(result.alarms)} alarm(s)", flush=True)
    for metric in METRICS:
        value, where = result.highest.get(metric, (math.nan, "-"))
        print(f"  highest {metric:18} {value:.4g} at {where}")
    for alarm in result.alarms:
        print(f"  ALARM {alarm}")


if __name__ == "__main__":
    sys.exit(main())
