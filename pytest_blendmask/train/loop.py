"""Training loop for the ``lite`` BlendMask on the synthetic shapes stream.

Trainable model: the default (``frozen_bn``) layout with every FrozenBatchNorm2d of the
backbone swapped for a train-mode BatchNorm2d, so the shipped file has exactly the keys of
``build_model("lite")`` (plus BN step counters, which ``load_weights`` drops).

Every random choice is a pure function of ``(seed, iteration)`` or ``(data seed, image index)``,
so a run resumed from a checkpoint sees the same images, crops and positive subsamples.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data import GENERATOR_VERSION, MIN_VISIBLE_AREA, TRAIN_SEED, generate_sample, mask_to_box, to_train_sample
from ..model import blendmask as blendmask_mod
from ..model.layers import FrozenBatchNorm2d
from . import losses
from .assign import POS_RADIUS, SIZES_OF_INTEREST, assign


CHECK_IMAGES = 50  # the model card also holds the AP on the first 50 evaluation images, for CI to re-measure


@dataclass
class TrainConfig:
    """Everything that decides a training run; written into the checkpoint and the model card."""

    config: str = "lite"
    iters: int = 4000
    batch: int = 4
    gen_size: int = 512
    crop: int = 384
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    clip: float = 5.0
    max_mask_rois: int = 384
    seed: int = 0
    data_seed: int = TRAIN_SEED
    sizes_of_interest: tuple[float, ...] = SIZES_OF_INTEREST
    radius: float = POS_RADIUS
    time_limit_min: float = 0.0  # 0: no limit; otherwise the schedule is compressed to fit
    device: str = "cpu"
    log_every: int = 20
    ckpt_every: int = 200
    eval_every: int = 0
    eval_limit: int = 20
    final_eval_limit: int | None = None
    threads: int = 0
    out: str = ".bm_cache/train/run"
    command: str = ""
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- model


def make_trainable(model: nn.Module) -> nn.Module:
    """Swap each FrozenBatchNorm2d of ``model.backbone`` for an nn.BatchNorm2d with the same state."""
    for name, module in list(model.backbone.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FrozenBatchNorm2d):
                bn = nn.BatchNorm2d(child.weight.shape[0], eps=child.eps)
                with torch.no_grad():
                    bn.weight.copy_(child.weight)
                    bn.bias.copy_(child.bias)
                    bn.running_mean.copy_(child.running_mean)
                    bn.running_var.copy_(child.running_var)
                setattr(module, child_name, bn)
    return model


def export_state(model: nn.Module, config: str = "lite") -> dict[str, Tensor]:
    """The trained state with exactly the keys of ``build_model(config)`` (default norm), contiguous fp32."""
    expected = blendmask_mod.build_model(config).state_dict()
    state = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise KeyError(f"trained model lacks key {missing[0]!r} of build_model({config!r})")
    return {k: state[k].detach().to("cpu").clone().contiguous() for k in expected}


def save_weights(model: nn.Module, path: Path, config: str = "lite", metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(export_state(model, config), str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # package data: readable by everyone once installed
    tmp.replace(path)


# ----------------------------------------------------------------------------- data


@dataclass
class Example:
    """One training image: image Tensor[3, H, W] uint8 BGR, classes [M], boxes [M, 4] xyxy, masks bool [M, H, W]."""

    image: Tensor
    classes: Tensor
    boxes: Tensor
    masks: Tensor


def load_example(data_seed: int, index: int, gen_size: int, crop: int) -> Example:
    """Image ``index`` of the training stream, randomly cropped to ``crop`` (same object scale as eval).

    Instances left with fewer than MIN_VISIBLE_AREA pixels by the crop are dropped.
    """
    sample = to_train_sample(generate_sample(data_seed, index, gen_size, gen_size))
    image, masks, classes = sample.image, sample.masks, sample.classes
    if crop < gen_size:
        rng = np.random.default_rng([data_seed, index, 1])
        y0, x0 = (int(v) for v in rng.integers(0, gen_size - crop + 1, size=2))
        image = image[y0 : y0 + crop, x0 : x0 + crop]
        masks = masks[:, y0 : y0 + crop, x0 : x0 + crop]
        keep = masks.reshape(len(masks), -1).sum(axis=1) >= MIN_VISIBLE_AREA
        masks, classes = masks[keep], classes[keep]
    boxes = np.array([mask_to_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
    return Example(
        torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
        torch.from_numpy(np.ascontiguousarray(classes)),
        torch.from_numpy(boxes),
        torch.from_numpy(np.ascontiguousarray(masks)),
    )


# ----------------------------------------------------------------------------- losses


def compute_losses(model: nn.Module, examples: list[Example], cfg: TrainConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """All four losses of one batch: ``cls``, ``reg`` (GIoU), ``ctr`` and ``mask``."""
    mcfg = model.cfg
    device = next(model.parameters()).device
    batch, _ = model.preprocess([e.image.to(device) for e in examples])
    raw = model.forward_raw(batch)
    levels = mcfg.fpn_levels
    shapes = [tuple(raw[f"logits_p{l}"].shape[2:]) for l in levels]
    n = len(examples)

    def flat(kind: str) -> Tensor:  # [N, L, ch] over all levels
        return torch.cat([raw[f"{kind}_p{l}"].permute(0, 2, 3, 1).reshape(n, -1, raw[f"{kind}_p{l}"].shape[1]) for l in levels], dim=1)

    logits, reg, ctr = flat("logits"), flat("bbox_reg"), flat("ctrness")[..., 0]
    targets = [
        assign(e.boxes.to(device), e.classes.to(device), shapes, mcfg.fpn_strides, mcfg.num_classes, cfg.sizes_of_interest, cfg.radius)
        for e in examples
    ]
    labels = torch.stack([t.labels for t in targets])  # [N, L]
    pos = labels < mcfg.num_classes
    num_pos = float(pos.sum())
    out = {"cls": losses.focal_loss(logits.reshape(-1, mcfg.num_classes), labels.reshape(-1), mcfg.num_classes, num_pos)}
    ctr_t = torch.stack([t.ctrness for t in targets])[pos]
    reg_t = torch.stack([t.reg for t in targets])[pos]
    out["reg"] = losses.giou_loss(reg[pos], reg_t, ctr_t)
    out["ctr"] = losses.ctrness_loss(ctr[pos], ctr_t, num_pos)

    # Mask loss on at most max_mask_rois positives, drawn uniformly.
    img_idx, loc_idx = pos.nonzero(as_tuple=True)
    if len(img_idx) > cfg.max_mask_rois:
        pick = torch.randperm(len(img_idx), generator=generator)[: cfg.max_mask_rois].to(device)
        img_idx, loc_idx = img_idx[pick], loc_idx[pick]
    gt_index = torch.stack([t.gt_index for t in targets])[img_idx, loc_idx]
    weights = torch.stack([t.ctrness for t in targets])[img_idx, loc_idx]
    # Attention vectors gathered per level, straight from [N, K*A*A, h, w].
    sizes = [h * w for h, w in shapes]
    offsets = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()], device=device)
    level_of = torch.bucketize(loc_idx, offsets[1:], right=True)
    attns = torch.zeros((len(loc_idx), mcfg.attn_channels), device=device)
    for li, l in enumerate(levels):
        sel = level_of == li
        if sel.any():
            feat = raw[f"top_feats_p{l}"].flatten(2)  # [N, KAA, h*w]
            attns = attns.index_put((sel.nonzero(as_tuple=True)[0],), feat[img_idx[sel], :, loc_idx[sel] - offsets[li]])
    # Mask targets depend only on the instance: compute once per instance, then index.
    inst_rois, inst_targets, first = [], [], []
    count = 0
    for i, e in enumerate(examples):
        first.append(count)
        count += len(e.boxes)
        if len(e.boxes):
            boxes = e.boxes.to(device)
            inst_rois.append(torch.cat((boxes.new_full((len(boxes), 1), float(i)), boxes), dim=1))
            inst_targets.append(losses.mask_targets(e.masks.to(device), boxes, mcfg.bottom_resolution))
    if inst_rois and len(img_idx):
        inst = torch.tensor(first, device=device)[img_idx] + gt_index
        rois = torch.cat(inst_rois)[inst]
        mtargets = torch.cat(inst_targets)[inst]
        out["mask"] = losses.mask_loss(raw["bases"], rois, attns, mtargets, weights, mcfg.bottom_resolution, mcfg.pooler_scale)
    else:
        out["mask"] = raw["bases"].sum() * 0 + attns.sum() * 0
    out["num_pos"] = torch.tensor(num_pos)
    return out


# ----------------------------------------------------------------------------- schedule


def lr_factor(progress: float, it: int, warmup: int) -> float:
    """Linear warmup from 0.001 over ``warmup`` iterations, times cosine decay over ``progress`` in [0, 1]."""
    warm = 1.0 if it >= warmup else 0.001 + (1 - 0.001) * it / max(warmup, 1)
    return warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- loop


def log(out_dir: Path, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(line + "\n")


def train(cfg: TrainConfig, resume: str | None = None) -> dict:
    """Run (or resume) training; write checkpoint, weights and model card under ``cfg.out``.

    Returns:
        dict: the model card.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model = make_trainable(blendmask_mod.build_model(cfg.config, seed=cfg.seed)).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    start_it, elapsed_before = 0, 0.0
    if resume:
        ckpt = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_it, elapsed_before = int(ckpt["iteration"]), float(ckpt["elapsed_s"])
        log(out_dir, {"event": "resume", "from": str(resume), "iteration": start_it})
    t0 = time.perf_counter()
    limit_s = cfg.time_limit_min * 60
    it = start_it
    progress = it / cfg.iters
    window: dict[str, float] = {}
    stopped_by_time = False

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def checkpoint() -> None:
        tmp = out_dir / "checkpoint.pt.tmp"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it, "elapsed_s": elapsed(),
                    "train_config": json.dumps(asdict(cfg))}, tmp)
        tmp.replace(out_dir / "checkpoint.pt")

    while progress < 1.0:
        factor = lr_factor(progress, it, cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * factor
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        examples = [load_example(cfg.data_seed, it * cfg.batch + j, cfg.gen_size, cfg.crop) for j in range(cfg.batch)]
        parts = compute_losses(model, examples, cfg, gen)
        total = parts["cls"] + parts["reg"] + parts["ctr"] + parts["mask"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        it += 1
        for k, v in parts.items():
            window[k] = window.get(k, 0.0) + float(v.detach())
        window["total"] = window.get("total", 0.0) + float(total.detach())
        window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
        window["n"] = window.get("n", 0) + 1
        progress = it / cfg.iters
        if limit_s:
            time_progress = elapsed() / limit_s
            if time_progress > progress:
                stopped_by_time = time_progress >= 1.0 and it < cfg.iters
                progress = time_progress
        if it % cfg.log_every == 0 or progress >= 1.0:
            n_w = window.pop("n")
            rec = {"iter": it, "lr": cfg.lr * factor, "elapsed_s": round(elapsed(), 1), "progress": round(progress, 4),
                   "cpu_s": round(time.process_time(), 1), "utc": time.strftime("%H:%M:%S", time.gmtime())}
            rec.update({k: round(v / n_w, 4) for k, v in window.items()})
            log(out_dir, rec)
            window = {}
        if cfg.ckpt_every and it % cfg.ckpt_every == 0:
            checkpoint()
        if cfg.eval_every and it % cfg.eval_every == 0 and progress < 1.0:
            from .evaluate import coco_ap

            t_eval = time.perf_counter()
            ap = coco_ap(model, cfg.eval_limit, cfg.device)
            # Evaluation time does not count against the schedule.
            t0 += time.perf_counter() - t_eval
            log(out_dir, {"event": "eval", "iter": it, **{k: round(v, 2) for k, v in ap.items()}})
    checkpoint()
    train_time = elapsed()
    return finish(model, cfg, out_dir, it, train_time, stopped_by_time)


def finish(model: nn.Module, cfg: TrainConfig, out_dir: Path, iterations: int, train_time: float, stopped_by_time: bool) -> dict:
    """Export weights, evaluate them through ``build_model`` + ``load_weights``, write the card."""
    from ..model.weights import load_weights
    from .evaluate import coco_ap

    weights = out_dir / f"{cfg.config}.safetensors"
    save_weights(model, weights, cfg.config, {"format": "pt", "config": cfg.config})
    shipped = load_weights(blendmask_mod.build_model(cfg.config), weights).to(cfg.device)
    t_eval = time.perf_counter()
    ap = coco_ap(shipped, cfg.final_eval_limit, cfg.device)
    eval_time = time.perf_counter() - t_eval
    subset = coco_ap(shipped, CHECK_IMAGES, cfg.device)
    mcfg = shipped.cfg
    card = {
        "model": cfg.config,
        "norm": mcfg.norm,
        "num_classes": mcfg.num_classes,
        "class_names": list(mcfg.class_names),
        "input_size": mcfg.input_size,
        "weights_file": weights.name,
        "init_seed": cfg.seed,
        "data": {"generator_version": GENERATOR_VERSION, "train_seed": cfg.data_seed, "gen_size": cfg.gen_size,
                 "crop": cfg.crop, "images_seen": iterations * cfg.batch},
        "training": {
            "iterations": iterations,
            "batch": cfg.batch,
            "optimizer": "AdamW",
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "warmup": cfg.warmup,
            "schedule": "linear warmup + cosine",
            "clip_grad_norm": cfg.clip,
            "max_mask_rois": cfg.max_mask_rois,
            "sizes_of_interest": list(cfg.sizes_of_interest),
            "center_sample_radius": cfg.radius,
            "time_limit_min": cfg.time_limit_min,
            "stopped_by_time_limit": stopped_by_time,
            "device": cfg.device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "wall_time_s": round(train_time, 1),
        },
        "eval": {"split": "eval", "target": "cpu" if cfg.device == "cpu" else cfg.device, "eval_time_s": round(eval_time, 1),
                 **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in ap.items()}},
        # What CI re-measures in seconds (tests/unit/test_shipped_weights.py) to prove the card holds.
        "eval_first_images": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in subset.items()
                              if k in ("num_images", "bbox_AP", "segm_AP")},
        "command": cfg.command,
    }
    log_path = out_dir / "log.jsonl"
    records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    card["training"]["resumed_at_iterations"] = [r["iteration"] for r in records if r.get("event") == "resume"]
    (out_dir / f"{cfg.config}.json").write_text(json.dumps(card, indent=2) + "\n")
    log(out_dir, {"event": "final", **card["eval"], "iterations": iterations, "wall_time_s": round(train_time, 1)})
    return card
