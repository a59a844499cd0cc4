"""Generalized referring segmentation (gRefCOCO) metrics, as ReLA's evaluation counts them.

An expression may refer to no object (its ground truth is empty) or to several (the union of their
masks). Positives are the *no-target* samples. Per sample, with P the predicted mask as it is (ReLA does
not empty it when the model says "no target"), G the ground truth, I = |P ∩ G|, U = |P ∪ G|:

================================  =======  ==========  ========================
sample / prediction               outcome  sample IoU  adds to (ΣI, ΣU)
================================  =======  ==========  ========================
no target / "no target"           TP       1           (0, 0)
no target / a target              FN       0           (0, U) -- U = |P|
target / "no target"              FP       0           (0, U)
target / a target                 TN       I / U       (I, U)
================================  =======  ==========  ========================

gIoU = mean sample IoU over all samples; cIoU = ΣI / ΣU; N-acc = TP / (TP + FN); T-acc = TN / (TN + FP);
Pr@0.7/0.8/0.9 = share of *target* samples with IoU >= the threshold. docs/gres.md cites the lines of
ReLA's ``gres_model/evaluation/refer_evaluation.py`` each rule comes from, and where we differ (an
undefined ratio is NaN here, 0 there). Values are fractions in [0, 1], like `SegmentationMeter`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import sum_over_ranks

__all__ = ["GRES_PR_THRESHOLDS", "GresOutcome", "gres_outcome", "GresMeter"]

#: ReLA's precision thresholds (compared with >=, unlike RefCOCO's Pr@ which uses >).
GRES_PR_THRESHOLDS: tuple[float, ...] = (0.7, 0.8, 0.9)


@dataclass(frozen=True)
class GresOutcome:
    """What one sample adds: its outcome (TP / FN / FP / TN), IoU and the I and U counted for cIoU."""

    kind: str
    iou: float
    intersection: int
    union: int
    has_target: bool


def gres_outcome(pred: np.ndarray, gt: np.ndarray, predicted_no_target: bool) -> GresOutcome:
    """Score one sample: ``pred`` and ``gt`` are masks of the same shape (``gt`` empty for a no-target
    expression, the union of the targets otherwise); ``predicted_no_target`` is the model's decision."""
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    inter, union = int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())
    if not gt.any():
        if predicted_no_target:
            return GresOutcome("TP", 1.0, 0, 0, has_target=False)
        return GresOutcome("FN", 0.0, 0, union, has_target=False)
    if predicted_no_target:
        return GresOutcome("FP", 0.0, 0, union, has_target=True)
    return GresOutcome("TN", inter / union if union else 0.0, inter, union, has_target=True)


@dataclass
class GresMeter:
    """Accumulates `gres_outcome` results; `summary` gives gIoU, cIoU, N-acc, T-acc and Pr@."""

    thresholds: tuple[float, ...] = GRES_PR_THRESHOLDS
    counts: dict[str, int] = field(default_factory=lambda: {"TP": 0, "FN": 0, "FP": 0, "TN": 0})
    iou_sum: float = 0.0
    inter_sum: int = 0
    union_sum: int = 0
    pr_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.pr_counts:
            self.pr_counts = [0] * len(self.thresholds)

    def add(self, pred: np.ndarray, gt: np.ndarray, predicted_no_target: bool) -> GresOutcome:
        """Score and record one sample; returns what it added."""
        outcome = gres_outcome(pred, gt, predicted_no_target)
        self.counts[outcome.kind] += 1
        self.iou_sum += outcome.iou
        self.inter_sum += outcome.intersection
        self.union_sum += outcome.union
        if outcome.has_target:
            for k, t in enumerate(self.thresholds):
                self.pr_counts[k] += outcome.iou >= t
        return outcome

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    _KINDS = ("TP", "FN", "FP", "TN")

    def all_reduce(self, group: Any = None) -> GresMeter:
        """Sum the state over all ranks of ``torch.distributed`` (no-op when not initialised).

        float64 holds the integer counts exactly up to 2**53, far above any pixel count of a benchmark.
        """
        values = [*(self.counts[k] for k in self._KINDS), self.inter_sum, self.union_sum, self.iou_sum,
                  *self.pr_counts]
        vals = sum_over_ranks(torch.tensor(values, dtype=torch.float64), group).cpu().tolist()
        for k, v in zip(self._KINDS, vals[:4]):
            self.counts[k] = int(round(v))
        self.inter_sum, self.union_sum = int(round(vals[4])), int(round(vals[5]))
        self.iou_sum = float(vals[6])
        self.pr_counts = [int(round(v)) for v in vals[7:]]
        return self

    def summary(self) -> dict[str, float]:
        """``gIoU, cIoU, N-acc, T-acc, Pr@70, Pr@80, Pr@90`` (fractions; NaN where a ratio is undefined)
        and the sample counts ``count``, ``no_target``, ``TP``, ``FN``, ``FP``, ``TN``."""
        nan = float("nan")
        c = self.counts
        targets = c["FP"] + c["TN"]
        out = {
            "gIoU": self.iou_sum / self.count if self.count else nan,
            "cIoU": self.inter_sum / self.union_sum if self.union_sum else nan,
            "N-acc": c["TP"] / (c["TP"] + c["FN"]) if c["TP"] + c["FN"] else nan,
            "T-acc": c["TN"] / targets if targets else nan,
        }
        for t, n in zip(self.thresholds, self.pr_counts, strict=True):
            out[f"Pr@{round(100 * t)}"] = n / targets if targets else nan
        out.update(count=self.count, no_target=c["TP"] + c["FN"], **{k: float(v) for k, v in c.items()})
        return out
