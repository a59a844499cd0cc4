"""The CLIP text tower: OpenAI's ``ViT-B-16.pt`` (TorchScript, or a plain state dict) and transformers'
``CLIPTextModelWithProjection`` / ``CLIPModel`` names, converted. The image tower and the archive's meta
entries are dropped; weights are rounded through fp16 exactly where the official loader does it, so a
float32 file gives the same model as the official code builds. `save_clip_archive` writes the archive
format itself (a TorchScript module holding a state dict), for files the official code can load."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .dinov2 import backbone_hint
from .io import CheckpointError, PathLike, StateDict, as_state_dict, load_strict, source_name, strip_prefix

__all__ = ["CLIP_SKIPPED_PREFIXES", "CLIP_SKIPPED_KEYS", "clip_text_from_transformers", "read_clip_text_weights",
           "load_clip_text_weights", "save_clip_archive"]

# Entries of an OpenAI CLIP archive that the text tower does not have: the image tower and meta data.
CLIP_SKIPPED_PREFIXES = ("visual.",)
CLIP_SKIPPED_KEYS = ("input_resolution", "context_length", "vocab_size")
# Tensors the official CLIP loader rounds through fp16 (conv/linear/attention weights, projections).
_CLIP_FP16_ROUNDED = re.compile(
    r"(attn\.in_proj_(weight|bias)|attn\.out_proj\.(weight|bias)|mlp\.c_(fc|proj)\.(weight|bias)|text_projection)$"
)



def clip_text_from_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """transformers ``CLIPTextModelWithProjection`` (or ``CLIPModel``) names -> OpenAI CLIP text names."""
    out: StateDict = {}
    layer = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    pending: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value
        elif key.startswith(("vision_model.", "visual_projection.")) or key.endswith("position_ids"):
            continue  # the image tower and index buffers: nothing the text tower holds
        elif m := layer.match(key):
            idx, name, kind = int(m.group(1)), m.group(2), m.group(3)
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                pending.setdefault((idx, kind), {})[name[10]] = value
            elif name in names:
                out[f"transformer.resblocks.{idx}.{names[name]}.{kind}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    for (idx, kind), parts in pending.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"text layer {idx} has only the {sorted(parts)} attention projections")
        out[f"transformer.resblocks.{idx}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out



def read_clip_text_weights(source: PathLike | Mapping[str, Tensor], round_fp16: bool = True) -> StateDict:
    """OpenAI CLIP text-tower weights from ``ViT-B-16.pt`` (TorchScript), a plain state dict or a
    transformers state dict; the image tower and meta entries are dropped.

    With ``round_fp16`` the tensors the official loader stores in fp16 are rounded through fp16, so a
    float32 file builds the same model as the official code (a no-op on OpenAI's fp16 files).
    """
    sd = as_state_dict(source)
    sd = strip_prefix(sd, ("module.", "txt_backbone."))
    if any(k.startswith("text_model.") for k in sd):
        sd = clip_text_from_transformers(sd)
    sd = {
        k: v
        for k, v in sd.items()
        if not k.startswith(CLIP_SKIPPED_PREFIXES) and k not in CLIP_SKIPPED_KEYS
    }
    if round_fp16:
        sd = {k: v.half() if _CLIP_FP16_ROUNDED.search(k) and v.is_floating_point() else v for k, v in sd.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def load_clip_text_weights(text: nn.Module, source: PathLike | Mapping[str, Tensor], round_fp16: bool = True) -> None:
    """Load pretrained CLIP text weights into our text tower; its Text Adapters keep their own weights."""
    sd = read_clip_text_weights(source, round_fp16=round_fp16)
    skip = [k for k in text.state_dict() if ".adapter." in k]
    if "text_projection" not in sd and any(k.startswith("transformer.") for k in sd):
        raise CheckpointError(
            f"{source_name(source)} has no text_projection (a transformers CLIPTextModel?): DETRIS needs the "
            "sentence projection; use CLIPTextModelWithProjection / CLIPModel weights or OpenAI's ViT-B-16.pt"
        )
    if "logit_scale" not in sd:
        skip.append("logit_scale")  # transformers' text-only models do not carry CLIP's unused temperature
    hint = backbone_hint(sd, "positional_embedding", text.state_dict(), "CLIP text")
    load_strict(text, sd, what=f"CLIP text weights ({source_name(source)})", skip_missing=skip, hint=hint)


class _StateArchive(nn.Module):
    """A module tree whose ``state_dict()`` is a given flat dict (scriptable: it holds only tensors)."""

    def __init__(self, state: Mapping[str, Tensor], buffer_keys: tuple[str, ...]) -> None:
        super().__init__()
        for key, value in state.items():
            *parents, leaf = key.split(".")
            owner: nn.Module = self
            for part in parents:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]  # type: ignore[assignment]
            if key in buffer_keys:
                owner.register_buffer(leaf, value.detach().clone())
            else:
                owner.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=False))

    def forward(self, x: Tensor) -> Tensor:
        return x


def save_clip_archive(state: Mapping[str, Tensor], path: PathLike) -> None:
    """Write ``state`` (OpenAI's names: image and text towers, and the integer entries
    `CLIP_SKIPPED_KEYS` as buffers) as a TorchScript archive like OpenAI's ``ViT-B-16.pt``.

    ``torch.jit.load(path).state_dict()`` gives ``state`` back exactly (names, order, shapes, dtypes,
    values); the official loader and `read_clip_text_weights` read it as the released file.
    """
    module = torch.jit.script(_StateArchive(state, CLIP_SKIPPED_KEYS))
    torch.jit.save(module, os.fspath(path))
