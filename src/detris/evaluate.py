"""Evaluation with the official DETRIS test protocol (``detris eval`` and the Python API).

What one expression goes through (the official ``engine/engine.py: inference``; docs/data.md):

1. the dataset item (test mode: every sentence of every ref): letterboxed image ``(3, S, S)``, tokens
   ``(L,)``, the inverse letterbox matrix, the original size and the original-size ground truth;
2. the model forward in eval mode under ``torch.inference_mode`` in float32 -> logits ``(1, 1, h, w)``;
3. `detris.postprocess.logits_to_probability`: sigmoid, bicubic (``align_corners=True``) to ``S``,
   inverse affine (cubic, border 0) to the original ``(H, W)``;
4. `detris.postprocess.binarize`: ``prob > 0.35``;
5. `detris.metrics.SegmentationMeter`: ``IoU = I / (U + 1e-6)`` per expression, mIoU, oIoU
   (``sum I / sum U``) and Pr@50..90 (share of IoUs strictly above the threshold).

Generalized sets (gRefCOCO, and any dataset whose ``generalized`` attribute is true: expressions that
refer to several objects or to none) are scored instead with `detris.gres_metrics.GresMeter` as ReLA
scores them: gIoU, cIoU, N-acc, T-acc and Pr@70..90, from the mask as predicted and the model's
no-target decision (`detris.inference.Segmentation`).

Batch size and exactness: a convolution or a matrix product over a batch of 8 does not round exactly
like the same op over one sample (CPU oneDNN/MKL and cuDNN/cuBLAS pick kernels by shape), so logits of
a batched forward differ from a batch-1 forward in the last bits (about 1e-5 for DETRIS-tiny on CPU),
which can flip a pixel whose probability lies at the 0.35 threshold. By default (``batch_invariant=True``)
`evaluate` therefore loads, collates and transfers data in batches of ``batch_size`` but runs the model
on one sample at a time -- exactly what the official test loop does (its test loader has batch size 1) --
so the numbers and the saved masks do not depend on ``batch_size`` or ``workers``. ``batch_invariant=False``
runs one forward per batch: faster on a GPU, with results that may differ from batch 1 by a few
threshold pixels.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .data.datasets import collate
from .data.pipeline import loader_batches
from .gres_metrics import GRES_PR_THRESHOLDS, GresMeter
from .inference import Segmentation, segment
from .metrics import PR_KEYS, SegmentationMeter, intersection_union
from .modeling import DETRIS
from .postprocess import DEFAULT_THRESHOLD
from .utils import resolve_device, write_failure

__all__ = ["GRES_METRIC_KEYS", "METRIC_KEYS", "PREDICTIONS_JSONL", "evaluate", "format_table",
           "json_safe"]

PathLike = str | os.PathLike

#: Metric keys in table/JSON order.
METRIC_KEYS: tuple[str, ...] = ("mIoU", "oIoU", *PR_KEYS)
#: The same for generalized sets (gRefCOCO).
GRES_METRIC_KEYS: tuple[str, ...] = ("gIoU", "cIoU", "N-acc", "T-acc",
                                     *(f"Pr@{round(100 * t)}" for t in GRES_PR_THRESHOLDS))
PREDICTIONS_JSONL = "predictions.jsonl"


# ------------------------------------------------------------------------------------------ helpers


def _eval_collate(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """`detris.data.collate` that never returns ``None`` and keeps the skip reasons.

    `collate` returns ``None`` for a batch whose items were all skipped, which would lose their paths;
    here such a batch is ``{"skipped": [...], "skip_reasons": [...]}`` without ``image``.
    Module-level so that DataLoader workers can pickle it.
    """
    markers = [it for it in batch if it is not None and "image" not in it]
    out = collate(batch)
    if out is None:
        out = {"skipped": [m.get("skipped", "<unknown>") for m in markers]}
    out["skip_reasons"] = [str(m.get("reason", "")) for m in markers]
    return out


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def _plain(value: Any) -> Any:
    """numpy / torch scalars -> Python scalars, so ids serialise to JSON and format into names."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_safe(value: Any) -> Any:
    """Recursively replace NaN/inf (not valid JSON) by ``None`` and numpy scalars by Python ones."""
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class _PredictionWriter:
    """Writes ``<ref_id>_<sent_id>.png`` (0/255, original size) and ``predictions.jsonl`` as results come.

    A file name is made of the ids with characters outside ``[A-Za-z0-9._+-]`` replaced by ``_``. Ids
    repeat across the parts of a mixed dataset: a name already written in this run gets the item's
    dataset as a prefix (and, should that collide too, its running index); the ``mask`` field of each
    JSONL record names the file actually written.
    """

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise FileExistsError(f"--save-predictions: {self.directory} exists and is not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._names: set[str] = set()
        # Unbuffered: every record reaches the file as soon as it is written, so an interrupted run keeps
        # what it has scored; a record a full disk cuts short is taken back (``_good`` bytes are whole lines).
        self._jsonl: IO[bytes] = open(self.directory / PREDICTIONS_JSONL, "wb", buffering=0)
        self._good = 0
        self.count = 0

    def _name(self, ref_id: Any, sent_id: Any, dataset: Any) -> str:
        base = _UNSAFE_NAME.sub("_", f"{ref_id}_{sent_id}")
        for candidate in (base, _UNSAFE_NAME.sub("_", f"{dataset}_{base}"), f"{base}_{self.count}"):
            if candidate not in self._names:
                self._names.add(candidate)
                return candidate + ".png"
        raise AssertionError("unreachable: the running index makes the last name unique")

    def write(self, pred: np.ndarray, record: dict[str, Any]) -> str:
        """Save ``pred`` (bool ``(H, W)``) and append ``record`` (+ the file name) to the JSONL file."""
        name = self._name(record["ref_id"], record["sent_id"], record.get("dataset", ""))
        path = self.directory / name
        if not cv2.imwrite(str(path), pred.astype(np.uint8) * 255):
            path.unlink(missing_ok=True)  # no partial mask left behind
            raise write_failure(path)
        line = memoryview((json.dumps(json_safe({**record, "mask": name}), ensure_ascii=False) + "\n").encode())
        try:
            done = 0
            while done < len(line):
                written = self._jsonl.write(line[done:])
                if not written:
                    raise OSError(errno.EIO, "the file took no more bytes")
                done += written
        except OSError as err:  # a full disk: the mask and the partial record go, one line says why
            self._jsonl.truncate(self._good)
            self._jsonl.seek(self._good)
            path.unlink(missing_ok=True)
            raise write_failure(self.directory / PREDICTIONS_JSONL, err) from err
        self._good += len(line)
        self.count += 1
        return name

    def close(self) -> None:
        self._jsonl.close()


# ------------------------------------------------------------------------------------------ evaluate


@dataclass
class _Scores:
    """What the scoring loop accumulates."""

    meter: SegmentationMeter = field(default_factory=SegmentationMeter)
    gres: GresMeter | None = None  # set for a generalized dataset: then the only meter that counts
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason, first-seen order
    skipped_expressions: int = 0


def _check_arguments(dataset: Dataset, batch_size: int, workers: int, rank: int, world_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the dataset is empty: nothing to evaluate")
    if getattr(dataset, "mode", None) == "train":
        raise ValueError(
            "the dataset is in train mode (one random sentence, no original-size mask); build it with "
            "mode='test' (every sentence, the official evaluation) or mode='val'"
        )


def _shard(dataset: Dataset, rank: int, world_size: int, max_items: int | None) -> Dataset:
    """The items this process scores: every ``world_size``-th of the first ``max_items``."""
    n = len(dataset) if max_items is None else min(len(dataset), max_items)  # type: ignore[arg-type]
    if (n, world_size) == (len(dataset), 1):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(rank, n, world_size))


def _note_skipped(batch: dict[str, Any], scores: _Scores) -> int:
    for path, reason in zip(batch["skipped"], batch["skip_reasons"]):
        scores.skipped_expressions += 1
        if path not in scores.skipped:
            scores.skipped[path] = reason
            # Printed as it happens (through tqdm so the bar is not torn): a long run should not hide
            # a bad file until the end.
            tqdm.write(f"skipped unreadable image: {reason or path}", file=sys.stderr)
    return len(batch["skipped"])


def _score_batch(model: DETRIS, batch: dict[str, Any], dev: torch.device, scores: _Scores,
                 writer: _PredictionWriter | None, options: dict[str, Any]) -> int:
    """Segment and score one collated batch; returns the number of expressions it held."""
    if "mask_orig" not in batch:
        raise ValueError("dataset items lack 'mask_orig' (the original-size ground truth); use mode='test'")
    images = batch["image"].to(dev, non_blocking=True)
    tokens = batch["tokens"].to(dev, non_blocking=True)
    seg = segment(model, images, tokens, batch["letterbox"], **options)
    masks = seg.masks
    for i, mask in enumerate(masks):
        record = {"ref_id": _plain(batch["ref_id"][i]), "sent_id": _plain(batch["sent_id"][i]),
                  "sentence": batch["sentence"][i]}
        if scores.gres is not None:
            record.update(_score_gres(scores.gres, seg, i, batch["mask_orig"][i]))
        else:
            # Pixel counts against the original-size ground truth (non-zero = object).
            inter, union = intersection_union(mask, batch["mask_orig"][i])
            record.update(iou=scores.meter.add(inter, union), intersection=inter, union=union)
        if writer is not None:
            writer.write(mask, {**record, "dataset": batch["dataset"][i], "image": batch["image_path"][i]})
    return len(masks)


def _score_gres(meter: GresMeter, seg: Segmentation, i: int, truth: torch.Tensor) -> dict[str, Any]:
    """ReLA's scoring of sample ``i``: the mask as predicted against the union of the targets."""
    outcome = meter.add(seg.raw_masks[i], truth.numpy(), seg.no_target[i])
    return {"no_target": bool(seg.no_target[i]), "no_target_probability": seg.no_target_probabilities[i],
            "has_target": outcome.has_target, "outcome": outcome.kind, "iou": outcome.iou,
            "I": outcome.intersection, "U": outcome.union}


def _score_loader(model: DETRIS, loader: DataLoader, dev: torch.device, scores: _Scores,
                  writer: _PredictionWriter | None, options: dict[str, Any], total: int, progress: bool) -> None:
    bar = tqdm(total=total, unit="expr", desc="eval", disable=not progress, dynamic_ncols=True)
    try:
        for batch in loader_batches(loader):
            done = _note_skipped(batch, scores)
            if "image" in batch:
                done += _score_batch(model, batch, dev, scores, writer, options)
            bar.update(done)
            if scores.gres is not None and scores.gres.count:
                bar.set_postfix(gIoU=f"{100 * scores.gres.iou_sum / scores.gres.count:.2f}", refresh=False)
            elif scores.meter.count:
                bar.set_postfix(mIoU=f"{100 * scores.meter.iou_sum / scores.meter.count:.2f}", refresh=False)
    finally:
        bar.close()


def evaluate(
    model: DETRIS,
    dataset: Dataset,
    batch_size: int = 8,
    device: None | str | torch.device = None,
    workers: int = 0,
    save_predictions: PathLike | None = None,
    progress: bool = True,
    batch_invariant: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    max_items: int | None = None,
    generalized: bool | None = None,
) -> dict[str, Any]:
    """Score a model on a dataset with the official protocol (see the module docstring).

    The one scoring loop: ``detris eval`` and the training loop's validation both run it.

    Args:
        model: a DETRIS model (``forward(images (N,3,S,S), tokens (N,L)) -> DetrisOutput``). It is
            moved to ``device`` and run in eval mode; its train/eval mode is restored afterwards.
        dataset: a `ReferSegDataset` / `JsonlSegDataset` / `MixedReferDataset` in ``test`` mode (every
            sentence; ``val`` mode -- first sentence per ref -- works too). Items must carry
            ``mask_orig`` and ``letterbox``; with ``skip_bad=True`` unreadable images are
            skipped and reported.
        batch_size: items per DataLoader batch.
        device: ``cpu``, ``cuda``, ``cuda:N``; default CUDA when available.
        workers: DataLoader worker processes (0 = load in this process).
        save_predictions: folder for one ``<ref_id>_<sent_id>.png`` per expression (uint8 0/255 at the
            original image size: the mask a user gets, all zero for a no-target decision) and
            ``predictions.jsonl`` (one record per expression: ``ref_id, sent_id, sentence, iou,
            intersection, union, dataset, image, mask``; for a generalized set ``no_target`` (the
            decision), ``no_target_probability``, ``has_target`` (the ground truth), ``outcome`` and
            the ``I`` and ``U`` the sample adds as ReLA counts them instead of intersection/union),
            written as it goes.
        progress: show a tqdm bar (on stderr).
        batch_invariant: run the model one sample at a time so that results do not depend on
            ``batch_size`` (default, official batch-1 numerics); ``False`` runs one forward per batch.
        threshold: probability threshold (official 0.35, compared with ``>``).
        dtype: low precision of the vision tower (`DETRIS.low_precision`); None = float32 (the
            protocol).
        rank, world_size: score every ``world_size``-th item starting at ``rank`` and sum the meters
            over the processes (``torch.distributed`` must be initialised when ``world_size > 1``).
        max_items: score only the first N items.
        generalized: score with the GRES metrics (see the module docstring); default the dataset's
            ``generalized`` attribute (true for gRefCOCO).

    Returns:
        ``{"mIoU", "oIoU", "Pr@50", ..., "Pr@90"}`` as fractions in [0, 1] (NaN when nothing was
        scored) -- for a generalized set ``{"gIoU", "cIoU", "N-acc", "T-acc", "Pr@70", "Pr@80",
        "Pr@90"}`` and the outcome counts ``"TP", "FN", "FP", "TN"`` instead --, ``"expressions"`` (scored), ``"total_expressions"`` (``len(dataset)``),
        ``"inter_sum"``, ``"union_sum"``, ``"skipped"`` (unique unreadable image paths, in order),
        ``"skip_reasons"`` ({path: message}), ``"skipped_expressions"``, ``"batch_size"``, ``"device"``,
        ``"batch_invariant"``, ``"seconds"`` and, when saving, ``"predictions"`` (the folder).

    Raises:
        ValueError: bad arguments, an empty dataset, train-mode items, or an unreadable image when the
            dataset was not built with ``skip_bad=True`` (the message names it).
    """
    _check_arguments(dataset, batch_size, workers, rank, world_size)
    dev = resolve_device(device)
    items = _shard(dataset, rank, world_size, max_items)
    loader = DataLoader(
        items,
        batch_size=int(batch_size),
        shuffle=False,  # dataset order -> predictions.jsonl order does not depend on the batch size
        num_workers=int(workers),
        collate_fn=_eval_collate,
        pin_memory=dev.type == "cuda",
    )
    writer = _PredictionWriter(save_predictions) if save_predictions is not None else None
    if generalized is None:
        generalized = bool(getattr(dataset, "generalized", False))
    scores = _Scores(gres=GresMeter() if generalized else None)
    options = {"threshold": threshold, "dtype": dtype, "batch_invariant": batch_invariant}
    model.to(dev)
    start = time.perf_counter()
    try:
        _score_loader(model, loader, dev, scores, writer, options, len(items), progress)  # type: ignore[arg-type]
    finally:
        if writer is not None:
            writer.close()
    if world_size > 1:
        scores.meter.all_reduce()
        if scores.gres is not None:
            scores.gres.all_reduce()
    result = _result(scores, len(dataset), batch_size, dev, batch_invariant)  # type: ignore[arg-type]
    result["seconds"] = round(time.perf_counter() - start, 3)
    if writer is not None:
        result["predictions"] = str(writer.directory)
    return result


def _result(scores: _Scores, total: int, batch_size: int, dev: torch.device, batch_invariant: bool) -> dict[str, Any]:
    result: dict[str, Any]
    if scores.gres is not None:
        summary = scores.gres.summary()
        result = {key: summary[key] for key in GRES_METRIC_KEYS}
        result.update({kind: int(summary[kind]) for kind in ("TP", "FN", "FP", "TN")})
        result.update(expressions=scores.gres.count, no_target_expressions=int(summary["no_target"]),
                      inter_sum=scores.gres.inter_sum, union_sum=scores.gres.union_sum)
    else:
        meter = scores.meter
        summary = meter.summary()
        result = {key: summary[key] for key in METRIC_KEYS}
        result.update(expressions=meter.count, inter_sum=meter.inter_sum, union_sum=meter.union_sum)
    result.update(
        total_expressions=total,
        skipped=list(scores.skipped),
        skip_reasons=dict(scores.skipped),
        skipped_expressions=scores.skipped_expressions,
        batch_size=int(batch_size),
        device=str(dev),
        batch_invariant=bool(batch_invariant),
    )
    return result


# ------------------------------------------------------------------------------------------ table


def format_table(rows: Sequence[dict[str, Any]], keys: Sequence[str] = METRIC_KEYS) -> str:
    """Rows ``{"split", "expressions", <keys>...}`` (fractions) -> a text table in percent, 2 decimals."""
    header = f"{'split':<10}{'expressions':>12}" + "".join(f"{k:>8}" for k in keys)
    lines = [header]
    for row in rows:
        cells = []
        for key in keys:
            v = row.get(key)
            cells.append(f"{'n/a':>8}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:>8.2f}")
        lines.append(f"{str(row['split']):<10}{int(row['expressions']):>12}" + "".join(cells))
    return "\n".join(lines)
