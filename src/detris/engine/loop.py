"""The training loop: data, model, optimizer, DDP, mixed precision, validation, checkpoints, records."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..build import build_model
from ..bundled import tiny_tower_paths
from ..data.catalog import GREFCOCO, open_datasets
from ..data.datasets import collate
from ..data.images import ImageLoadError
from ..data.pipeline import loader_batches
from ..evaluate import GRES_METRIC_KEYS, METRIC_KEYS, evaluate
from ..modeling import DETRIS
from ..precision import autocast, autocast_dtype
from ..utils import FileWriteError, check_output_dir, free_space_text
from ..variants import get_variant
from .checkpoint import (
    PREVIOUS_NAME,
    CheckpointSaveError,
    capture_rng,
    load_resume_checkpoint,
    restore_rng,
    restore_weights,
    save_checkpoint,
    save_failure,
)
from .config import BUNDLED, RunConfig, config_to_dict
from .distributed import (
    DistInfo,
    GlobalBatchSampler,
    all_reduce_mean,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
    keep_grad_layouts,
)
from .schedule import ProgressSchedule
from .task import SegmentationTask
from .tracking import MetricsLogger, plot_curves, trim_metrics

__all__ = ["TrainingDiverged", "train", "run_training", "validate", "build_datasets"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


# ------------------------------------------------------------------------------------------ set-up
def _synthetic_root(cfg: RunConfig, run_dir: Path, info: DistInfo) -> Path:
    """Write the synthetic scenes once (rank 0), keyed by their parameters: in the REFER layout as
    ``refcoco`` (read by the REFER loader), or generalized in the gRefCOCO layout."""
    from ..data.synthetic import write_grefcoco_layout, write_refer_layout

    s = cfg.data.synthetic
    root = run_dir / "data"
    params = json.dumps(dict(vars(s)), sort_keys=True)
    marker = root / "synthetic.json"
    if info.is_main and not (marker.is_file() and marker.read_text() == params):
        splits = {"train": s.train_images, "val": s.val_images} | ({"test": s.test_images} if s.test_images else {})
        common: dict[str, Any] = dict(splits=splits, seed=s.seed,
                                      image_size=tuple(s.image_size), min_objects=s.min_objects,
                                      max_objects=s.max_objects, max_expressions=s.max_expressions)
        if s.generalized:
            write_grefcoco_layout(root, multi_target_refs=s.multi_target_refs, no_target_refs=s.no_target_refs,
                                  **common)
        else:
            write_refer_layout(root, dataset_name="refcoco", **common)
        marker.write_text(params)
    if info.distributed:
        torch.distributed.barrier()
    return root


def build_datasets(cfg: RunConfig, run_dir: Path, info: DistInfo, input_size: int, word_len: int) -> tuple[Any, Any]:
    """(train, val) datasets of the config; missing files raise FileNotFoundError naming them."""
    d = cfg.data
    common: dict[str, Any] = dict(input_size=input_size, word_len=word_len, seed=cfg.train.seed,
                                  skip_bad=d.skip_bad)
    splits = [(d.train_split, "train"), (d.val_split, "val")]
    if d.dataset == "synthetic":
        root = _synthetic_root(cfg, run_dir, info)
        name = GREFCOCO if d.synthetic.generalized else "refcoco"
        train_ds, val_ds = open_datasets(name, root, root / "images", splits, **common)
        return train_ds, val_ds
    # RunConfig.validate guarantees both roots for every dataset but the synthetic one.
    data_root, image_root = Path(str(d.data_root)), Path(str(d.image_root))
    if not data_root.is_dir():
        raise FileNotFoundError(f"data.data_root {d.data_root} does not exist")
    if not image_root.is_dir():
        raise FileNotFoundError(f"data.image_root {d.image_root} does not exist (the COCO train2014 images)")
    train_ds, val_ds = open_datasets(d.dataset, data_root, image_root, splits, parts=d.mixed, **common)
    return train_ds, val_ds


def _backbone_files(cfg: RunConfig) -> dict[str, str | None]:
    """The backbone files of ``model.dinov2_weights`` / ``model.clip_weights`` ("bundled" resolved)."""
    files: dict[str, str | None] = {}
    for kind, value in (("dinov2", cfg.model.dinov2_weights), ("clip", cfg.model.clip_weights)):
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


def _param_groups(model: DETRIS) -> list[dict[str, Any]]:
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
    model: DETRIS,
    dataset,
    info: DistInfo,
    batch_size: int,
    precision: str = "float32",
    max_items: int | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Official validation (first sentence per ref) through the evaluation's scoring loop; each rank
    scores every ``world_size``-th item and the meters are summed over ranks. A generalized set
    (gRefCOCO) gives the GRES metrics instead of mIoU/oIoU/Pr@."""
    result = evaluate(
        model, dataset, batch_size=batch_size, device=info.device, workers=num_workers, progress=False,
        batch_invariant=False, dtype=autocast_dtype(precision), rank=info.rank, world_size=info.world_size,
        max_items=max_items,
    )
    keys = GRES_METRIC_KEYS if getattr(dataset, "generalized", False) else METRIC_KEYS
    return {**{k: result[k] for k in keys}, "count": result["expressions"]}


