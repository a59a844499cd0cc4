"""Optional training losses added on top of the model's own (official) BCE loss.

The official loss compares the logits with the target mask resized (legacy "nearest") to the logits'
size, 4/14 of the input. Evaluation, however, upsamples the *probabilities* bicubically to the input
size and thresholds them there, so the official target is a coarse, shifted copy of what is scored. On
small objects (a few logit pixels across) that gap costs a lot of IoU. :func:`upsampled_dice_loss`
scores the prediction the way evaluation sees it, at the input size; the engine adds it only when
``train.dice_weight > 0`` (the official configs leave it at 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["upsampled_dice_loss"]


def upsampled_dice_loss(logits: Tensor, mask: Tensor, smooth: float = 1.0) -> Tensor:
    """Mean soft Dice loss between evaluation-style upsampled probabilities and the input-size mask.

    Args:
        logits: ``(N, 1, h, w)`` raw model output.
        mask: ``(N, 1, H, W)`` (or ``(N, H, W)``) target in [0, 1] at the model input size.
        smooth: added to numerator and denominator; keeps empty masks finite.

    Returns:
        A scalar float32 tensor: ``1 - (2 |p m| + s) / (|p| + |m| + s)`` averaged over the batch, where
        ``p`` is ``sigmoid(logits)`` resized like :func:`detris.postprocess.logits_to_probability`
        (bicubic, ``align_corners=True``) and clamped to [0, 1] (bicubic overshoots).
    """
    if mask.dim() == 3:
        mask = mask[:, None]
    # Float32 whatever the autocast dtype: the sums run over every pixel of the input.
    prob = torch.sigmoid(logits.float())
    if prob.shape[-2:] != mask.shape[-2:]:
        prob = F.interpolate(prob, size=mask.shape[-2:], mode="bicubic", align_corners=True)
    prob = prob.clamp(0.0, 1.0).flatten(1)
    target = mask.float().flatten(1)
    inter = (prob * target).sum(1)
    dice = (2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    return (1 - dice).mean()
