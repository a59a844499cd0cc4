"""DINOv2 with registers: the official ``dinov2_vit{b,l}14_reg4_pretrain.pth`` (a plain state dict whose
names our ViT uses) and transformers' ``Dinov2WithRegistersModel`` names, converted."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .io import CheckpointError, PathLike, StateDict, as_state_dict, load_strict, source_name, strip_prefix

__all__ = ["dinov2_from_transformers", "read_dinov2_weights", "load_dinov2_weights", "resize_dinov2_weights",
           "backbone_hint"]

_HF_DINO_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",  # transformers < 5 naming
}
_HF_DINO_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_QKV_NAMES = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ("attention.query", "attention.key", "attention.value"),  # transformers < 5 naming
)


def dinov2_from_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """transformers ``Dinov2WithRegistersModel`` names (either naming generation) -> DINOv2 names."""
    sd = strip_prefix(sd, ("dinov2.", "model."))
    out: StateDict = {}
    layer = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    pending: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _HF_DINO_TOP:
            out[_HF_DINO_TOP[key]] = value
            continue
        m = layer.match(key)
        if not m:
            out[key] = value  # reported as unexpected by the strict load
            continue
        idx, name, kind = int(m.group(1)), m.group(2), m.group(3)
        name = name.removeprefix("attention.") if name.startswith("attention.attention.") else name
        qkv = next((i for names in _HF_QKV_NAMES for i, n in enumerate(names) if name == n), None)
        if qkv is not None:
            pending.setdefault((idx, kind), {})["qkv"[qkv]] = value
            continue
        full = f"{name}.{kind}"
        mapped = _HF_DINO_LAYER.get(full) or _HF_DINO_LAYER.get(name)
        if mapped is None:
            out[key] = value
            continue
        out[f"blocks.{idx}.{mapped}" + ("" if full in _HF_DINO_LAYER else f".{kind}")] = value
    for (idx, kind), parts in pending.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"layer {idx} has only the {sorted(parts)} attention projections")
        out[f"blocks.{idx}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out



def read_dinov2_weights(source: PathLike | Mapping[str, Tensor]) -> StateDict:
    """DINOv2 weights from an official ``.pth``, a transformers state dict, or a mapping of either."""
    sd = as_state_dict(source)
    sd = strip_prefix(sd, ("module.", "backbone.", "dinov2."))
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
        sd = dinov2_from_transformers(sd)
    return sd


def resize_dinov2_weights(sd: Mapping[str, Tensor], patch_size: int, grid: int) -> StateDict:
    """A DINOv2 state dict (our names) with its patch embedding resized to ``patch_size`` and its
    position table to ``grid`` x ``grid``; every other tensor as it was, in float32.

    The kernel is resampled bilinearly and scaled by the ratio of the patch areas, so that a patch of
    constant colour gives the same embedding at either size; the table is resampled bicubically
    (class row kept). A starting point for further training, not an equivalent model.
    """
    out = {k: v.float() for k, v in sd.items()}
    kernel = out["patch_embed.proj.weight"]
    if kernel.shape[-1] != patch_size:
        scale = (kernel.shape[-1] / patch_size) ** 2
        out["patch_embed.proj.weight"] = scale * F.interpolate(
            kernel, size=(patch_size, patch_size), mode="bilinear", align_corners=False, antialias=True)
    table = out["pos_embed"]
    old = int(round((table.shape[1] - 1) ** 0.5))
    if old != grid:
        cls_row, rows = table[:, :1], table[:, 1:]
        rows = rows.reshape(1, old, old, -1).permute(0, 3, 1, 2)
        rows = F.interpolate(rows, size=(grid, grid), mode="bicubic", align_corners=False)
        out["pos_embed"] = torch.cat([cls_row, rows.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)
    return out


def load_dinov2_weights(vision: nn.Module, source: PathLike | Mapping[str, Tensor]) -> None:
    """Load pretrained DINOv2 weights into our ViT; its Dense Aligners keep their own weights."""
    sd = read_dinov2_weights(source)
    adapters = [k for k in vision.state_dict() if ".adapter." in k]
    hint = backbone_hint(sd, "pos_embed", vision.state_dict(), "DINOv2")
    load_strict(vision, sd, what=f"DINOv2 weights ({source_name(source)})", skip_missing=adapters, hint=hint)


def backbone_hint(sd: Mapping[str, Tensor], key: str, expected: Mapping[str, Tensor], what: str) -> str:
    if key in sd and key in expected and sd[key].shape[-1] != expected[key].shape[-1]:
        return (
            f"The file's {what} width is {sd[key].shape[-1]} but the model's is {expected[key].shape[-1]}: "
            "it belongs to another variant (ViT-B is 768 wide, ViT-L 1024)."
        )
    return ""