def selection_metric(dataset: Any) -> str:
    """The validation metric that picks the best model: gIoU on generalized sets, else mIoU."""
    return "gIoU" if getattr(dataset, "generalized", False) else "mIoU"


# ------------------------------------------------------------------------------------------ training
def train(cfg: RunConfig, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary also written to ``summary.json``.

    ``resume``: a checkpoint path, or ``auto`` for ``<output.dir>/checkpoints/last.pt``; a damaged
    ``last.pt`` falls back to the ``previous.pt`` kept beside it.

    SIGTERM (what torchrun and cluster schedulers send on preemption) ends the run after the current
    optimizer step: a checkpoint is saved and the summary's ``stop_reason`` is ``sigterm``.
    """
    threads = torch.get_num_threads()
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    stop = threading.Event()
    previous_handler = _catch_sigterm(stop)
    try:
        return run_training(cfg, info, resume, stop)
    except CheckpointSaveError:
        raise
    except OSError as err:
        if err.errno not in _DISK_ERRNOS:
            raise
        raise _run_write_failure(cfg, err) from err
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        cleanup_distributed()
        torch.set_num_threads(threads)  # the caller's setting, for whatever runs next in this process


#: Write failures that end a run with "free some space, then --resume auto" (exit status 4).
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _run_write_failure(cfg: RunConfig, err: OSError) -> CheckpointSaveError:
    """A run file other than a checkpoint (``metrics.jsonl``, ``summary.json``, ...) could not be written:
    the file, the free space, the checkpoint that is intact, the fix."""
    failed = Path(err.filename or cfg.output.dir)
    reason = err.strerror or str(err)
    if not isinstance(err, FileWriteError):
        reason = f"{reason}; {free_space_text(failed)}"
    last = Path(cfg.output.dir) / "checkpoints" / "last.pt"
    intact = f"the last checkpoint {last} is intact" if last.is_file() else "no checkpoint was saved yet"
    return CheckpointSaveError(
        err.errno, f"could not write {failed} ({reason}); {intact}. Free some space (or choose another "
        "output.dir) and resume with --resume auto"
    )


def _catch_sigterm(stop: threading.Event) -> Any:
    """Make SIGTERM set ``stop`` (checked after each optimizer step); returns the handler it replaced.

    Only the main thread may install signal handlers; elsewhere (a training run in a worker thread)
    SIGTERM keeps its default meaning.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    return signal.signal(signal.SIGTERM, request_stop)


@dataclass
class _Run:
    """Everything a training run holds between its steps (built by `_setup`)."""

    cfg: RunConfig
    info: DistInfo
    run_dir: Path
    model: DETRIS  # the model itself: what is saved and validated
    ddp: nn.Module  # what the training forward runs: the SegmentationTask, or its DDP wrapper
    backbones: dict[str, str | None]  # the base backbone files (None: random init), for adapter-only saves
    optimizer: torch.optim.Optimizer
    scheduler: Any  # MultiStepLR (per epoch) or ProgressSchedule (per step)
    scaler: torch.amp.GradScaler
    sampler: GlobalBatchSampler
    loader: DataLoader
    loader_gen: torch.Generator
    train_ds: Any
    val_ds: Any
    accum: int
    micro: int
    logger: MetricsLogger | None  # on the main process only
    start_epoch: int = 0
    start_step: int = 0
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"mIoU": -1.0, "epoch": None})
    last_val: dict[str, float] = field(default_factory=dict)
    stop_reason: str = "finished"
    t0: float = 0.0
    pbar: Any = None
    stop: threading.Event = field(default_factory=threading.Event)  # set by SIGTERM (this process)
    stop_agreed: bool = False  # some rank saw SIGTERM by the last step: all ranks stop after it
    minutes: float = 0.0  # training minutes at the last optimizer step (reduced: the same on every rank)
    saved_minutes: float = 0.0  # ... at the last checkpoint (for train.save_every_minutes)
    bad_items: int = 0  # unreadable training items skipped so far, over all ranks (data.max_bad_items)
    bad_here: list[str] = field(default_factory=list)  # this rank's skip reasons since the last step
    replay: dict[str, Any] | None = None  # this rank's last readable micro-batch (DDP, skipping on)

    @property
    def skipping(self) -> bool:
        """Whether unreadable training items are skipped rather than an error at once."""
        return self.cfg.data.skip_bad or self.cfg.data.max_bad_items > 0

    @property
    def per_step(self) -> bool:
        return self.cfg.train.lr_schedule != "multistep"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"


