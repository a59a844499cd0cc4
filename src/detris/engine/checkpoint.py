"""Training checkpoints: written atomically, read without unpickling code, restored exactly.

A checkpoint (``checkpoints/last.pt``) is one ``torch.save`` dict:
``weights`` (the trainable state dict by default, every weight with ``--save-full``), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (python, numpy, torch, cuda), ``epoch``, ``step_in_epoch``,
``global_step``, ``best`` and the run ``config``. A small ``last.json`` beside it says where the run
stands, for people and scripts. Both are written to a temporary file and moved in place with
``os.replace``, so a crash never leaves half a checkpoint. The checkpoint a save replaces stays as
``previous.pt``, which ``--resume`` falls back to when ``last.pt`` turns out damaged.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling import DETRIS
from ..utils import atomic_write, torch_write
from ..weights import load_strict, trainable_state_dict

__all__ = ["PREVIOUS_NAME", "CheckpointSaveError", "capture_rng", "restore_rng", "save_checkpoint", "save_failure",
           "load_checkpoint", "load_resume_checkpoint", "restore_weights"]

FORMAT = "detris-train"
#: The checkpoint ``last.pt`` replaced, kept beside it (one step of history, twice the disk space).
PREVIOUS_NAME = "previous.pt"
#: What a resumable checkpoint must hold.
_STATE_KEYS = ("weights", "full", "optimizer", "scheduler", "scaler", "rng", "epoch", "step_in_epoch",
               "global_step", "best")


def capture_rng() -> dict[str, Any]:
    """Every RNG state training consumes, as tensors and plain containers (loadable with weights_only)."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointSaveError(OSError):
    """A checkpoint, model directory or other run file could not be written (a full disk, a lost
    mount); ``strerror`` is one line naming the file, the free space, what is intact and the fix."""


def save_failure(path: Path, err: OSError, what: str = "checkpoint") -> CheckpointSaveError:
    """The error a failed save raises: the file that failed (``err.filename`` when the writer named
    one), the reason with the free space left, and what is still there."""
    failed = err.filename or path
    reason = err.strerror or str(err)
    if failed != path and str(failed) != str(path):
        what = f"{what} {path}: its file"
    return CheckpointSaveError(
        err.errno, f"could not write the {what} {failed} ({reason}); the previous one is intact. "
        "Free some space (or choose another output.dir) and resume with --resume auto"
    )


def save_checkpoint(path: Path, model: DETRIS, full: bool, **state: Any) -> Path:
    """Write a training checkpoint atomically; ``state`` holds optimizer/scheduler/... entries.

    The checkpoint it replaces is kept as ``previous.pt`` beside it (`PREVIOUS_NAME`): should the new
    one be found damaged on ``--resume``, that one is used. A failure to write (``ENOSPC``) raises
    `CheckpointSaveError` and leaves both files as they were.
    """
    weights = model.state_dict() if full else trainable_state_dict(model)
    payload = {
        "format": FORMAT,
        "full": bool(full),
        "weights": {k: v.detach().cpu() for k, v in weights.items()},
        **state,
    }
    info: dict[str, Any] = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step", "best") if k in state}
    info["checkpoint"] = path.name
    try:
        atomic_write(path, lambda tmp: torch_write(lambda f: torch.save(payload, f), tmp),
                     keep_previous=path.with_name(PREVIOUS_NAME))
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    except OSError as err:
        raise save_failure(path, err) from err
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (``weights_only``: no pickled code runs).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, damaged or not a detris training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, a damaged record: torch's and zipfile's many errors
        detail = (str(err).splitlines() or ["empty file"])[0][:200]
        raise ValueError(f"{path} is damaged or truncated ({type(err).__name__}: {detail})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a detris training checkpoint (use `detris convert-official` for others)")
    missing = [k for k in _STATE_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is damaged: it lacks {missing}")
    return ckpt


def load_resume_checkpoint(path: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint to resume from: ``path`` or, when it is damaged, the ``previous.pt`` kept beside it.

    Returns ``(checkpoint, the file it came from)``. A fallback is announced on stderr.

    Raises:
        FileNotFoundError, ValueError: neither file is usable; the message names both.
    """
    path = Path(path)
    previous = path.with_name(PREVIOUS_NAME)
    try:
        return load_checkpoint(path), path
    except (FileNotFoundError, ValueError) as err:
        if path.name == PREVIOUS_NAME or not previous.is_file():
            raise
        problem = str(err)
    try:
        ckpt = load_checkpoint(previous)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"{problem}; the previous checkpoint is no better: {err}") from None
    print(f"detris train: {problem}; resuming from the previous checkpoint {previous} "
          f"(global step {ckpt['global_step']})", file=sys.stderr)
    return ckpt, previous


def restore_weights(model: DETRIS, ckpt: dict[str, Any]) -> None:
    """Load the checkpoint's weights: all of them (full) or exactly the trainable ones."""
    weights = ckpt["weights"]
    if ckpt["full"]:
        load_strict(model, weights, what="checkpoint weights")
        return
    expected = trainable_state_dict(model)
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"checkpoint lacks trainable weights {missing[:8]}: was it written for another variant?")
    load_strict(model, weights, what="checkpoint weights", skip_missing=[k for k in model.state_dict() if k not in expected])
