"""The training task: the model and its objective in one module, the unit DDP wraps.

``SegmentationTask(images, tokens, mask, no_target)`` runs the model and `detris.losses.DetrisLoss` on
its output, so every training step (the engine's, the benchmarks') computes the same loss the same way.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..losses import DetrisLoss, LossTerms
from ..modeling import DETRIS, DetrisOutput

__all__ = ["SegmentationTask", "StepOutput"]


class StepOutput(NamedTuple):
    """A training forward's result: the model's output and the loss terms."""

    output: DetrisOutput
    loss: LossTerms


class SegmentationTask(nn.Module):
    """DETRIS plus its training loss.

    Args:
        model: the model being trained (registered as ``self.model``: the task's parameters and
            state-dict keys are the model's under ``model.``).
        dice_weight: weight of the optional upsampled Dice term (0: the official objective).
        no_target_weight: weight of the no-target head's loss; default ``model.config.no_target_weight``.
    """

    def __init__(self, model: DETRIS, dice_weight: float = 0.0, no_target_weight: float | None = None) -> None:
        super().__init__()
        self.model = model
        weight = model.config.no_target_weight if no_target_weight is None else no_target_weight
        self.loss = DetrisLoss(no_target_weight=weight, dice_weight=dice_weight)

    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor, no_target: Tensor | None = None) -> StepOutput:
        """images (N, 3, H, W), tokens (N, L), mask (N, 1, H, W) in [0, 1], no_target (N,) bool or None."""
        output = self.model(images, tokens)
        return StepOutput(output, self.loss(output, mask, no_target))
