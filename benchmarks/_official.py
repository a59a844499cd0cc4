"""The official DETRIS code next to ours, for ``compare_official.py``.

The official implementation is never part of this repository: the user points at a checkout of it,
which is imported by putting that folder first on ``sys.path``. Its model package imports two
packages that building and running the model does not use: ``loguru`` (a logger, called only by
``build_segmenter``, which the benchmark does not call) and ``fvcore`` (``model/layers.py`` imports
``fvcore.nn.weight_init`` and never calls it). Where they are not installed they are replaced by empty
stand-ins; ``pip install loguru fvcore`` makes the real ones be used. xFormers is optional in the
official code (it falls back to plain attention without it, as on CPU).

The official constructor reads its backbones from files: an OpenAI CLIP TorchScript archive
(``ViT-B-16.pt``) and a DINOv2 state dict (``dinov2_vit{b,l}14_reg4_pretrain.pth``). They are written
here, in those formats, from our model's own (random) weights; after construction every tensor of our
state dict is loaded into the official model strictly (the parameter names are the same), so both
models hold identical weights.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from detris.weights.clip import save_clip_archive

OFFICIAL_CONFIGS = {
    "detris-b": "config/refcoco/DETRIS_base.yaml",
    "detris-l": "config/refcoco/DETRIS_large.yaml",
}

# The image tower of the CLIP archive: OpenAI's ViT-B/16 layout. DETRIS deletes it after loading, so
# one layer is written (the layer count is read from the keys) to keep the file small.
CLIP_IMAGE = {"width": 768, "layers": 1, "patch": 16, "resolution": 224}
# OpenAI's convert_weights() stores these in half precision (every Linear / attention / conv tensor).
_HALF_SUFFIXES = (
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
)
_HALF_KEYS = ("text_projection", "visual.proj", "visual.conv1.weight")


# ------------------------------------------------------------------------------------------ import
def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__stub__ = True  # type: ignore[attr-defined]
    sys.modules[name] = module
    return module


class _SilentLogger:
    def __getattr__(self, _name: str):
        return lambda *args, **kwargs: None


def import_official(path: str) -> tuple[type, list[str]]:
    """The official ``model.segmenter.DETRIS`` class from a checkout at ``path``, and the names of the
    modules that had to be stubbed."""
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "model", "segmenter.py")):
        raise SystemExit(f"{path} is not a checkout of the official DETRIS code (no model/segmenter.py)")
    stubbed = []
    for name in ("loguru", "fvcore"):
        try:
            importlib.import_module(name)
        except ImportError:
            stubbed.append(name)
    if "loguru" in stubbed:
        _stub("loguru", logger=_SilentLogger())
    if "fvcore" in stubbed:
        _stub("fvcore", nn=_stub("fvcore.nn", weight_init=_stub("fvcore.nn.weight_init")))
    if path not in sys.path:
        sys.path.insert(0, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xFormers availability notices
        segmenter = importlib.import_module("model.segmenter")
    return segmenter.DETRIS, stubbed


def official_config(path: str, variant: str, clip_file: str, dino_file: str) -> SimpleNamespace:
    """The TRAIN section of the official config of ``variant``, pointing at the given backbone files."""
    import yaml

    with open(os.path.join(path, OFFICIAL_CONFIGS[variant])) as f:
        train = yaml.safe_load(f)["TRAIN"]
    train.update(clip_pretrain=clip_file, dino_pretrain=dino_file)
    return SimpleNamespace(**train)


# ------------------------------------------------------------------------------------------ files
def _clip_image_tower(embed_dim: int, seed: int) -> dict[str, Tensor]:
    """A random OpenAI-layout image tower (``visual.*``) of ``CLIP_IMAGE``'s size."""
    gen = torch.Generator().manual_seed(seed)
    width, patch, grid = CLIP_IMAGE["width"], CLIP_IMAGE["patch"], CLIP_IMAGE["resolution"] // CLIP_IMAGE["patch"]

    def draw(*shape: int, std: float = 0.02) -> Tensor:
        return torch.randn(shape, generator=gen) * std

    tower = {
        "visual.class_embedding": draw(width),
        "visual.positional_embedding": draw(grid * grid + 1, width),
        "visual.proj": draw(width, embed_dim),
        "visual.conv1.weight": draw(width, 3, patch, patch),
        "visual.ln_pre.weight": torch.ones(width),
        "visual.ln_pre.bias": torch.zeros(width),
    }
    for i in range(CLIP_IMAGE["layers"]):
        p = f"visual.transformer.resblocks.{i}."
        tower.update({
            p + "attn.in_proj_weight": draw(3 * width, width), p + "attn.in_proj_bias": torch.zeros(3 * width),
            p + "attn.out_proj.weight": draw(width, width), p + "attn.out_proj.bias": torch.zeros(width),
            p + "ln_1.weight": torch.ones(width), p + "ln_1.bias": torch.zeros(width),
            p + "mlp.c_fc.weight": draw(4 * width, width), p + "mlp.c_fc.bias": torch.zeros(4 * width),
            p + "mlp.c_proj.weight": draw(width, 4 * width), p + "mlp.c_proj.bias": torch.zeros(width),
            p + "ln_2.weight": torch.ones(width), p + "ln_2.bias": torch.zeros(width),
        })
    tower["visual.ln_post.weight"] = torch.ones(width)
    tower["visual.ln_post.bias"] = torch.zeros(width)
    return tower


