"""``detris train CONFIG [--set key=value ...] [--resume CKPT|auto] [--save-full]``."""

from __future__ import annotations

import argparse
import sys

from ..engine.config import load_config

__all__ = ["run_train_command"]


def run_train_command(args: argparse.Namespace) -> int:
    """Load and validate the config, then train; a diverged run exits with status 3, a run whose
    checkpoint or records could not be written (a full disk) with status 4; a run stopped by SIGTERM
    saves its checkpoint and exits with status 0. Under torchrun only rank 0 prints the summary."""
    from ..engine.checkpoint import CheckpointSaveError
    from ..engine.distributed import DistributedSetupError
    from ..engine.loop import TrainingDiverged, train

    cfg = load_config(args.config, list(args.overrides or []))
    if getattr(args, "save_full", False):
        cfg.output.save_full = True
    try:
        summary = train(cfg, resume=args.resume)
    except TrainingDiverged as err:
        print(f"detris train: {err}", file=sys.stderr)
        return 3
    except CheckpointSaveError as err:
        print(f"detris train: stopped: {err.strerror}", file=sys.stderr)
        return 4
    except DistributedSetupError as err:
        print(f"detris train: error: {err}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) != 0:
        return 0
    if summary["stop_reason"] == "sigterm":
        print(f"detris train: stopped by SIGTERM after {summary['global_step']} steps; checkpoint saved in "
              f"{summary['run_dir']}/checkpoints/last.pt; continue with --resume auto", file=sys.stderr)
        return 0
    if summary.get("best", {}).get("epoch") is not None or summary.get("last_val"):
        print(f"detris train: done ({summary['stop_reason']}, {summary['global_step']} steps); "
              f"last val {summary['last_val']}; best {summary['best']}; outputs in {summary['run_dir']}")
    else:
        print(f"detris train: done ({summary['stop_reason']}, {summary['global_step']} steps); outputs in {summary['run_dir']}")
    return 0
