"""Learning-rate schedules that follow the run's progress rather than its epoch count.

The official schedule (``MultiStepLR`` at fixed epochs) suits runs of a known number of epochs. A run
bounded by wall time (``train.max_minutes``) does not know how many epochs it will get: on a slow or
busy machine the milestones may never come, on a fast one they come too early. `ProgressSchedule`
instead sets the learning rate from the fraction of the run already done, the larger of the step
fraction and the time fraction, so the rate reaches its end value when the run stops, whatever the
machine's speed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["ProgressSchedule"]


class ProgressSchedule:
    """Linear warm-up, then cosine decay from each group's initial lr to ``final_ratio`` of it.

    Args:
        optimizer: its groups' current ``lr`` values are taken as the peak rates.
        total_steps: optimizer steps of the whole run, if bounded (epochs x steps per epoch, max_steps).
        max_minutes: wall-time budget of the run, if any.
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``.
        final_ratio: end value as a fraction of the peak.

    Call `update` after every optimizer step. Its state (`state_dict`) holds the peak rates and the
    progress reached; a resumed run continues from that progress. Time counts per process, like the
    loop's ``max_minutes`` budget, which restarts with every resume.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None,
        max_minutes: float | None,
        warmup_steps: int = 0,
        final_ratio: float = 0.0,
    ) -> None:
        if total_steps is None and max_minutes is None:
            raise ValueError("a progress schedule needs a bounded run: total steps or a time budget")
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.max_minutes = max_minutes
        self.warmup_steps = int(warmup_steps)
        self.final_ratio = float(final_ratio)
        self.peak = [float(g["lr"]) for g in optimizer.param_groups]
        self.progress = 0.0
        self._apply(0)

    def fraction(self, step: int, minutes: float) -> float:
        """Share of the run done after ``step`` optimizer steps and ``minutes`` of training, in [0, 1]."""
        done = 0.0
        if self.total_steps:
            done = step / self.total_steps
        if self.max_minutes:
            done = max(done, minutes / self.max_minutes)
        return min(max(done, self.progress), 1.0)  # never goes back, e.g. after a resume

    def factor(self, step: int) -> float:
        """Multiplier of the peak rate at the current progress (and ``step`` for the warm-up)."""
        decay = self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * self.progress))
        if self.warmup_steps and step < self.warmup_steps:
            decay *= (step + 1) / self.warmup_steps
        return decay

    def _apply(self, step: int) -> None:
        f = self.factor(step)
        for group, peak in zip(self.optimizer.param_groups, self.peak):
            group["lr"] = peak * f

    def update(self, step: int, minutes: float) -> None:
        """Set the rates for the next step, after ``step`` steps and ``minutes`` of training here."""
        self.progress = self.fraction(step, minutes)
        self._apply(step)

    def state_dict(self) -> dict[str, Any]:
        return {"peak": list(self.peak), "progress": self.progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peak = [float(v) for v in state["peak"]]
        self.progress = float(state["progress"])
