"""Referring-segmentation metrics exactly as the official DETRIS evaluation computes them.

Facts reproduced from the official ``engine/engine.py`` (``inference``, ``validate``) and
``utils/misc.py`` (``trainMetricGPU``):

* per sample, with ``I = |pred & gt|`` and ``U = |pred | gt|`` (pixel counts; any non-zero ground-truth
  pixel counts as foreground): ``IoU = I / (U + 1e-6)``, so a sample where both masks are empty
  scores 0, not 1;
* ``mIoU`` is the mean of the per-sample IoUs;
* ``oIoU`` (overall IoU) is ``sum(I) / sum(U)`` over all samples, with *no* epsilon (the official
  code would print NaN when every union is empty; :meth:`SegmentationMeter.summary` returns NaN too);
* ``Pr@t`` is the share of samples with ``IoU > t`` (strict). The official thresholds come from
  ``torch.arange(0.5, 1.0, 0.1)`` in float32, i.e. the float32 roundings of 0.5..0.9, compared with
  the float64 IoUs; :data:`PR_THRESHOLDS` holds those exact values (so an IoU of 0.7 - 1e-12 *does*
  count at Pr@70, as it does officially, because float32(0.7) < 0.7).

Every sample is one (image, sentence) pair; the official test loop scores every sentence of every
referring expression separately.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .postprocess import DEFAULT_THRESHOLD

__all__ = [
    "IOU_EPS",
    "PR_THRESHOLDS",
    "PR_KEYS",
    "intersection_union",
    "sample_iou",
    "batch_intersection_union",
    "batch_iou",
    "train_batch_metrics",
    "SegmentationMeter",
]

#: Added to the union of each sample (official value).
IOU_EPS: float = 1e-6
#: The official Pr@ thresholds: float32(0.5), float32(0.6), ... float32(0.9) as Python floats.
PR_THRESHOLDS: tuple[float, ...] = tuple(
    float(np.float32(t)) for t in (0.5, 0.6, 0.7, 0.8, 0.9)
)
#: Summary keys of the Pr@ values, in the official spelling.
PR_KEYS: tuple[str, ...] = ("Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90")

ArrayLike = np.ndarray | torch.Tensor


def _to_bool(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.bool_:
        return x
    if np.issubdtype(x.dtype, np.number):
        # The official code feeds the ground truth as 0/1 floats to np.logical_and: non-zero is True.
        return x != 0
    raise TypeError(f"{name} must be a bool or numeric mask, got dtype {x.dtype}")


def intersection_union(pred: ArrayLike, gt: ArrayLike) -> tuple[int, int]:
    """Pixel counts ``(I, U)`` of two masks of the same shape (non-zero = foreground)."""
    p = _to_bool(pred, "pred")
    g = _to_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"prediction shape {p.shape} differs from ground-truth shape {g.shape}; "
            "map the prediction back to the original image size first"
        )
    inter = int(np.count_nonzero(p & g))
    union = int(np.count_nonzero(p | g))
    return inter, union


def sample_iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """Official per-sample IoU ``I / (U + 1e-6)`` of two masks of the same shape."""
    inter, union = intersection_union(pred, gt)
    return inter / (union + IOU_EPS)


def batch_intersection_union(
    pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(I, U)`` for a batch.

    Args:
        pred: ``(N, ...)`` bool (or numeric, non-zero = foreground) predicted masks.
        target: ``(N, ...)`` ground-truth masks of the same shape (non-zero = foreground).

    Returns:
        two int64 tensors of shape ``(N,)`` on the input device.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )
    if pred.ndim < 1:
        raise ValueError("pred must have a leading batch axis (N, ...)")
    p = (pred != 0).flatten(1) if pred.ndim > 1 else (pred != 0).unsqueeze(1)
    t = (target != 0).flatten(1) if target.ndim > 1 else (target != 0).unsqueeze(1)
    inter = (p & t).sum(dim=1, dtype=torch.int64)
    union = (p | t).sum(dim=1, dtype=torch.int64)
    return inter, union


def batch_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Official per-sample IoU ``I / (U + 1e-6)`` for a batch, as a float64 ``(N,)`` tensor."""
    inter, union = batch_intersection_union(pred, target)
    return inter.to(torch.float64) / (union.to(torch.float64) + IOU_EPS)


