"""The tiny tower files (`detris.bundled.TINY_TOWER_FILES`): writing a model's two towers in them, and
fitting towers of an earlier pretraining to another patch size and grid (``tools/pretrain_tiny.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from ..bundled import TINY_TOWER_FILES
from .dinov2 import resize_dinov2_weights
from .io import load_state_file

if TYPE_CHECKING:
    from ..modeling import DETRIS
    from ..variants import DetrisConfig

__all__ = ["save_tiny_towers", "fit_tiny_towers"]


def save_tiny_towers(model: DETRIS, out_dir: Path, metadata: dict[str, str]) -> dict[str, Path]:
    """Write ``model``'s two towers (adapters dropped) as the tiny tower files: float16 safetensors in
    their official key layouts, named as `TINY_TOWER_FILES`; returns ``{"dinov2": path, "clip": path}``."""
    paths = {}
    for kind, module in (("dinov2", model.dinov2), ("clip", model.txt_backbone)):
        tensors = {k: v.detach().to(torch.float16).contiguous()
                   for k, v in module.state_dict().items() if ".adapter." not in k}
        path = out_dir / TINY_TOWER_FILES[kind]
        save_file(tensors, str(path), metadata=metadata)
        paths[kind] = path
    return paths


def fit_tiny_towers(source: Path, config: DetrisConfig, out_dir: Path) -> dict[str, Path]:
    """The tiny tower files in ``source`` fitted to ``config``'s patch size and pretrained grid
    (`resize_dinov2_weights`) and written into ``out_dir`` as ``init-<name>``; returns
    ``{"dinov2": path, "clip": path}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, name in TINY_TOWER_FILES.items():
        sd = load_state_file(source / name)
        if kind == "dinov2":
            sd = resize_dinov2_weights(sd, config.patch_size, config.pretrained_grid)
        path = out_dir / f"init-{name}"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        paths[kind] = path
    return paths
