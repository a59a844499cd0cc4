"""The vision-language decoder: visual queries attend to themselves and to the words."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .common import MultiheadAttention


def sine_positions_1d(dim: int, length: int, device: torch.device | None = None) -> Tensor:
    """Transformer sin/cos positions: (length, dim), sin in even channels, cos in odd ones.

    Computed in float32 like the official model (callers cast), so float64 runs stay comparable.
    """
    if dim % 2:
        raise ValueError(f"1-D sine positions need an even width, got {dim}")
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


def sine_positions_2d(dim: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """2-D sin/cos positions, (height*width, dim) row-major: the first half of the channels encodes the
    column (sin/cos interleaved), the second half the row. Float32, as ``sine_positions_1d``."""
    if dim % 4:
        raise ValueError(f"2-D sine positions need a width divisible by 4, got {dim}")
    half = dim // 2
    freq = torch.exp(torch.arange(0.0, half, 2, device=device) * -(math.log(10000.0) / half))
    cols = torch.arange(0.0, width, device=device)[:, None] * freq  # (W, half/2)
    rows = torch.arange(0.0, height, device=device)[:, None] * freq  # (H, half/2)
    pe = torch.zeros(height, width, dim, device=device)
    pe[:, :, 0:half:2] = torch.sin(cols)[None]
    pe[:, :, 1:half:2] = torch.cos(cols)[None]
    pe[:, :, half::2] = torch.sin(rows)[:, None]
    pe[:, :, half + 1 :: 2] = torch.cos(rows)[:, None]
    return pe.reshape(height * width, dim)


class DecoderLayer(nn.Module):
    """Pre-norm layer: self-attention, cross-attention to the words (pad words masked), FFN.

    Positions are added to queries and keys, never to values; each attention output passes through an
    extra LayerNorm before its residual, and the FFN has a LayerNorm after its ReLU + dropout.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.self_attn = MultiheadAttention(dim, num_heads, dropout=dropout)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.multihead_attn = MultiheadAttention(dim, num_heads, dropout=dropout)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.LayerNorm(ffn_dim),
            nn.Linear(ffn_dim, dim),
        )
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, vis: Tensor, words: Tensor, vis_pos: Tensor, word_pos: Tensor, keep: Tensor) -> Tensor:
        """vis (N, HW, dim), words (N, L, dim), vis_pos (HW, dim), word_pos (L, dim),
        keep (N, 1, 1, L) bool (True = real word) -> (N, HW, dim)."""
        h = self.norm1(vis)
        q = h + vis_pos
        vis = vis + self.dropout1(self.self_attn_norm(self.self_attn(q, q, h)))
        h = self.norm2(vis)
        h = self.multihead_attn(h + vis_pos, words + word_pos, words, attn_mask=keep)
        vis = vis + self.dropout2(self.cross_attn_norm(h))
        return vis + self.dropout3(self.ffn(self.norm3(vis)))


class Decoder(nn.Module):
    """A stack of ``DecoderLayer`` and a final LayerNorm.

    Args:
        num_layers / dim / num_heads / ffn_dim / dropout: official 3 / 512 / 8 / 512 / 0.1.
    """

    def __init__(self, num_layers: int, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, vis: Tensor, words: Tensor, pad_mask: Tensor) -> Tensor:
        """vis (N, dim, H, W), words (N, L, dim), pad_mask (N, L) bool (True = padding) -> (N, dim, H, W)."""
        n, c, h, w = vis.shape
        vis_pos = sine_positions_2d(c, h, w, vis.device).to(vis.dtype)
        word_pos = sine_positions_1d(words.shape[-1], words.shape[1], vis.device).to(words.dtype)
        keep = ~pad_mask[:, None, None, :]
        # (N, C, H, W) -> (N, HW, C): a view when vis is channels-last. The residual stream stays in
        # the parameters' dtype under autocast (the convolutions before hand over bf16/fp16).
        x = vis.permute(0, 2, 3, 1).reshape(n, h * w, c).to(self.norm.weight.dtype)
        for layer in self.layers:
            x = layer(x, words, vis_pos, word_pos, keep)
        # Back to (N, C, H, W) as a channels-last view (no copy); the head picks its layout.
        return self.norm(x).transpose(1, 2).reshape(n, c, h, w)
