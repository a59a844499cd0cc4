"""The training loop: data, model, optimizer, DDP, mixed precision, validation, checkpoints, records."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..build import build_model
from ..bundled import tiny_tower_paths
from ..data.datasets import MixedReferDataset, ReferSegDataset, collate
from ..data.refer import load_refer
from ..evaluate import METRIC_KEYS, evaluate
from ..variants import get_variant
from ..utils import check_output_dir
from .checkpoint import capture_rng, load_checkpoint, restore_rng, restore_weights, save_checkpoint
from .config import BUNDLED, RunConfig, config_to_dict
from .distributed import DistInfo, GlobalBatchSampler, all_reduce_mean, cleanup_distributed, init_distributed
from .losses import upsampled_dice_loss
from .schedule import ProgressSchedule
from .tracking import MetricsLogger, plot_curves

__all__ = ["TrainingDiverged", "train", "validate", "build_datasets"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


# ------------------------------------------------------------------------------------------ set-up
def _synthetic_root(cfg: RunConfig, run_dir: Path, info: DistInfo) -> Path:
    """Write the synthetic scenes in the REFER layout once (rank 0), keyed by their parameters."""
    from ..data.synthetic import write_refer_layout

    s = cfg.data.synthetic
    root = run_dir / "data"
    params = json.dumps(dict(vars(s)), sort_keys=True)
    marker = root / "synthetic.json"
    if info.is_main and not (marker.is_file() and marker.read_text() == params):
        write_refer_layout(
            root,
            dataset_name="refcoco",  # the REFER loader reads refcoco/refs(unc).p
            splits={"train": s.train_images, "val": s.val_images},
            seed=s.seed,
            image_size=tuple(s.image_size),
            min_objects=s.min_objects,
            max_objects=s.max_objects,
            max_expressions=s.max_expressions,
        )
        marker.write_text(params)
    if info.distributed:
        torch.distributed.barrier()
    return root


def build_datasets(cfg: RunConfig, run_dir: Path, info: DistInfo, input_size: int, word_len: int):
    """(train, val) datasets of the config; missing files raise FileNotFoundError naming them."""
    d = cfg.data
    common = dict(input_size=input_size, word_len=word_len, seed=cfg.train.seed, skip_bad=d.skip_bad)
    if d.dataset == "synthetic":
        root = _synthetic_root(cfg, run_dir, info)
        refer = load_refer(root, "refcoco")
        image_root = root / "images"
        train = ReferSegDataset(refer, d.train_split, "train", image_root, **common)
        val = ReferSegDataset(refer, d.val_split, "val", image_root, **common)
        return train, val
    if not Path(d.data_root).is_dir():
        raise FileNotFoundError(f"data.data_root {d.data_root} does not exist")
    if not Path(d.image_root).is_dir():
        raise FileNotFoundError(f"data.image_root {d.image_root} does not exist (the COCO train2014 images)")
    if d.dataset == "mixed":
        train = MixedReferDataset(d.data_root, d.train_split, "train", d.image_root, **common)
        val = MixedReferDataset(d.data_root, d.val_split, "val", d.image_root, **common)
        return train, val
    refer = load_refer(d.data_root, d.dataset)
    train = ReferSegDataset(refer, d.train_split, "train", d.image_root, **common)
    val = ReferSegDataset(refer, d.val_split, "val", d.image_root, **common)
    return train, val


def _backbone_files(cfg: RunConfig) -> dict[str, str | None]:
    """The backbone files of ``model.dinov2_weights`` / ``model.clip_weights`` ("bundled" resolved)."""
    files: dict[str, str | None] = {}
    for kind in ("dinov2", "clip"):
        value = getattr(cfg.model, f"{kind}_weights")
        if value == BUNDLED:
            value = str(tiny_tower_paths()[kind])
        elif value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"model.{kind}_weights: file {value} not found")
        files[kind] = value
    return files


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(precision: str, device: torch.device):
    dtype = _AUTOCAST_DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def _param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """One Adam group per trainable module (adapters, neck, decoder, head), as the official code; the
    towers' own weights, when they train too (``model.train_backbones``), form one last group."""
    seen: set[int] = set()
    groups = []
    for module in [*model.trainable_modules(), *model.backbone_modules()]:
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params})
    return groups


