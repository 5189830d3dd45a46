"""``python -m pytest_blendmask.train``: train a BlendMask config on the synthetic shapes stream."""
from __future__ import annotations

import argparse
import shlex
import sys

from .loop import TrainConfig, train


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m pytest_blendmask.train", description=__doc__)
    p.add_argument("--config", default=d.config, help="model config name. Default: %(default)r")
    p.add_argument("--iters", type=int, default=d.iters, help="iterations of the schedule. Default: %(default)r")
    p.add_argument("--batch", type=int, default=d.batch, help="images per iteration. Default: %(default)r")
    p.add_argument("--gen-size", type=int, default=d.gen_size, help="side of generated images. Default: %(default)r")
    p.add_argument("--crop", type=int, default=d.crop, help="side of the random crop trained on. Default: %(default)r")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate. Default: %(default)r")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Default: %(default)r")
    p.add_argument("--warmup", type=int, default=d.warmup, help="warmup iterations. Default: %(default)r")
    p.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clip. Default: %(default)r")
    p.add_argument("--max-mask-rois", type=int, default=d.max_mask_rois, help="positives per batch in the mask loss. Default: %(default)r")
    p.add_argument("--seed", type=int, default=d.seed, help="model init / sampling seed. Default: %(default)r")
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="training stream seed. Default: %(default)r")
    p.add_argument("--sizes-of-interest", type=float, nargs="+", default=list(d.sizes_of_interest),
                   help="FCOS level boundaries of max(l,t,r,b). Default: %(default)r")
    p.add_argument("--time-limit-min", type=float, default=d.time_limit_min,
                   help="compress the schedule to end within this many minutes (0: off). Default: %(default)r")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:N]. Default: %(default)r")
    p.add_argument("--log-every", type=int, default=d.log_every, help="Default: %(default)r")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="Default: %(default)r")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="iterations between progress evals (0: off). Default: %(default)r")
    p.add_argument("--eval-limit", type=int, default=d.eval_limit, help="eval images in progress evals. Default: %(default)r")
    p.add_argument("--final-eval-limit", type=int, default=None, help="eval images at the end (all when omitted). Default: %(default)r")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: torch's default). Default: %(default)r")
    p.add_argument("--out", default=d.out, help="output directory. Default: %(default)r")
    p.add_argument("--resume", default=None, help="checkpoint.pt to resume from. Default: %(default)r")
    a = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    # The card's command reproduces the run from scratch: --resume only continues it.
    argv = _without_resume(argv)
    cfg = TrainConfig(
        config=a.config, iters=a.iters, batch=a.batch, gen_size=a.gen_size, crop=a.crop, lr=a.lr,
        weight_decay=a.weight_decay, warmup=a.warmup, clip=a.clip, max_mask_rois=a.max_mask_rois, seed=a.seed,
        data_seed=a.data_seed, sizes_of_interest=tuple(a.sizes_of_interest), time_limit_min=a.time_limit_min,
        device=a.device, log_every=a.log_every, ckpt_every=a.ckpt_every, eval_every=a.eval_every,
        eval_limit=a.eval_limit, final_eval_limit=a.final_eval_limit, threads=a.threads, out=a.out,
        command=shlex.join(["python", "-m", "pytest_blendmask.train", *argv]),
    )
    return cfg, a.resume


def _without_resume(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    cfg, resume = parse_args(argv)
    card = train(cfg, resume)
    print(f"box AP {card['eval']['bbox_AP']:.2f}  mask AP {card['eval']['segm_AP']:.2f}  -> {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
