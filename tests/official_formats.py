"""Random weights written in the on-disk formats of the original DETRIS release.

Test utility, no part of the library. It writes files that look, key for key and shape for
shape, like the ones a user of the original code holds, filled with deterministic random values
that are scaled so that a full-depth network stays finite and every path matters:

- ``write_clip_torchscript``: an OpenAI CLIP ViT archive (``ViT-B-16.pt``), a TorchScript module
  whose ``state_dict()`` carries OpenAI's names and shapes, the fp16/fp32 split of OpenAI's release
  and the three integer entries (``input_resolution``, ``context_length``, ``vocab_size``) that
  OpenAI's ``build_model`` deletes before loading;
- ``write_clip_state_dict``: the same tensors as a plain ``torch.save`` dict;
- ``write_dinov2_pth``: a DINOv2 ViT with registers (``dinov2_vit{b,l}14_reg4_pretrain.pth``);
- ``randomize_detris_state``: re-draws every trainable tensor (adapters, neck, decoder, projector)
  and every BatchNorm running statistic of a DETRIS state dict, which the official initialisation
  leaves at zeros/ones and would otherwise hide mistakes;
- ``ddp_checkpoint``: the dict the official ``train.py`` saves (``module.``-prefixed state dict,
  metrics, Adam and MultiStepLR state).

All sizes are parameters, so tests use tiny models and a parity harness the real sizes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from detris.weights.clip import CLIP_SKIPPED_KEYS as CLIP_INTEGER_KEYS
from detris.weights.clip import save_clip_archive

__all__ = [
    "clip_state_dict",
    "write_clip_torchscript",
    "write_clip_state_dict",
    "dinov2_state_dict",
    "write_dinov2_pth",
    "official_trainable_keys",
    "randomize_detris_state",
    "ddp_checkpoint",
]

PathLike = str | os.PathLike[str]



class _Draw:
    """Deterministic, well-scaled random tensors (drawn in float64 on the CPU, then cast)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> Tensor:
        x = torch.randn(shape, generator=self.gen, dtype=torch.float64)
        return (x * std + mean).to(torch.float32)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        x = torch.rand(shape, generator=self.gen, dtype=torch.float64)
        return (low + (high - low) * x).to(torch.float32)

    def linear(self, out_features: int, in_features: int, gain: float = 1.0) -> Tensor:
        """A weight with std gain / sqrt(fan_in): unit-scale inputs give unit-scale outputs."""
        return self.normal((out_features, in_features), gain / math.sqrt(in_features))

    def bias(self, n: int) -> Tensor:
        return self.normal((n,), 0.05)

    def norm_weight(self, n: int) -> Tensor:
        return self.normal((n,), 0.1, mean=1.0)


# ---------------------------------------------------------------------------------------------
# OpenAI CLIP ViT
# ---------------------------------------------------------------------------------------------