# ------------------------------------------------------------------------------------------ validation
def validate(
    model: nn.Module,
    dataset,
    info: DistInfo,
    batch_size: int,
    precision: str = "fp32",
    max_items: int | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Official validation (first sentence per ref) through the evaluation's scoring loop; each rank
    scores every ``world_size``-th item and the meters are summed over ranks."""
    result = evaluate(
        model, dataset, batch_size=batch_size, device=info.device, workers=num_workers, progress=False,
        batch_invariant=False, dtype=_AUTOCAST_DTYPES[precision], rank=info.rank, world_size=info.world_size,
        max_items=max_items,
    )
    return {**{k: result[k] for k in METRIC_KEYS}, "count": result["expressions"]}


# ------------------------------------------------------------------------------------------ training
def train(cfg: RunConfig, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary also written to ``summary.json``.

    ``resume``: a checkpoint path, or ``auto`` for ``<output.dir>/checkpoints/last.pt``.
    """
    threads = torch.get_num_threads()
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    info = init_distributed(cfg.train.device)
    try:
        return _train(cfg, resume, info)
    finally:
        cleanup_distributed()
        torch.set_num_threads(threads)  # the caller's setting, for whatever runs next in this process


def _train(cfg: RunConfig, resume: str | None, info: DistInfo) -> dict[str, Any]:
    t = cfg.train
    run_dir = Path(cfg.output.dir)
    ckpt_dir = run_dir / "checkpoints"
    if info.is_main:
        check_output_dir(run_dir, "output.dir")
    if t.precision == "fp16" and info.device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU (GradScaler); use bf16 on CPU")
    ckpt = None
    if resume:
        path = ckpt_dir / "last.pt" if resume == "auto" else Path(resume)
        ckpt = load_checkpoint(path)  # fails before any work when absent

    # Same seed on every rank: every process builds the same (random-init) backbones and heads.
    mcfg = get_variant(cfg.model.variant, **cfg.model.overrides)  # sizes, without building anything
    backbones = _backbone_files(cfg)
    input_size = cfg.data.input_size or mcfg.image_size
    train_ds, val_ds = build_datasets(cfg, run_dir, info, input_size, mcfg.word_len)
    _seed_everything(t.seed)
    model = build_model(mcfg, backbones["dinov2"], backbones["clip"])
    if cfg.model.train_backbones:
        model.requires_grad_(True)

    micro = t.micro_batch_size or max(t.batch_size // info.world_size, 1)
    if t.batch_size % (info.world_size * micro):
        raise ValueError(
            f"train.batch_size={t.batch_size} is not a multiple of world size {info.world_size} x "
            f"micro_batch_size {micro}"
        )
    accum = t.batch_size // (info.world_size * micro)
    sampler = GlobalBatchSampler(len(train_ds), micro, accum, info.world_size, info.rank, t.seed)
    loader_gen = torch.Generator()  # workers' seeds come from here, never from the global RNG
    loader = DataLoader(
        train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers, generator=loader_gen
    )

    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if info.distributed and cfg.model.sync_bn and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    core = model
    # The fused kernel updates every tensor in one pass (the same Adam arithmetic); the per-tensor loop
    # of the default costs ~6x more, which shows on small models (7 ms of a 190 ms detris-tiny step).
    optimizer = torch.optim.Adam(_param_groups(core), lr=t.lr, weight_decay=t.weight_decay,
                                 fused=info.device.type in ("cpu", "cuda"))
    total_steps = t.epochs * sampler.steps_per_epoch
    total_steps = min(total_steps, t.max_steps) if t.max_steps is not None else total_steps
    per_step = t.lr_schedule != "multistep"
    if per_step:
        scheduler = ProgressSchedule(optimizer, total_steps, t.max_minutes, t.warmup_steps)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(t.milestones), gamma=t.lr_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")

    start_epoch, start_step, global_step = 0, 0, 0
    best: dict[str, Any] = {"mIoU": -1.0, "epoch": None}
    if ckpt is not None:
        restore_weights(core, ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        best = dict(ckpt["best"])
        restore_rng(ckpt["rng"])

    ddp = model
    if info.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )

    logger = MetricsLogger(run_dir, cfg.output.tensorboard) if info.is_main else None
    if info.is_main:
        import yaml

        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    last_path = ckpt_dir / "last.pt"
    full = cfg.output.save_full

    def save(epoch: int, step_in_epoch: int) -> None:
        if info.is_main:
            save_checkpoint(
                last_path, core, full,
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                rng=capture_rng(), epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                best=best, config=config_to_dict(cfg),
            )

    def run_validation(epoch: int) -> dict[str, float]:
        nonlocal best
        summary = validate(core, val_ds, info, t.val_batch_size, t.precision, t.val_max_items, cfg.data.num_workers)
        if info.is_main:
            logger.log({"kind": "val", "epoch": epoch, "global_step": global_step,
                        "minutes": round((time.monotonic() - t0) / 60, 4), **summary})
            if summary["mIoU"] > best["mIoU"]:
                best = {"mIoU": summary["mIoU"], "epoch": epoch, "global_step": global_step}
                adapter_only = not full and getattr(core, "base_weights", None) is not None
                # Random-init backbones (no weight files) cannot be re-created from a file, so the
                # exported model then holds every weight.
                core.save_pretrained(run_dir / "best", adapter_only=adapter_only)
        return summary

    t0 = time.monotonic()
    stop_reason = "finished"
    last_val: dict[str, float] = {}
    pbar = None
    if info.is_main and cfg.output.progress:
        from tqdm import tqdm

        # A wall-time budget usually ends the run long before the epochs do: no step total (and no
        # misleading time estimate) then, only the step count and rate.
        pbar = tqdm(total=None if t.max_minutes is not None else total_steps, initial=global_step, unit="step",
                    dynamic_ncols=True)
    model.train()
    for epoch in range(start_epoch, t.epochs):
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch, start_step if epoch == start_epoch else 0)
        loader_gen.manual_seed(t.seed + epoch)
        step_in_epoch = sampler.start_step
        micro_idx, loss_sum = 0, torch.zeros((), device=info.device)
        stopped = False
        for batch in loader:
            if batch is None:
                continue
            images = batch["image"].to(info.device, non_blocking=True)
            tokens = batch["tokens"].to(info.device, non_blocking=True)
            mask = batch["mask"].to(info.device, non_blocking=True)
            micro_idx += 1
            last_micro = micro_idx == accum
            # Only the last micro-batch of a step all-reduces gradients.
            sync = ddp.no_sync() if info.distributed and not last_micro else contextlib.nullcontext()
            with sync:
                with _autocast(t.precision, info.device):
                    logits, loss = ddp(images, tokens, mask)
                if t.dice_weight > 0:
                    loss = loss.float() + t.dice_weight * upsampled_dice_loss(logits, mask)
                scaler.scale(loss.float() / accum).backward()
            loss_sum += loss.detach().float()
            if not last_micro:
                continue
            # The elapsed time travels with the loss through one reduction, so that every process
            # sees the same clock: the time budget and a time-based schedule then agree across ranks.
            clock = torch.tensor((time.monotonic() - t0) / 60, device=info.device)
            step_loss, minutes = all_reduce_mean(torch.stack([loss_sum / accum, clock]), info).tolist()
            micro_idx, loss_sum = 0, torch.zeros((), device=info.device)
            if not math.isfinite(step_loss):
                good = last_path if last_path.is_file() else None
                raise TrainingDiverged(
                    f"non-finite loss ({step_loss}) at optimizer step {global_step + 1} (epoch {epoch}); "
                    f"the step was not taken. Last good checkpoint: {good or 'none yet'}"
                )
            if t.max_norm > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], t.max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            step_in_epoch += 1
            lr_used = optimizer.param_groups[0]["lr"]
            if per_step:
                scheduler.update(global_step, minutes)
            if info.is_main:
                logger.log({"kind": "train", "epoch": epoch, "global_step": global_step, "loss": step_loss,
                            "lr": lr_used, "minutes": round(minutes, 4)})
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix(epoch=epoch, loss=f"{step_loss:.4f}")
            out_of_time = t.max_minutes is not None and minutes >= t.max_minutes
            if (t.max_steps is not None and global_step >= t.max_steps) or out_of_time:
                stop_reason = "max_steps" if not out_of_time else "max_minutes"
                stopped = True
                break
            if t.save_every_steps and global_step % t.save_every_steps == 0 and step_in_epoch < sampler.steps_per_epoch:
                save(epoch, step_in_epoch)
        if stopped:
            if t.evaluate:
                last_val = run_validation(epoch)
            save(epoch, step_in_epoch) if step_in_epoch < sampler.steps_per_epoch else None
            if step_in_epoch >= sampler.steps_per_epoch:
                if not per_step:
                    scheduler.step()
                save(epoch + 1, 0)
            break
        if not per_step:
            scheduler.step()
        if t.evaluate:
            last_val = run_validation(epoch)
        save(epoch + 1, 0)
    if pbar is not None:
        pbar.close()

    summary = {
        "stop_reason": stop_reason,
        "global_step": global_step,
        "train_minutes": (time.monotonic() - t0) / 60,
        "last_val": last_val,
        "best": best,
        "world_size": info.world_size,
        "global_batch": sampler.global_batch,
        "micro_batch": micro,
        "accumulation": accum,
        "run_dir": str(run_dir),
    }
    if info.is_main:
        logger.close()
        if cfg.output.plot:
            png = plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
            summary["curves"] = str(png) if png else None
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
