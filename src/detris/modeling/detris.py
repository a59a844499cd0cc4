"""DETRIS: frozen DINOv2 + CLIP text towers with adapters, a neck, a decoder and a dynamic-conv head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip_text import CLIPTextTransformer
from .decoder import Decoder
from .dinov2 import DinoVisionTransformer
from .head import Projector
from .neck import Neck
from .no_target import NoTargetHead, no_target_loss

if TYPE_CHECKING:
    from ..processing import ProcessingConfig
    from ..variants import DetrisConfig


class DETRIS(nn.Module):
    """Referring image segmentation model.

    Built from its parts (see ``detris.build_model`` for the named variants). The text tower runs first;
    the Dense Aligners inside the vision tower attend to its final word features.

    Args:
        txt_backbone: CLIP text tower (with Text Adapters).
        dinov2: DINOv2 ViT (with Dense Aligners).
        neck / decoder / proj: the trainable fusion stages.
        feature_layers: 0-based ViT blocks whose raw outputs are the first two of the neck's three maps
            (the third is the final normalised output).
        word_len: the token length the model works with (the official causal mask is word_len x word_len).
        no_target_head: the optional "refers to nothing" classifier (gRefCOCO); None, the default, is the
            official model.
        no_target_weight: weight of its loss beside the mask loss.
    """

    #: The sizes this model was built from (set by ``build_model``).
    config: DetrisConfig
    #: The preprocessing contract stored with the weights (set by ``from_pretrained``; None: the official one).
    processing: ProcessingConfig | None
    #: The backbone files the towers were loaded from (set by ``build_model``; needed by adapter-only saves).
    base_weights: dict[str, str] | None

    def __init__(
        self,
        txt_backbone: CLIPTextTransformer,
        dinov2: DinoVisionTransformer,
        neck: Neck,
        decoder: Decoder,
        proj: Projector,
        feature_layers: tuple[int, ...],
        word_len: int,
        no_target_head: NoTargetHead | None = None,
        no_target_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.txt_backbone = txt_backbone
        self.dinov2 = dinov2
        self.neck = neck
        self.decoder = decoder
        self.proj = proj
        self.feature_layers = tuple(feature_layers)
        self.word_len = word_len
        self.no_target_head = no_target_head
        self.no_target_weight = float(no_target_weight)
        self.processing = None
        self.base_weights = None

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
    def save_pretrained(self, directory, adapter_only: bool = False, base_weights=None):
        """Write ``config.json`` + ``model.safetensors``; see ``detris.weights.save_pretrained``.
        (Loading is ``detris.from_pretrained``.)"""
        from ..weights.detris_format import save_pretrained

        return save_pretrained(self, directory, adapter_only=adapter_only, base_weights=base_weights)

    def push_to_hub(self, repo_id: str, adapter_only: bool = False, private: bool = False, **kwargs) -> str:
        """Upload to the Hugging Face Hub (needs ``huggingface_hub``); see ``detris.weights.push_to_hub``."""
        from ..weights.detris_format import push_to_hub

        return push_to_hub(self, repo_id, adapter_only=adapter_only, private=private, **kwargs)

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

    def encode(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """The intermediate stages, for inspection and parity checks.

        Returns a dict with ``words`` (N, L, text_width), ``sentence`` (N, text_embed_dim), ``maps`` (three
        (N, C, H/p, W/p)), ``neck`` and ``decoder`` (N, fusion_dim, H/p, W/p).
        """
        self._check_inputs(images, tokens)
        tokens = tokens.long()
        words, sentence = self.txt_backbone(tokens)
        gh, gw = self.dinov2.grid_size(images.shape[-2], images.shape[-1])
        final, tapped = self.dinov2(images, words, self.feature_layers)
        prefix = self.dinov2.num_prefix_tokens
        # (N, prefix + gh*gw, C) tokens -> (N, C, gh, gw) maps as channels-last views: no copy, and the
        # neck's convolutions run in that memory format.
        maps = [t[:, prefix:].reshape(t.shape[0], gh, gw, -1).permute(0, 3, 1, 2) for t in (*tapped, final)]
        fq = self.neck(maps, sentence)
        dec = self.decoder(fq, words, tokens == 0)
        return {"words": words, "sentence": sentence, "maps": maps, "neck": fq, "decoder": dec}

    def forward(
        self, images: Tensor, tokens: Tensor, mask: Tensor | None = None, no_target: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Segment the object each expression refers to.

        Args:
            images: (N, 3, H, W) float, normalised with the CLIP mean/std; H, W multiples of 14.
            tokens: (N, word_len) int64 from ``detris.tokenize`` (0 = padding).
            mask: optional (N, 1, H', W') target in [0, 1]; in training mode the loss is returned too.
            no_target: optional (N,) bool labels "the expression refers to nothing", for the no-target
                head's loss; default: an all-zero ``mask``.

        Returns:
            logits (N, 1, 4H/14, 4W/14); with ``mask`` in training mode ``(logits, loss)`` where loss is
            binary cross-entropy against the mask resized with legacy "nearest" to the logits' size
            (plus ``no_target_weight`` x the no-target head's BCE when the model has one).
        """
        stages = self.encode(images, tokens)
        logits = self.proj(stages["decoder"], stages["sentence"])
        if mask is None or not self.training:
            return logits
        loss = segmentation_loss(logits, mask)
        if self.no_target_head is not None:
            if no_target is None:
                no_target = mask.flatten(1).amax(1) <= 0
            nt_logits = self.no_target_head(stages["decoder"], stages["sentence"], logits)
            loss = loss + self.no_target_weight * no_target_loss(nt_logits, no_target)
        return logits, loss

    def forward_with_no_target(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """Mask logits (N, 1, h, w) and the no-target head's logits (N,), or None without that head."""
        stages = self.encode(images, tokens)
        logits = self.proj(stages["decoder"], stages["sentence"])
        if self.no_target_head is None:
            return logits, None
        return logits, self.no_target_head(stages["decoder"], stages["sentence"], logits)


def segmentation_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """BCE-with-logits against ``mask`` (N, 1, H, W) resized (legacy nearest) to the logits' size."""
    if mask.dim() == 3:
        mask = mask[:, None]
    mask = mask.to(logits.dtype)
    if mask.shape[-2:] != logits.shape[-2:]:
        mask = F.interpolate(mask, size=logits.shape[-2:], mode="nearest")
    return F.binary_cross_entropy_with_logits(logits, mask)
