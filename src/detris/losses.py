"""Every training loss of DETRIS, in one place.

* `mask_bce_loss`: the official loss, binary cross-entropy of the mask logits against the target mask
  resized (legacy "nearest") to the logits' size.
* `no_target_loss`: binary cross-entropy of the optional no-target head (gRefCOCO).
* `upsampled_dice_loss`: an optional soft Dice term on the probabilities upsampled the way evaluation
  sees them. The official target is a coarse, shifted copy of what is scored (evaluation upsamples the
  probabilities bicubically to the input size and thresholds them there); on small objects, a few logit
  pixels across, that gap costs IoU. Off in the official configs.

`DetrisLoss` combines them with their weights; the training engine's `SegmentationTask` applies it to
the model's `DetrisOutput`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .modeling import DetrisOutput
from .postprocess import upsample_probability

__all__ = ["mask_bce_loss", "no_target_loss", "upsampled_dice_loss", "no_target_labels", "LossTerms", "DetrisLoss"]


def _with_channel(mask: Tensor) -> Tensor:
    return mask[:, None] if mask.dim() == 3 else mask


def mask_bce_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """BCE-with-logits of ``logits`` (N, 1, h, w) against ``mask`` (N, 1, H, W) or (N, H, W) in [0, 1],
    resized with legacy "nearest" to (h, w) (the official training target)."""
    mask = _with_channel(mask).to(logits.dtype)
    if mask.shape[-2:] != logits.shape[-2:]:
        mask = F.interpolate(mask, size=logits.shape[-2:], mode="nearest")
    return F.binary_cross_entropy_with_logits(logits, mask)


def no_target_loss(logits: Tensor, no_target: Tensor) -> Tensor:
    """Binary cross-entropy of the no-target logits (N,) against the labels (N,) (1 = no target)."""
    return F.binary_cross_entropy_with_logits(logits.float(), no_target.to(torch.float32).reshape(logits.shape))


def upsampled_dice_loss(logits: Tensor, mask: Tensor, smooth: float = 1.0) -> Tensor:
    """Mean soft Dice loss between evaluation-style upsampled probabilities and the input-size mask.

    Args:
        logits: ``(N, 1, h, w)`` raw model output.
        mask: ``(N, 1, H, W)`` (or ``(N, H, W)``) target in [0, 1] at the model input size.
        smooth: added to numerator and denominator; keeps empty masks finite.

    Returns:
        A scalar float32 tensor: ``1 - (2 |p m| + s) / (|p| + |m| + s)`` averaged over the batch, where
        ``p`` is ``sigmoid(logits)`` resized by `detris.postprocess.upsample_probability` and clamped to
        [0, 1] (bicubic overshoots).
    """
    mask = _with_channel(mask)
    # Float32 whatever the autocast dtype: the sums run over every pixel of the input.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        prob = upsample_probability(torch.sigmoid(logits.float()), mask.shape[-2:])
        prob = prob.clamp(0.0, 1.0).flatten(1)
        target = mask.float().flatten(1)
        inter = (prob * target).sum(1)
        dice = (2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)
        return (1 - dice).mean()


def no_target_labels(mask: Tensor) -> Tensor:
    """(N,) bool "refers to nothing" labels read off target masks (N, 1, H, W): an all-zero mask."""
    return mask.flatten(1).amax(1) <= 0


class LossTerms(NamedTuple):
    """The total loss and its parts (each a scalar tensor; None where the term is off)."""

    total: Tensor
    mask: Tensor
    no_target: Tensor | None
    dice: Tensor | None


class DetrisLoss:
    """The training objective: ``mask_bce + no_target_weight * no_target + dice_weight * dice``.

    Args:
        no_target_weight: weight of the no-target head's BCE (used only when the output has its logits).
        dice_weight: weight of `upsampled_dice_loss`; 0 (the official objective) leaves it out.
    """

    def __init__(self, no_target_weight: float = 0.0, dice_weight: float = 0.0) -> None:
        if no_target_weight < 0 or dice_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got no_target {no_target_weight}, dice {dice_weight}")
        self.no_target_weight = float(no_target_weight)
        self.dice_weight = float(dice_weight)

    def __call__(self, output: DetrisOutput, mask: Tensor, no_target: Tensor | None = None) -> LossTerms:
        """``output`` of the model, ``mask`` (N, 1, H, W) targets at the input size, ``no_target`` (N,)
        bool labels (default: read off the masks, `no_target_labels`)."""
        mask = _with_channel(mask)
        bce = mask_bce_loss(output.logits, mask)
        total = bce
        nt = None
        if output.no_target_logits is not None:
            labels = no_target_labels(mask) if no_target is None else no_target
            nt = no_target_loss(output.no_target_logits, labels)
            total = total + self.no_target_weight * nt
        dice = None
        if self.dice_weight > 0:
            dice = upsampled_dice_loss(output.logits, mask)
            total = total.float() + self.dice_weight * dice
        return LossTerms(total, bce, nt, dice)
