"""Our DINOv2 / CLIP text names -> transformers names: only the tests need this direction.

They write random weights in transformers' layout (``Dinov2WithRegistersModel``,
``CLIPTextModelWithProjection``) to check the library's converters from it and to compare the towers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from detris.weights.dinov2 import _HF_DINO_TOP

StateDict = dict[str, Tensor]


def dinov2_to_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """DINOv2 names -> current transformers ``Dinov2WithRegistersModel`` names (adapters dropped)."""
    top = {v: k for k, v in _HF_DINO_TOP.items()}
    layer_names = {
        "norm1": "norm1",
        "norm2": "norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "attn.proj": "attention.o_proj",
    }
    out: StateDict = {}
    block = re.compile(r"blocks\.(\d+)\.(.+)$")
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = block.match(key)
        if not m or ".adapter." in key:
            continue
        idx, rest = m.group(1), m.group(2)
        prefix = f"encoder.layer.{idx}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{prefix}attention.{name}.{kind}"] = part
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{prefix}layer_scale{rest[2]}.lambda1"] = value
        else:
            name, kind = rest.rsplit(".", 1)
            out[f"{prefix}{layer_names[name]}.{kind}"] = value
    return out




def clip_text_to_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """OpenAI CLIP text names -> transformers ``CLIPTextModelWithProjection`` names (adapters dropped)."""
    out: StateDict = {}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    block = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif ".adapter." in key or key == "logit_scale":
            continue
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key):
            prefix = f"text_model.encoder.layers.{m.group(1)}.self_attn."
            for part_name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{prefix}{part_name}.{m.group(2)}"] = part
        elif m := block.match(key):
            idx, name, kind = m.group(1), m.group(2), m.group(3)
            out[f"text_model.encoder.layers.{idx}.{names[name]}.{kind}"] = value
    return out


