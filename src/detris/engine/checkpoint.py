"""Training checkpoints: written atomically, read without unpickling code, restored exactly.

A checkpoint (``checkpoints/last.pt``) is one ``torch.save`` dict:
``weights`` (the trainable state dict by default, every weight with ``--save-full``), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (python, numpy, torch, cuda), ``epoch``, ``step_in_epoch``,
``global_step``, ``best`` and the run ``config``. A small ``last.json`` beside it says where the run
stands, for people and scripts. Both are written to a temporary file and moved in place with
``os.replace``, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling import DETRIS
from ..utils import atomic_write
from ..weights import load_strict, trainable_state_dict

__all__ = ["capture_rng", "restore_rng", "save_checkpoint", "load_checkpoint", "restore_weights"]

FORMAT = "detris-train"


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


def save_checkpoint(path: Path, model: DETRIS, full: bool, **state: Any) -> Path:
    """Write a training checkpoint atomically; ``state`` holds optimizer/scheduler/... entries."""
    weights = model.state_dict() if full else trainable_state_dict(model)
    payload = {
        "format": FORMAT,
        "full": bool(full),
        "weights": {k: v.detach().cpu() for k, v in weights.items()},
        **state,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    info: dict[str, Any] = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step", "best") if k in state}
    info["checkpoint"] = path.name
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (``weights_only``: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a detris training checkpoint (use `detris convert-official` for others)")
    return ckpt


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