def write_clip_archive(text_state: Mapping[str, Tensor], path: str, seed: int = 0) -> None:
    """Write an OpenAI CLIP TorchScript archive holding ``text_state`` (our text tower's state dict,
    OpenAI's names) plus an image tower and the archive's integer entries, with OpenAI's fp16 split."""
    text = {k: v.detach().float().cpu() for k, v in text_state.items() if ".adapter." not in k}
    state: dict[str, Tensor] = {**text, **_clip_image_tower(text["text_projection"].shape[1], seed)}
    state["input_resolution"] = torch.tensor(CLIP_IMAGE["resolution"])
    state["context_length"] = torch.tensor(text["positional_embedding"].shape[0])
    state["vocab_size"] = torch.tensor(text["token_embedding.weight"].shape[0])
    for key in state:
        if key in _HALF_KEYS or key.endswith(_HALF_SUFFIXES):
            state[key] = state[key].half()
    save_clip_archive(state, path)


def write_dinov2_file(vision_state: Mapping[str, Tensor], path: str) -> None:
    """Write a DINOv2 state dict as Meta's ``dinov2_vit*14_reg4_pretrain.pth`` (no adapters)."""
    state = OrderedDict((k, v.detach().float().cpu()) for k, v in vision_state.items() if ".adapter." not in k)
    torch.save(state, path)


# ------------------------------------------------------------------------------------------ model
def build_official(path: str, variant: str, ours: nn.Module, workdir: str) -> tuple[nn.Module, list[str]]:
    """The official DETRIS for ``variant``, built from backbone files written from ``ours`` and then
    given every tensor of ``ours``'s state dict (strict); returns it and the stubbed module names."""
    official_cls, stubbed = import_official(path)
    clip_file = os.path.join(workdir, "ViT-B-16.pt")
    dino_file = os.path.join(workdir, "dinov2_reg4_pretrain.pth")
    write_clip_archive(ours.txt_backbone.state_dict(), clip_file)
    write_dinov2_file(ours.dinov2.state_dict(), dino_file)
    cfg = official_config(path, variant, clip_file, dino_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = official_cls(cfg)
    model.load_state_dict(ours.state_dict(), strict=True)
    return model, stubbed


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between two state dicts with the same keys (0.0 = identical)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        raise RuntimeError(f"state dicts differ in keys: {sorted(set(sa) ^ set(sb))[:10]}")
    return max(
        (sa[k].double() - sb[k].double()).abs().max().item() if sa[k].numel() else 0.0
        for k in sa
    )