def _build_model(cfg: RunConfig, info: DistInfo, mcfg: Any, backbones: dict[str, str | None]) -> DETRIS:
    model = build_model(mcfg, dinov2_weights=backbones["dinov2"], clip_weights=backbones["clip"])
    if cfg.model.train_backbones:
        model.requires_grad_(True)
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if info.distributed and cfg.model.sync_bn and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(info.device)


def _setup(cfg: RunConfig, resume: str | None, info: DistInfo) -> _Run:
    """Data, model, optimizer and schedule of a run, restored from a checkpoint when resuming."""
    t = cfg.train
    run_dir = Path(cfg.output.dir)
    if info.is_main:
        check_output_dir(run_dir, "output.dir")
    if autocast_dtype(t.precision) == torch.float16 and info.device.type != "cuda":
        raise ValueError("train.precision=float16 needs a GPU (GradScaler); use bfloat16 on CPU")
    ckpt, source = None, _resume_source(resume, run_dir, info)
    if source is not None:
        ckpt, used = load_resume_checkpoint(source)
        if info.is_main:
            print(f"detris train: resuming from {used} (epoch {ckpt['epoch']}, global step {ckpt['global_step']})",
                  flush=True)

    # Same seed on every rank: every process builds the same (random-init) backbones and heads.
    mcfg = get_variant(cfg.model.variant, **cfg.model.overrides)  # sizes, without building anything
    backbones = _backbone_files(cfg)  # missing files fail before the data is written
    # With data.max_bad_items the datasets hand over unreadable items as markers; the loop bounds them.
    data_cfg = cfg if not cfg.data.max_bad_items else dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, skip_bad=True))
    train_ds, val_ds = build_datasets(data_cfg, run_dir, info, cfg.data.input_size or mcfg.image_size, mcfg.word_len)
    _seed_everything(t.seed)
    model = _build_model(cfg, info, mcfg, backbones)

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
        train_ds, batch_sampler=sampler, collate_fn=_train_collate, num_workers=cfg.data.num_workers,
        generator=loader_gen,
    )
    # The fused kernel updates every tensor in one pass (the same Adam arithmetic); the per-tensor loop
    # of the default costs several times more, which shows on small models.
    optimizer = torch.optim.Adam(_param_groups(model), lr=t.lr, weight_decay=t.weight_decay,
                                 fused=info.device.type in ("cpu", "cuda"))
    total_steps = t.epochs * sampler.steps_per_epoch
    total_steps = min(total_steps, t.max_steps) if t.max_steps is not None else total_steps
    if t.lr_schedule != "multistep":
        scheduler: Any = ProgressSchedule(optimizer, total_steps, t.max_minutes, t.warmup_steps)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(t.milestones), gamma=t.lr_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(t.precision) == torch.float16)
    task = SegmentationTask(model, dice_weight=t.dice_weight)
    run = _Run(cfg, info, run_dir, model, task, backbones, optimizer, scheduler, scaler, sampler, loader, loader_gen,
               train_ds, val_ds, accum, micro, logger=None)
    if ckpt is not None:
        _restore(run, ckpt)
    if info.distributed:
        keep_grad_layouts(model)
        run.ddp = nn.parallel.DistributedDataParallel(
            task, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    if info.is_main:
        redone = trim_metrics(run_dir / "metrics.jsonl", run.global_step) if ckpt is not None else 0
        run.logger = MetricsLogger(run_dir, cfg.output.tensorboard)
        if ckpt is not None:
            run.logger.log({"kind": "resume", "global_step": run.global_step, "epoch": run.start_epoch,
                            "steps_redone": redone})
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return run


def _resume_source(resume: str | None, run_dir: Path, info: DistInfo) -> Path | None:
    """The checkpoint to resume from: ``resume`` itself, or for ``auto`` ``checkpoints/last.pt`` when a
    checkpoint exists there (a fresh start otherwise, said on stdout: a launcher's restarts and the
    first start are then one command)."""
    if not resume:
        return None
    if resume != "auto":
        return Path(resume)
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file() or last.with_name(PREVIOUS_NAME).is_file():
        return last
    if info.is_main:
        print(f"detris train: no checkpoint in {last.parent}; starting fresh (--resume auto)", flush=True)
    return None


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    restore_weights(run.model, ckpt)
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        run.start_epoch, run.start_step, run.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        run.best = dict(ckpt["best"])
        run.bad_items = int(ckpt.get("bad_items", 0))
        restore_rng(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        # The file loaded but its training state does not fit this run (another config, a damaged entry).
        raise ValueError(
            f"the checkpoint's training state cannot be restored into this run ({type(err).__name__}: {err}); "
            "was it written with another config?"
        ) from None


def _save(run: _Run, epoch: int, step_in_epoch: int) -> None:
    """Checkpoint the run (rank 0 writes; every rank takes rank 0's BatchNorm statistics first)."""
    broadcast_buffers(run.model, run.info)
    run.saved_minutes = run.minutes
    if not run.info.is_main:
        return
    save_checkpoint(
        run.last_path, run.model, run.cfg.output.save_full,
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
        rng=capture_rng(), epoch=epoch, step_in_epoch=step_in_epoch, global_step=run.global_step,
        best=run.best, bad_items=run.bad_items, config=config_to_dict(run.cfg),
    )


def _run_validation(run: _Run, epoch: int) -> None:
    """Validate (every rank scores its share with rank 0's BatchNorm statistics: those of the model
    that is saved); rank 0 logs the result and saves ``best/`` when it improves."""
    t = run.cfg.train
    broadcast_buffers(run.model, run.info)
    summary = validate(run.model, run.val_ds, run.info, t.val_batch_size, t.precision, t.val_max_items,
                       run.cfg.data.num_workers)
    run.last_val = summary
    if not run.info.is_main:
        return
    assert run.logger is not None
    run.logger.log({"kind": "val", "epoch": epoch, "global_step": run.global_step,
                    "minutes": round((time.monotonic() - run.t0) / 60, 4), **summary})
    key = selection_metric(run.val_ds)
    if summary[key] > run.best.get(key, -1.0):
        run.best = {key: summary[key], "epoch": epoch, "global_step": run.global_step}
        base = {k: v for k, v in run.backbones.items() if v is not None}
        adapter_only = not run.cfg.output.save_full and len(base) == len(run.backbones)
        # Random-init backbones (no weight files) cannot be re-created from a file, so the exported model
        # then holds every weight.
        try:
            run.model.save_pretrained(run.run_dir / "best", adapter_only=adapter_only,
                                      base_weights=base if adapter_only else None)
        except OSError as err:
            raise save_failure(run.run_dir / "best", err, "best model directory") from err


def _micro_step(run: _Run, batch: dict[str, Any], last_micro: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its (detached) loss.

    A micro-batch whose items were all unreadable (skipped) adds nothing. Under DDP every rank must
    still run a forward (DDP synchronises buffers and gradients there): that rank replays its last
    readable micro-batch with weight 0 and its BatchNorm statistics frozen.
    """
    t, dev = run.cfg.train, run.info.device
    weight = 1.0
    if "image" not in batch:
        if not run.info.distributed:
            return torch.zeros((), device=dev)
        batch, weight = _replay(run), 0.0
    elif run.info.distributed and run.skipping:
        run.replay = batch
    images = batch["image"].to(dev, non_blocking=True)
    tokens = batch["tokens"].to(dev, non_blocking=True)
    mask = batch["mask"].to(dev, non_blocking=True)
    # "Refers to nothing" labels for a no-target head (ignored by a model without one).
    no_target = torch.as_tensor(batch["no_target"], dtype=torch.bool, device=dev)
    # Only the last micro-batch of a step all-reduces gradients.
    sync: Any = run.ddp.no_sync() if run.info.distributed and not last_micro else contextlib.nullcontext()  # type: ignore[operator]
    frozen = _frozen_batchnorm(run.model) if weight == 0 else contextlib.nullcontext()
    with sync, frozen:
        with autocast(t.precision, dev.type):
            loss = run.ddp(images, tokens, mask, no_target).loss.total
        run.scaler.scale(loss.float() * weight / run.accum).backward()
    return loss.detach().float() * weight


def _replay(run: _Run) -> dict[str, Any]:
    """This rank's last readable micro-batch; before there is one, the first readable training item."""
    if run.replay is None:
        item = next((it for it in map(run.train_ds.__getitem__, range(len(run.train_ds))) if "image" in it), None)
        if item is None:
            raise ImageLoadError("no training item can be read: every image is missing or damaged")
        run.replay = collate([item]) or {}
    return run.replay


@contextlib.contextmanager
def _frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep their running statistics (momentum 0) and batch counts inside the block."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(layers, kept):
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


def _train_collate(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """`collate` for training: a micro-batch whose items were all skipped still comes, without ``image``
    (it counts as a micro-step on every rank); the skip reasons come along (``skip_reasons``)."""
    out = collate(batch) or {}
    out["skip_reasons"] = [str(m.get("reason") or m.get("skipped")) for m in batch
                           if m is not None and "image" not in m]
    return out


def _note_bad_items(run: _Run, batch: dict[str, Any]) -> None:
    """Warn about the micro-batch's skipped items; they are counted over ranks at the optimizer step."""
    for reason in batch.get("skip_reasons", []):
        limit = "no limit (data.skip_bad)" if run.cfg.data.skip_bad else f"data.max_bad_items={run.cfg.data.max_bad_items}"
        print(f"detris train: warning: skipped an unreadable training item ({limit}): {reason}", file=sys.stderr)
        run.bad_here.append(reason)


def _check_bad_items(run: _Run, new: int) -> None:
    """Add the step's skipped items (over all ranks); past ``data.max_bad_items`` the run stops."""
    run.bad_items += new
    seen, run.bad_here = run.bad_here, []
    limit = run.cfg.data.max_bad_items
    if run.cfg.data.skip_bad or run.bad_items <= limit:
        return
    last = f"the last one here: {seen[-1]}" if seen else "see the other processes' warnings"
    raise ImageLoadError(
        f"{run.bad_items} unreadable training items, more than data.max_bad_items={limit}; {last}. Fix or "
        "remove the files, or raise data.max_bad_items"
    )


def _optimizer_step(run: _Run, loss_sum: torch.Tensor, epoch: int) -> float:
    """Reduce the step's loss and clock over ranks, check it, step; returns the elapsed minutes."""
    t = run.cfg.train
    # The elapsed time travels with the loss through one reduction, so that every process sees the
    # same clock: the time budget and a time-based schedule then agree across ranks.
    clock = torch.tensor((time.monotonic() - run.t0) / 60, device=run.info.device)
    # A SIGTERM seen by any rank travels with them too: every rank then stops after the same step.
    stop = torch.tensor(float(run.stop.is_set()), device=run.info.device)
    # And the number of unreadable items skipped (a mean over ranks: times the world size is the sum).
    bad = torch.tensor(float(len(run.bad_here)), device=run.info.device)
    step_loss, minutes, stopping, bad_mean = all_reduce_mean(
        torch.stack([loss_sum / run.accum, clock, stop, bad]), run.info).tolist()
    _check_bad_items(run, round(bad_mean * run.info.world_size))
    # Decided on the reduced value only: a signal arriving after the reduction waits for the next step,
    # else one rank would stop while another waits for it in the next reduction.
    run.stop_agreed = stopping > 0
    if not math.isfinite(step_loss):
        good = run.last_path if run.last_path.is_file() else None
        raise TrainingDiverged(
            f"non-finite loss ({step_loss}) at optimizer step {run.global_step + 1} (epoch {epoch}); "
            f"the step was not taken. Last good checkpoint: {good or 'none yet'}"
        )
    if t.max_norm > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], t.max_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.global_step += 1
    run.minutes = minutes
    lr_used = run.optimizer.param_groups[0]["lr"]
    if run.per_step:
        run.scheduler.update(run.global_step, minutes)
    if run.logger is not None:
        run.logger.log({"kind": "train", "epoch": epoch, "global_step": run.global_step, "loss": step_loss,
                        "lr": lr_used, "minutes": round(minutes, 4),
                        **({"bad_items": run.bad_items} if run.bad_items else {})})
        if run.pbar is not None:
            run.pbar.update(1)
            run.pbar.set_postfix(epoch=epoch, loss=f"{step_loss:.4f}")
    return minutes


def _train_epoch(run: _Run, epoch: int) -> tuple[bool, int]:
    """One epoch (or what is left of it when resuming); returns (stopped early, steps done in it)."""
    t = run.cfg.train
    run.train_ds.set_epoch(epoch)
    run.sampler.set_epoch(epoch, run.start_step if epoch == run.start_epoch else 0)
    run.loader_gen.manual_seed(t.seed + epoch)
    step_in_epoch = run.sampler.start_step
    micro_idx, loss_sum = 0, torch.zeros((), device=run.info.device)
    for batch in loader_batches(run.loader):
        _note_bad_items(run, batch)
        micro_idx += 1
        loss_sum += _micro_step(run, batch, micro_idx == run.accum)
        if micro_idx < run.accum:
            continue
        minutes = _optimizer_step(run, loss_sum, epoch)
        micro_idx, loss_sum = 0, torch.zeros((), device=run.info.device)
        step_in_epoch += 1
        out_of_time = t.max_minutes is not None and minutes >= t.max_minutes
        if run.stop_agreed:
            run.stop_reason = "sigterm"
            return True, step_in_epoch
        if (t.max_steps is not None and run.global_step >= t.max_steps) or out_of_time:
            run.stop_reason = "max_steps" if not out_of_time else "max_minutes"
            return True, step_in_epoch
        if _periodic_save_due(run, step_in_epoch):
            _save(run, epoch, step_in_epoch)
    return False, step_in_epoch


def _periodic_save_due(run: _Run, step_in_epoch: int) -> bool:
    """A mid-epoch checkpoint now (``train.save_every_steps`` / ``save_every_minutes``; the end of an
    epoch saves anyway). Decided on values every rank shares, so all ranks save after the same step."""
    t = run.cfg.train
    if step_in_epoch >= run.sampler.steps_per_epoch:
        return False
    by_steps = bool(t.save_every_steps) and run.global_step % t.save_every_steps == 0
    by_time = t.save_every_minutes > 0 and run.minutes - run.saved_minutes >= t.save_every_minutes
    return by_steps or by_time


def _epochs(run: _Run) -> None:
    t = run.cfg.train
    for epoch in range(run.start_epoch, t.epochs):
        stopped, step_in_epoch = _train_epoch(run, epoch)
        epoch_done = step_in_epoch >= run.sampler.steps_per_epoch
        # After SIGTERM the grace period before SIGKILL is short (torchrun: 30 s): save, skip validation.
        validate_now = t.evaluate and run.stop_reason != "sigterm"
        if stopped and not epoch_done:
            if validate_now:
                _run_validation(run, epoch)
            _save(run, epoch, step_in_epoch)
            return
        if not run.per_step:
            run.scheduler.step()
        if validate_now:
            _run_validation(run, epoch)
        _save(run, epoch + 1, 0)
        if stopped:
            return


def _finish(run: _Run) -> dict[str, Any]:
    if run.pbar is not None:
        run.pbar.close()
    summary = {
        "stop_reason": run.stop_reason,
        "global_step": run.global_step,
        "train_minutes": (time.monotonic() - run.t0) / 60,
        "last_val": run.last_val,
        "best": run.best,
        "world_size": run.info.world_size,
        "global_batch": run.sampler.global_batch,
        "micro_batch": run.micro,
        "accumulation": run.accum,
        "run_dir": str(run.run_dir),
        "rank": run.info.rank,
        "bad_items": run.bad_items,
    }
    if run.logger is not None:
        run.logger.close()
        if run.cfg.output.plot:
            png = plot_curves(run.run_dir / "metrics.jsonl", run.run_dir / "curves.png")
            summary["curves"] = str(png) if png else None
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_training(
    cfg: RunConfig, info: DistInfo, resume: str | None = None, stop: threading.Event | None = None
) -> dict[str, Any]:
    """The run itself, as `train` runs it, in a process whose place in the world the caller has set
    (``info``: rank, world size, device; for more than one process the caller has joined the process
    group). Nothing around it: no thread setting, SIGTERM handler or group teardown. ``stop``: an event
    that, once set, ends the run after the current optimizer step (with a checkpoint)."""
    run = _setup(cfg, resume, info)
    if stop is not None:
        run.stop = stop
    run.t0 = time.monotonic()
    if info.is_main and cfg.output.progress:
        from tqdm import tqdm

        # A wall-time budget usually ends the run long before the epochs do: no step total (and no
        # misleading time estimate) then, only the step count and rate.
        total = cfg.train.epochs * run.sampler.steps_per_epoch
        total = min(total, cfg.train.max_steps) if cfg.train.max_steps is not None else total
        run.pbar = tqdm(total=None if cfg.train.max_minutes is not None else total, initial=run.global_step,
                        unit="step", dynamic_ncols=True)
    run.model.train()
    _epochs(run)
    return _finish(run)