@torch.no_grad()
def train_batch_metrics(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, pr_iou: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official training-time monitor (``trainMetricGPU``): mean IoU and Pr@``pr_iou`` in percent.

    Unlike the evaluation this thresholds with ``sigmoid(logits) >= threshold`` at the logit
    resolution, against the resized target, and computes the IoU in float32.

    Args:
        logits: ``(N, 1, h, w)`` (or ``(N, h, w)`` / ``(N, L)``) raw logits.
        target: same shape, the training target (non-zero = foreground).

    Returns:
        ``(mean_iou_percent, pr_percent)`` as 0-dim float32 tensors.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} differs from target shape {tuple(target.shape)}"
        )
    pred = torch.sigmoid(logits.detach().float()).flatten(1) >= threshold
    t = target.detach().flatten(1) != 0
    inter = (pred & t).sum(dim=1)
    union = (pred | t).sum(dim=1)
    # int64 / (int64 + python float) promotes to the default float dtype, as in the official monitor.
    ious = inter / (union + IOU_EPS)
    return 100.0 * ious.mean(), 100.0 * (ious > pr_iou).float().mean()


def sum_over_ranks(vec: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``vec`` summed over the ranks of ``torch.distributed`` (unchanged when it is not initialised);
    moved to the current GPU for NCCL, which reduces only CUDA tensors."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return vec
    if dist.get_backend(group) == "nccl":
        vec = vec.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(vec, op=dist.ReduceOp.SUM, group=group)
    return vec


class SegmentationMeter:
    """Accumulates mIoU, oIoU and Pr@t over (prediction, ground truth) pairs.

    The state is a handful of sums (count, sum of I, sum of U, sum of IoU, one counter per Pr@
    threshold), so distributed evaluation only has to all-reduce :meth:`to_tensor` (or
    :meth:`merge` meters): the result does not depend on how samples were split across workers.

    Args:
        thresholds: Pr@ thresholds; defaults to the official float32 values.
        keep_ious: also keep the list of per-sample IoUs in :attr:`ious` (not merged by reductions).
    """

    def __init__(
        self, thresholds: Sequence[float] = PR_THRESHOLDS, keep_ious: bool = False
    ) -> None:
        self.thresholds: tuple[float, ...] = tuple(float(t) for t in thresholds)
        self.keep_ious = keep_ious
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self.count: int = 0
        self.inter_sum: int = 0
        self.union_sum: int = 0
        self.iou_sum: float = 0.0
        self.pr_counts: list[int] = [0] * len(self.thresholds)
        self.ious: list[float] = []

    def add(self, inter: int, union: int) -> float:
        """Record one sample from its pixel counts; returns its IoU ``I / (U + 1e-6)``."""
        inter, union = int(inter), int(union)
        if inter < 0 or union < inter:
            raise ValueError(f"need 0 <= intersection <= union, got I={inter}, U={union}")
        iou = inter / (union + IOU_EPS)
        self.count += 1
        self.inter_sum += inter
        self.union_sum += union
        self.iou_sum += iou
        for k, t in enumerate(self.thresholds):
            if iou > t:
                self.pr_counts[k] += 1
        if self.keep_ious:
            self.ious.append(iou)
        return iou

    def update(self, pred_mask: ArrayLike, gt_mask: ArrayLike) -> float:
        """Record one sample.

        Args:
            pred_mask: ``(h, w)`` bool prediction at the original image size.
            gt_mask: ``(h, w)`` ground truth (bool or 0/1; non-zero = foreground).

        Returns:
            the sample IoU.
        """
        inter, union = intersection_union(pred_mask, gt_mask)
        return self.add(inter, union)

    def update_batch(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Record a batch of same-sized masks ``(N, ...)``; returns the float64 ``(N,)`` IoUs."""
        inter, union = batch_intersection_union(pred, target)
        ious = []
        for i, u in zip(inter.tolist(), union.tolist()):
            ious.append(self.add(i, u))
        return torch.tensor(ious, dtype=torch.float64)

    # -- reductions -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python snapshot of the sums (JSON-serialisable)."""
        return {
            "thresholds": list(self.thresholds),
            "count": self.count,
            "inter_sum": self.inter_sum,
            "union_sum": self.union_sum,
            "iou_sum": self.iou_sum,
            "pr_counts": list(self.pr_counts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the sums from :meth:`state_dict` (per-sample IoUs are not restored)."""
        thresholds = tuple(float(t) for t in state["thresholds"])
        if len(state["pr_counts"]) != len(thresholds):
            raise ValueError("state has a different number of pr_counts than thresholds")
        self.thresholds = thresholds
        self.count = int(state["count"])
        self.inter_sum = int(state["inter_sum"])
        self.union_sum = int(state["union_sum"])
        self.iou_sum = float(state["iou_sum"])
        self.pr_counts = [int(c) for c in state["pr_counts"]]
        self.ious = []

    def merge(self, other: SegmentationMeter) -> SegmentationMeter:
        """Add another meter's samples into this one (in place); returns ``self``."""
        if tuple(other.thresholds) != self.thresholds:
            raise ValueError(
                f"cannot merge meters with different thresholds: {self.thresholds} vs {other.thresholds}"
            )
        self.count += other.count
        self.inter_sum += other.inter_sum
        self.union_sum += other.union_sum
        self.iou_sum += other.iou_sum
        self.pr_counts = [a + b for a, b in zip(self.pr_counts, other.pr_counts)]
        if self.keep_ious:
            self.ious.extend(other.ious)
        return self

    def to_tensor(self, device: str | torch.device | None = None) -> torch.Tensor:
        """The sums as a float64 vector ``[count, I, U, iou_sum, pr_0, ...]`` for ``all_reduce(SUM)``.

        float64 holds integers exactly up to 2**53, far above any pixel count of a benchmark.
        """
        values = [self.count, self.inter_sum, self.union_sum, self.iou_sum, *self.pr_counts]
        return torch.tensor(values, dtype=torch.float64, device=device)

    def load_tensor(self, vec: torch.Tensor) -> None:
        """Replace the sums by a (reduced) vector from :meth:`to_tensor`."""
        vals = vec.detach().to("cpu", torch.float64).tolist()
        if len(vals) != 4 + len(self.thresholds):
            raise ValueError(
                f"expected a vector of length {4 + len(self.thresholds)}, got {len(vals)}"
            )
        self.count = int(round(vals[0]))
        self.inter_sum = int(round(vals[1]))
        self.union_sum = int(round(vals[2]))
        self.iou_sum = float(vals[3])
        self.pr_counts = [int(round(v)) for v in vals[4:]]

    def all_reduce(self, group: Any = None) -> SegmentationMeter:
        """Sum the state over all ranks of ``torch.distributed`` (no-op when not initialised)."""
        self.load_tensor(sum_over_ranks(self.to_tensor(), group))
        return self

    # -- results ------------------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Metrics as fractions in [0, 1].

        Returns:
            ``{"mIoU", "oIoU", "Pr@50", ..., "Pr@90", "count"}``; with no samples every metric is
            NaN, and oIoU is NaN when the summed union is 0 (the official formula has no epsilon).
        """
        nan = float("nan")
        out: dict[str, float] = {}
        out["mIoU"] = self.iou_sum / self.count if self.count else nan
        out["oIoU"] = self.inter_sum / self.union_sum if self.union_sum else nan
        keys = PR_KEYS if self.thresholds == PR_THRESHOLDS else tuple(
            f"Pr@{round(100 * t)}" for t in self.thresholds
        )
        for key, c in zip(keys, self.pr_counts):
            out[key] = c / self.count if self.count else nan
        out["count"] = self.count
        return out

    def __repr__(self) -> str:
        s = self.summary()
        parts = ", ".join(
            f"{k}={100 * v:.2f}" for k, v in s.items() if k != "count" and not math.isnan(v)
        )
        return f"SegmentationMeter(count={self.count}{', ' + parts if parts else ''})"
