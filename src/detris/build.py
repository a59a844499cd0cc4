"""Turn a named variant into a DETRIS model, optionally with pretrained backbone files."""

from __future__ import annotations

import os
from typing import Any

from .modeling import (
    DETRIS,
    CLIPTextTransformer,
    Decoder,
    DenseAligner,
    DinoVisionTransformer,
    Neck,
    NoTargetHead,
    Projector,
    TextAdapter,
)
from .processing import ProcessingConfig
from .variants import DetrisConfig, get_variant
from .weights.clip import load_clip_text_weights
from .weights.dinov2 import load_dinov2_weights


def build_model(
    variant: str | DetrisConfig = "detris-b",
    dinov2_weights: str | os.PathLike | None = None,
    clip_weights: str | os.PathLike | None = None,
    *,
    processing: ProcessingConfig | None = None,
    **overrides: Any,
) -> DETRIS:
    """Build DETRIS for a named variant (``detris-b``, ``detris-l``, ``detris-l-mixed``, ``detris-tiny``).

    Args:
        variant: a variant name or a ``DetrisConfig``.
        dinov2_weights: official ``dinov2_vit{b,l}14_reg4_pretrain.pth`` (or transformers weights).
        clip_weights: OpenAI ``ViT-B-16.pt`` (TorchScript or state dict, or transformers weights).
        processing: the preprocessing contract the model carries (default: the official one for its
            sizes, `ProcessingConfig.for_model`).
        overrides: variant fields to replace, e.g. ``word_len=22``.

    Returns:
        The model in training mode with both backbones frozen except their adapters. Towers without a
        weight file keep their random initialisation. The model does not remember the files: an
        adapter-only save takes them again (``save_pretrained(..., base_weights=...)``).
    """
    cfg = get_variant(variant, **overrides)  # a name or a DetrisConfig
    aligners = {
        i: DenseAligner(
            cfg.vision_width,
            cfg.vision_adapter_dim,
            cfg.text_width,
            embed_dim=cfg.aligner_embed_dim,
            num_heads=cfg.aligner_heads,
            dropout=cfg.decoder_dropout,
            bn_eps=cfg.adapter_bn_eps,
        )
        for i in cfg.vision_adapter_layers
    }
    vision = DinoVisionTransformer(
        dim=cfg.vision_width,
        depth=cfg.vision_depth,
        num_heads=cfg.vision_heads,
        mlp_ratio=cfg.vision_mlp_ratio,
        patch_size=cfg.patch_size,
        num_register_tokens=cfg.num_register_tokens,
        pretrained_grid=cfg.pretrained_grid,
        interpolate_offset=cfg.interpolate_offset,
        interpolate_antialias=cfg.interpolate_antialias,
        adapters=aligners,
        adapter_scale=cfg.adapter_scale,
    )
    text_adapters = {
        i: TextAdapter(cfg.text_width, cfg.text_adapter_dim, bn_eps=cfg.adapter_bn_eps) for i in cfg.text_adapter_layers
    }
    text = CLIPTextTransformer(
        vocab_size=cfg.vocab_size,
        context_length=cfg.text_context_length,
        width=cfg.text_width,
        depth=cfg.text_depth,
        num_heads=cfg.text_heads,
        embed_dim=cfg.text_embed_dim,
        adapters=text_adapters,
        adapter_scale=cfg.adapter_scale,
    )
    neck = Neck([cfg.vision_width] * 3, cfg.fusion_dim, cfg.text_embed_dim)
    decoder = Decoder(cfg.decoder_layers, cfg.fusion_dim, cfg.decoder_heads, cfg.decoder_ffn_dim, cfg.decoder_dropout)
    head = Projector(cfg.text_embed_dim, cfg.projector_dim, cfg.head_kernel_size)
    no_target = (
        NoTargetHead(cfg.fusion_dim, cfg.text_embed_dim, cfg.projector_dim) if cfg.no_target_head else None
    )
    model = DETRIS(cfg, text, vision, neck, decoder, head, no_target_head=no_target, processing=processing)
    if dinov2_weights is not None:
        load_dinov2_weights(model.dinov2, dinov2_weights)
    if clip_weights is not None:
        load_clip_text_weights(model.txt_backbone, clip_weights)
    return model.freeze_backbones()