def _clip_resblocks(
    draw: _Draw, prefix: str, width: int, layers: int, half: set[str], out: dict[str, Tensor]
) -> None:
    for i in range(layers):
        p = f"{prefix}transformer.resblocks.{i}."
        out[p + "attn.in_proj_weight"] = draw.linear(3 * width, width)
        out[p + "attn.in_proj_bias"] = draw.bias(3 * width)
        out[p + "attn.out_proj.weight"] = draw.linear(width, width, gain=0.5)
        out[p + "attn.out_proj.bias"] = draw.bias(width)
        out[p + "ln_1.weight"] = draw.norm_weight(width)
        out[p + "ln_1.bias"] = draw.bias(width)
        out[p + "mlp.c_fc.weight"] = draw.linear(4 * width, width)
        out[p + "mlp.c_fc.bias"] = draw.bias(4 * width)
        out[p + "mlp.c_proj.weight"] = draw.linear(width, 4 * width, gain=0.5)
        out[p + "mlp.c_proj.bias"] = draw.bias(width)
        out[p + "ln_2.weight"] = draw.norm_weight(width)
        out[p + "ln_2.bias"] = draw.bias(width)
        # OpenAI's convert_weights(): every nn.Linear / MultiheadAttention tensor is half.
        half.update(p + k for k in (
            "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
            "attn.out_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        ))


def clip_state_dict(
    *,
    embed_dim: int = 512,
    image_resolution: int = 224,
    vision_layers: int = 12,
    vision_width: int = 768,
    vision_patch_size: int = 16,
    context_length: int = 77,
    vocab_size: int = 49408,
    text_width: int = 512,
    text_heads: int = 8,
    text_layers: int = 12,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    include_integer_keys: bool = True,
) -> OrderedDict[str, Tensor]:
    """The tensors of an OpenAI CLIP ViT archive, OpenAI's key order, random values.

    Tensors that OpenAI's ``convert_weights`` turns to half (conv / linear / attention weights and
    biases, ``text_projection``, ``visual.proj``) get ``dtype``; the rest (embeddings, LayerNorms,
    ``logit_scale``) stay float32 as in the released files. ``text_heads`` does not change any
    shape (OpenAI derives heads as width // 64); it is validated only.
    """
    if text_width % text_heads:
        raise ValueError(f"text_width {text_width} is not divisible by text_heads {text_heads}")
    if image_resolution % vision_patch_size:
        raise ValueError("image_resolution must be a multiple of vision_patch_size")
    draw = _Draw(seed)
    half: set[str] = {"text_projection", "visual.proj", "visual.conv1.weight"}
    sd: dict[str, Tensor] = {}
    sd["positional_embedding"] = draw.normal((context_length, text_width), 0.05)
    sd["text_projection"] = draw.linear(embed_dim, text_width).t().contiguous()  # (width, embed)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    grid = image_resolution // vision_patch_size
    sd["visual.class_embedding"] = draw.normal((vision_width,), 0.2)
    sd["visual.positional_embedding"] = draw.normal((grid * grid + 1, vision_width), 0.1)
    sd["visual.proj"] = draw.linear(embed_dim, vision_width).t().contiguous()  # (width, embed)
    sd["visual.conv1.weight"] = draw.normal(
        (vision_width, 3, vision_patch_size, vision_patch_size),
        1.0 / math.sqrt(3 * vision_patch_size * vision_patch_size),
    )
    sd["visual.ln_pre.weight"] = draw.norm_weight(vision_width)
    sd["visual.ln_pre.bias"] = draw.bias(vision_width)
    _clip_resblocks(draw, "visual.", vision_width, vision_layers, half, sd)
    sd["visual.ln_post.weight"] = draw.norm_weight(vision_width)
    sd["visual.ln_post.bias"] = draw.bias(vision_width)
    _clip_resblocks(draw, "", text_width, text_layers, half, sd)
    sd["token_embedding.weight"] = draw.normal((vocab_size, text_width), 0.1)
    sd["ln_final.weight"] = draw.norm_weight(text_width)
    sd["ln_final.bias"] = draw.bias(text_width)

    # OpenAI's order: top-level parameters, the image tower, the text tower, the embeddings.
    order = ["positional_embedding", "text_projection", "logit_scale"]
    order += [k for k in sd if k.startswith("visual.")]
    order += [k for k in sd if k.startswith("transformer.")]
    order += ["token_embedding.weight", "ln_final.weight", "ln_final.bias"]
    if include_integer_keys:  # top-level buffers follow the top-level parameters
        sd["input_resolution"] = torch.tensor(image_resolution, dtype=torch.int64)
        sd["context_length"] = torch.tensor(context_length, dtype=torch.int64)
        sd["vocab_size"] = torch.tensor(vocab_size, dtype=torch.int64)
        order[3:3] = list(CLIP_INTEGER_KEYS)
    return OrderedDict((k, sd[k].to(dtype) if k in half else sd[k]) for k in order)


def write_clip_torchscript(path: PathLike, **kwargs: Any) -> OrderedDict[str, Tensor]:
    """Write a TorchScript archive like OpenAI's ``ViT-B-16.pt`` (sizes as ``clip_state_dict``);
    returns its state dict.

    ``torch.jit.load(path).state_dict()`` yields exactly the returned dict (names, shapes, dtypes,
    values), including the 0-dim int64 entries ``input_resolution``, ``context_length`` and
    ``vocab_size``.
    """
    state = clip_state_dict(**kwargs)
    save_clip_archive(state, path)
    return state


def write_clip_state_dict(path: PathLike, **kwargs: Any) -> OrderedDict[str, Tensor]:
    """Write the same tensors as ``write_clip_torchscript`` with a plain ``torch.save``."""
    state = clip_state_dict(**kwargs)
    torch.save(state, os.fspath(path))
    return state


# ---------------------------------------------------------------------------------------------
# DINOv2 with registers
# ---------------------------------------------------------------------------------------------


def dinov2_state_dict(
    *,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    patch_size: int = 14,
    num_register_tokens: int = 4,
    pretrained_grid: int = 37,
    mlp_ratio: int = 4,
    seed: int = 0,
) -> OrderedDict[str, Tensor]:
    """The tensors of Meta's ``dinov2_vit*14_reg4_pretrain.pth`` (float32), random values."""
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    draw = _Draw(seed)
    d, hidden = embed_dim, embed_dim * mlp_ratio
    sd: OrderedDict[str, Tensor] = OrderedDict()
    sd["cls_token"] = draw.normal((1, 1, d), 0.2)
    sd["pos_embed"] = draw.normal((1, 1 + pretrained_grid * pretrained_grid, d), 0.2)
    sd["register_tokens"] = draw.normal((1, num_register_tokens, d), 0.2)
    sd["mask_token"] = draw.normal((1, d), 0.02)
    sd["patch_embed.proj.weight"] = draw.normal(
        (d, 3, patch_size, patch_size), 1.0 / math.sqrt(3 * patch_size * patch_size)
    )
    sd["patch_embed.proj.bias"] = draw.bias(d)
    for i in range(depth):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"] = draw.norm_weight(d)
        sd[p + "norm1.bias"] = draw.bias(d)
        sd[p + "attn.qkv.weight"] = draw.linear(3 * d, d)
        sd[p + "attn.qkv.bias"] = draw.bias(3 * d)
        sd[p + "attn.proj.weight"] = draw.linear(d, d)
        sd[p + "attn.proj.bias"] = draw.bias(d)
        sd[p + "ls1.gamma"] = draw.normal((d,), 0.05, mean=0.1)
        sd[p + "norm2.weight"] = draw.norm_weight(d)
        sd[p + "norm2.bias"] = draw.bias(d)
        sd[p + "mlp.fc1.weight"] = draw.linear(hidden, d)
        sd[p + "mlp.fc1.bias"] = draw.bias(hidden)
        sd[p + "mlp.fc2.weight"] = draw.linear(d, hidden)
        sd[p + "mlp.fc2.bias"] = draw.bias(d)
        sd[p + "ls2.gamma"] = draw.normal((d,), 0.05, mean=0.1)
    sd["norm.weight"] = draw.norm_weight(d)
    sd["norm.bias"] = draw.bias(d)
    return sd


def write_dinov2_pth(
    path: PathLike,
    *,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    patch_size: int = 14,
    num_register_tokens: int = 4,
    pretrained_grid: int = 37,
    seed: int = 0,
) -> OrderedDict[str, Tensor]:
    """Write a plain DINOv2 state dict like Meta's release; returns it."""
    state = dinov2_state_dict(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
        num_register_tokens=num_register_tokens, pretrained_grid=pretrained_grid, seed=seed,
    )
    torch.save(state, os.fspath(path))
    return state


# ---------------------------------------------------------------------------------------------
# DETRIS checkpoints
# ---------------------------------------------------------------------------------------------

_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _is_frozen_backbone(key: str) -> bool:
    """The official code freezes every backbone tensor whose name does not contain 'adapter'."""
    return key.startswith(("txt_backbone.", "dinov2.")) and "adapter" not in key


def official_trainable_keys(state_dict: Mapping[str, Tensor]) -> list[str]:
    """Keys of the parameters the official code trains (not frozen, not a BatchNorm statistic)."""
    return [
        k for k in state_dict
        if not _is_frozen_backbone(k) and k.rsplit(".", 1)[-1] not in _BN_STATS
    ]


def _fan_in(shape: torch.Size) -> int:
    return int(math.prod(shape[1:]))


def randomize_detris_state(state_dict: Mapping[str, Tensor], seed: int) -> OrderedDict[str, Tensor]:
    """A copy of a DETRIS state dict with every trainable tensor and BN statistic re-drawn.

    Frozen backbone tensors are kept. Re-drawn (deterministically, in key order):
    weights with 2+ dims ~ N(0, 1/fan_in); norm weights ~ 1 + N(0, 0.1) (LayerNorm and BatchNorm);
    biases ~ N(0, 0.05); BatchNorm running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5);
    ``num_batches_tracked`` is kept. Dtypes and shapes are kept.
    """
    draw = _Draw(seed)
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        leaf = key.rsplit(".", 1)[-1]
        shape = tuple(value.shape)
        if _is_frozen_backbone(key) or leaf == "num_batches_tracked" or not value.is_floating_point():
            out[key] = value.clone()
            continue
        if leaf == "running_mean":
            new = draw.normal(shape, 0.1)
        elif leaf == "running_var":
            new = draw.uniform(shape, 0.5, 1.5)
        elif value.dim() >= 2:
            new = draw.normal(shape, 1.0 / math.sqrt(_fan_in(value.shape)))
        elif value.dim() == 1 and leaf == "weight":
            # nn.Linear / nn.Conv weights have 2+ dims: a 1-D weight is a LayerNorm or BatchNorm.
            new = draw.norm_weight(shape[0])
        else:  # biases (incl. MultiheadAttention in_proj_bias) and any 0-dim parameter
            new = draw.normal(shape, 0.05)
        out[key] = new.to(value.dtype)
    return out


def _optimizer_and_scheduler_state(
    state_dict: Mapping[str, Tensor],
    *,
    epoch: int,
    base_lr: float,
    lr_multi: float,
    milestones: Iterable[int],
    gamma: float,
    optimizer_state: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Adam + MultiStepLR state dicts as torch writes them for the official two param groups."""
    trainable = official_trainable_keys(state_dict)
    backbone = [k for k in trainable if k.startswith(("txt_backbone.", "dinov2."))]
    head = [k for k in trainable if not k.startswith(("txt_backbone.", "dinov2."))]

    def params(keys: list[str]) -> list[nn.Parameter]:
        return [nn.Parameter(torch.zeros(0)) for _ in keys]

    groups = [
        {"params": params(backbone), "initial_lr": lr_multi * base_lr},
        {"params": params(head), "initial_lr": base_lr},
    ]
    optimizer = torch.optim.Adam(groups, lr=base_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(milestones), gamma=gamma, last_epoch=-1
    )
    with warnings.catch_warnings():  # no optimizer.step() here: silence torch's order warning
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epoch):
            scheduler.step()
    opt_state = optimizer.state_dict()
    if optimizer_state:
        for index, key in enumerate(backbone + head):
            shape = state_dict[key].shape
            opt_state["state"][index] = {
                "step": torch.tensor(float(epoch)),
                "exp_avg": torch.zeros(shape),
                "exp_avg_sq": torch.zeros(shape),
            }
    return opt_state, scheduler.state_dict()


def ddp_checkpoint(
    state_dict: Mapping[str, Tensor],
    *,
    epoch: int = 1,
    cur_iou: float = 0.5,
    best_iou: float = 0.5,
    base_lr: float = 1e-4,
    lr_multi: float = 1.0,
    milestones: Iterable[int] = (35, 55),
    gamma: float = 0.1,
    optimizer_state: bool = False,
) -> dict[str, Any]:
    """The dict the official ``train.py`` saves as ``last_model.pth`` / ``best_model.pth``.

    ``state_dict`` is the bare model's; the checkpoint holds it with DDP's ``module.`` prefix.
    ``optimizer_state=True`` also fills Adam's per-parameter moments (zeros) as a trained run has.
    """
    optimizer, scheduler = _optimizer_and_scheduler_state(
        state_dict, epoch=epoch, base_lr=base_lr, lr_multi=lr_multi, milestones=milestones,
        gamma=gamma, optimizer_state=optimizer_state,
    )
    prec = {f"Pr@{t * 10}": float(max(0.0, cur_iou - 0.1 * (t - 5))) for t in range(5, 10)}
    return {
        "epoch": epoch,
        "cur_iou": float(cur_iou),
        "best_iou": float(best_iou),
        "prec": prec,
        "state_dict": OrderedDict(("module." + k, v) for k, v in state_dict.items()),
        "optimizer": optimizer,
        "scheduler": scheduler,
    }
