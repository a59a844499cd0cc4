"""DETRIS: frozen DINOv2 + CLIP text towers with adapters, a neck, a decoder and a dynamic-conv head."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..processing import ProcessingConfig
from ..variants import DetrisConfig
from .clip_text import CLIPTextTransformer
from .decoder import Decoder
from .dinov2 import DinoVisionTransformer
from .head import Projector
from .neck import Neck
from .no_target import NoTargetHead

__all__ = ["DETRIS", "DetrisOutput"]


class DetrisOutput(NamedTuple):
    """What ``DETRIS.forward`` returns in every mode.

    Attributes:
        logits: ``(N, 1, 4H/p, 4W/p)`` mask logits (p = patch size).
        no_target_logits: ``(N,)`` logits of "the expression refers to nothing" from the no-target head,
            or None for a model without that head (the official one).
    """

    logits: Tensor
    no_target_logits: Tensor | None


class DETRIS(nn.Module):
    """Referring image segmentation model.

    Built from its parts (see ``detris.build_model`` for the named variants). The text tower runs first;
    the Dense Aligners inside the vision tower attend to its final word features.

    Args:
        config: the sizes the parts were built from; the model reads its feature taps and token length
            from it and saves it with its weights.
        txt_backbone: CLIP text tower (with Text Adapters).
        dinov2: DINOv2 ViT (with Dense Aligners).
        neck / decoder / proj: the trainable fusion stages.
        no_target_head: the optional "refers to nothing" classifier (gRefCOCO), present exactly when
            ``config.no_target_head`` is set; None, the default, is the official model.
        processing: the preprocessing contract stored with the weights; None gives the official one
            for ``config`` (`ProcessingConfig.for_model`).
    """

    config: DetrisConfig
    processing: ProcessingConfig

    def __init__(
        self,
        config: DetrisConfig,
        txt_backbone: CLIPTextTransformer,
        dinov2: DinoVisionTransformer,
        neck: Neck,
        decoder: Decoder,
        proj: Projector,
        no_target_head: NoTargetHead | None = None,
        processing: ProcessingConfig | None = None,
    ) -> None:
        super().__init__()
        if dinov2.patch_size != config.patch_size:
            raise ValueError(f"the vision tower has {dinov2.patch_size} px patches but config says {config.patch_size}")
        if (no_target_head is not None) != config.no_target_head:
            raise ValueError(
                f"config.no_target_head is {config.no_target_head} but a no-target head was "
                f"{'given' if no_target_head is not None else 'not given'}"
            )
        if processing is not None and (processing.input_size, processing.word_len) != (config.image_size, config.word_len):
            raise ValueError(
                f"processing input_size/word_len {processing.input_size}/{processing.word_len} disagree with the "
                f"config's image_size/word_len {config.image_size}/{config.word_len}"
            )
        self.config = config
        self.processing = processing if processing is not None else ProcessingConfig.for_model(config)
        self.txt_backbone = txt_backbone
        self.dinov2 = dinov2
        self.neck = neck
        self.decoder = decoder
        self.proj = proj
        self.no_target_head = no_target_head
        # The dtype the vision tower runs in under `low_precision` (None: the weights' own).
        self._vision_dtype: torch.dtype | None = None

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """0-based ViT blocks whose raw outputs are the first two of the neck's three maps (the third is
        the final normalised output)."""
        return self.config.vision_feature_layers

    @property
    def word_len(self) -> int:
        """The token length the model works with (the official causal mask is word_len x word_len)."""
        return self.config.word_len

    # ------------------------------------------------------------------ freezing
    def backbone_modules(self) -> list[nn.Module]:
        return [self.txt_backbone, self.dinov2]

    def adapter_modules(self) -> list[nn.Module]:
        """Every Dense Aligner and Text Adapter, in block order (vision first)."""
        blocks = [*self.dinov2.blocks, *self.txt_backbone.transformer.resblocks]
        mods: list[nn.Module] = [b.adapter for b in blocks if isinstance(b.adapter, nn.Module)]
        return mods

    def trainable_modules(self) -> list[nn.Module]:
        """The modules DETRIS trains: adapters, neck, decoder and head (and the no-target head)."""
        extra = [self.no_target_head] if self.no_target_head is not None else []
        return self.adapter_modules() + [self.neck, self.decoder, self.proj, *extra]

    def freeze_backbones(self) -> DETRIS:
        """Freeze both towers except their adapters; everything else trains (the official split)."""
        for module in self.backbone_modules():
            module.requires_grad_(False)
        for module in self.trainable_modules():
            module.requires_grad_(True)
        return self

    def set_grad_checkpointing(self, enabled: bool = True, scope: str = "block") -> DETRIS:
        """Recompute backbone activations in backward instead of storing them (training memory).

        Args:
            enabled: on or off.
            scope: ``"block"`` recomputes whole backbone blocks (both towers): each keeps only its
                input, the most memory saved, for about one extra ViT forward per step.
                ``"mlp"`` recomputes only the ViT MLPs' hidden layer (``fc1`` + GELU, the largest
                tensor a frozen block stores), for about a quarter of a ViT forward.
        """
        if scope not in ("block", "mlp"):
            raise ValueError(f"checkpointing scope must be 'block' or 'mlp', got {scope!r}")
        self.dinov2.grad_checkpointing = enabled
        self.dinov2.checkpoint_scope = scope
        self.txt_backbone.grad_checkpointing = enabled and scope == "block"
        return self

    def set_fast_paths(self, enabled: bool = True) -> DETRIS:
        """Switch the optional fast paths (all on by default; none changes the results beyond float
        rounding): BatchNorm folded into the preceding convolution in eval mode; in training, the
        attention core (when attention dropout is active) and the head's upsampled maps recomputed in
        backward instead of stored. Off runs every module as written, e.g. to check the fast paths."""
        for module in self.modules():
            if hasattr(type(module), "fast_path"):
                setattr(module, "fast_path", enabled)  # noqa: B010 - the attribute is declared on the class
        return self

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self,
        directory: str | os.PathLike,
        adapter_only: bool = False,
        base_weights: Mapping[str, str | os.PathLike] | None = None,
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors``; see ``detris.weights.save_pretrained``.
        An adapter-only save needs ``base_weights``, the backbone files the model was built from.
        (Loading is ``detris.from_pretrained``.)"""
        from ..weights.detris_format import save_pretrained

        return save_pretrained(self, directory, adapter_only=adapter_only, base_weights=base_weights)

    def push_to_hub(
        self,
        repo_id: str,
        adapter_only: bool = False,
        private: bool = False,
        base_weights: Mapping[str, str | os.PathLike] | None = None,
        **kwargs: Any,
    ) -> str:
        """Upload to the Hugging Face Hub (needs ``huggingface_hub``); see ``detris.weights.push_to_hub``."""
        from ..weights.detris_format import push_to_hub

        return push_to_hub(self, repo_id, adapter_only=adapter_only, private=private, base_weights=base_weights,
                           **kwargs)

    def parameter_counts(self) -> dict[str, int]:
        """Total, trainable and adapter parameters, and the backbones' size (for the adapter share)."""
        def count(mods) -> int:
            return sum(p.numel() for m in mods for p in m.parameters())

        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "adapters": count(self.adapter_modules()),
            "backbones": count(self.backbone_modules()),
        }

    # ------------------------------------------------------------------ forward
    @property
    def patch_size(self) -> int:
        return self.dinov2.patch_size

    @property
    def output_stride(self) -> float:
        """Input pixels per logit pixel: patch size / 4 (3.5 for /14 backbones)."""
        return self.dinov2.patch_size / 4

    def _check_inputs(self, images: Tensor, tokens: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (N, 3, H, W) tensor normalised with the CLIP mean/std, got {shape}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point (normalised), got {images.dtype}")
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a (N, L) tensor from detris.tokenize, got {shape}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be int64 ids from detris.tokenize, got {tokens.dtype}")
        if tokens.shape[0] != images.shape[0]:
            raise ValueError(f"batch sizes differ: {images.shape[0]} images but {tokens.shape[0]} token rows")
        if tokens.shape[1] != self.word_len:
            raise ValueError(
                f"tokens have length {tokens.shape[1]} but this model uses word_len={self.word_len}: "
                f"use detris.tokenize(texts, context_length={self.word_len})"
            )
        self.dinov2.grid_size(images.shape[-2], images.shape[-1])

    @contextlib.contextmanager
    def low_precision(self, dtype: torch.dtype | None) -> Iterator[DETRIS]:
        """Run the vision tower (with the Dense Aligners inside it) in ``dtype`` (bf16 / fp16) under
        autocast while the context is open; everything else stays in float32 on the tower's outputs
        cast back to float32. None or float32: no change.

        Why only the tower: it holds nearly all of the forward's FLOPs and its low-precision masks agree
        with float32's, while the text tower (a few tokens: almost no time) and the neck, decoder and
        head each move mask boundaries in bf16 (docs/benchmarks.md).
        """
        previous = self._vision_dtype
        self._vision_dtype = None if dtype in (None, torch.float32) else dtype
        try:
            yield self
        finally:
            self._vision_dtype = previous

    def _run_vision(self, images: Tensor, words: Tensor) -> tuple[Tensor, list[Tensor]]:
        if self._vision_dtype is None:
            return self.dinov2(images, words, self.feature_layers)
        with torch.autocast(device_type=images.device.type, dtype=self._vision_dtype):
            final, tapped = self.dinov2(images, words, self.feature_layers)
        return final.float(), [t.float() for t in tapped]

    def encode(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """The intermediate stages, for inspection and parity checks.

        Returns a dict with ``words`` (N, L, text_width), ``sentence`` (N, text_embed_dim), ``maps`` (three
        (N, C, H/p, W/p)), ``neck`` and ``decoder`` (N, fusion_dim, H/p, W/p).
        """
        self._check_inputs(images, tokens)
        tokens = tokens.long()
        words, sentence = self.txt_backbone(tokens)
        gh, gw = self.dinov2.grid_size(images.shape[-2], images.shape[-1])
        final, tapped = self._run_vision(images, words)
        prefix = self.dinov2.num_prefix_tokens
        # (N, prefix + gh*gw, C) tokens -> (N, C, gh, gw) maps as channels-last views: no copy, and the
        # neck's convolutions run in that memory format.
        maps = [t[:, prefix:].reshape(t.shape[0], gh, gw, -1).permute(0, 3, 1, 2) for t in (*tapped, final)]
        fq = self.neck(maps, sentence)
        dec = self.decoder(fq, words, tokens == 0)
        return {"words": words, "sentence": sentence, "maps": maps, "neck": fq, "decoder": dec}

    def forward(self, images: Tensor, tokens: Tensor) -> DetrisOutput:
        """Segment the object each expression refers to.

        Args:
            images: (N, 3, H, W) float, normalised with the CLIP mean/std; H, W multiples of the patch
                size p.
            tokens: (N, word_len) int64 from ``detris.tokenize`` (0 = padding).

        Returns:
            `DetrisOutput`: mask logits (N, 1, 4H/p, 4W/p) and, for a model with the no-target head, its
            logits (N,). Training losses are computed outside the model (`detris.losses`).
        """
        stages = self.encode(images, tokens)
        decoded, sentence = stages["decoder"], stages["sentence"]
        assert isinstance(decoded, Tensor) and isinstance(sentence, Tensor)
        logits = self.proj(decoded, sentence)
        if self.no_target_head is None:
            return DetrisOutput(logits, None)
        return DetrisOutput(logits, self.no_target_head(decoded, sentence, logits))
