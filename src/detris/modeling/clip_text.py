"""The CLIP text transformer, with optional Text Adapters.

Parameter names follow OpenAI's CLIP checkpoints (``transformer.resblocks.{i}.attn.in_proj_weight``, ...)
without the image tower, so ``ViT-B-16.pt`` loads directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .adapters import TextAdapter
from .common import MultiheadAttention


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32, as CLIP does for its fp16 weights (also when the
    module itself was cast to fp16/bf16: its weight and bias are then raised to float32 too)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
        return super().forward(x)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextMlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden_dim)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Causal pre-norm block. With an adapter the block output is
    ``x + mlp(ln_2(x)) + adapter_scale * adapter(x)``, where the adapter reads the residual stream
    after attention, un-normalised (as in the official model)."""

    def __init__(self, dim: int, num_heads: int, adapter: TextAdapter | None = None, adapter_scale: float = 0.2) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads)
        self.ln_2 = LayerNorm(dim)
        self.mlp = TextMlp(dim, 4 * dim)
        self.adapter = adapter
        self.adapter_scale = adapter_scale

    def forward(self, x: Tensor) -> Tensor:
        """x (N, L, dim) -> (N, L, dim)."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, is_causal=True)
        if self.adapter is None:
            return x + self.mlp(self.ln_2(x))
        return x + self.mlp(self.ln_2(x)) + self.adapter_scale * self.adapter(x)


class Transformer(nn.Module):
    def __init__(self, blocks: list[ResidualAttentionBlock]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


class CLIPTextTransformer(nn.Module):
    """CLIP text tower: token + position embedding, causal blocks, ``ln_final``, EOT pooling.

    Args:
        vocab_size / context_length: sizes of the token and position embeddings (49408, 77).
        width / depth / num_heads: transformer sizes (512, 12, 8 for ViT-B/16's text tower).
        embed_dim: columns of ``text_projection`` (the sentence vector's size).
        adapters: ``{block index: TextAdapter}`` for the blocks that carry one.
    """

    def __init__(
        self,
        vocab_size: int = 49408,
        context_length: int = 77,
        width: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        embed_dim: int = 512,
        adapters: dict[int, TextAdapter] | None = None,
        adapter_scale: float = 0.2,
    ) -> None:
        super().__init__()
        adapters = adapters or {}
        bad = sorted(i for i in adapters if not 0 <= i < depth)
        if bad:
            raise ValueError(f"text adapters requested for blocks {bad} of a {depth}-block transformer")
        self.context_length = context_length
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(
            [ResidualAttentionBlock(width, num_heads, adapters.get(i), adapter_scale) for i in range(depth)]
        )
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        # Kept only so that CLIP checkpoints load strictly; DETRIS never uses it.
        self.logit_scale = nn.Parameter(torch.ones([]))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (N, L) int64 -> word features (N, L, width) = ``ln_final`` output, and the sentence
        vector (N, embed_dim) = word feature at the end-of-text token (the highest id) @ projection."""
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the text context length {self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        for block in self.transformer.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        words = self.ln_final(x)
        eot = tokens.argmax(dim=-1)
        sentence = words[torch.arange(words.shape[0], device=words.device), eot] @ self.text_projection.to(words.dtype)
        return words, sentence
