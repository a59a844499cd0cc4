"""Run records: ``metrics.jsonl`` (one JSON object per line), optional TensorBoard, a curve PNG."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..utils import atomic_write

__all__ = ["MetricsLogger", "plot_curves", "read_metrics", "trim_metrics"]


class MetricsLogger:
    """Appends records to ``<dir>/metrics.jsonl`` and, if tensorboard is installed, writes scalars."""

    def __init__(self, directory: Path, tensorboard: bool = True) -> None:
        self.path = Path(directory) / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(directory) / "tensorboard"))
            except ImportError:
                pass  # optional: metrics.jsonl has everything

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record.get("global_step", 0)
            for key, value in record.items():
                if key not in ("global_step", "epoch", "kind") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a resumed run appends; later records win per step)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def trim_metrics(path: Path, global_step: int) -> int:
    """Drop the records after ``global_step`` (the checkpoint a run resumes from), and a line cut short
    by a kill or a full disk, so that the resumed run's records follow on without repeating a step.

    Returns how many training steps were dropped: work done after the last checkpoint, done again.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept: list[str] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line a kill or a full disk cut short
        if not isinstance(record, dict):
            continue
        if record.get("global_step", 0) > global_step:
            dropped += record.get("kind") == "train"
            continue
        kept.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept), encoding="utf-8"))
    return dropped


def plot_curves(metrics_path: Path, out_png: Path) -> Path | None:
    """Training loss and validation mIoU (gIoU on generalized sets) against the optimizer step; None
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(metrics_path)
    train = {r["global_step"]: r["loss"] for r in records if r.get("kind") == "train" and math.isfinite(r["loss"])}
    vals = [r for r in records if r.get("kind") == "val"]
    name = "gIoU" if vals and "gIoU" in vals[0] else "mIoU"
    val = {r["global_step"]: r[name] for r in vals}
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        steps = sorted(train)
        ax.plot(steps, [train[s] for s in steps], color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        steps = sorted(val)
        ax2.plot(steps, [val[s] for s in steps], "o-", color="tab:red", label=f"val {name}")
        ax2.set_ylabel(f"val {name}", color="tab:red")
        ax2.set_ylim(0, 1)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(out_png)
    plt.close(fig)
    return out_png
