"""DETRIS adapters: the dense mixture of convolutions, the Dense Aligner (vision) and Text Adapter (text).

Both adapters share one shape: ``D_fc1`` down to the adapter width d (+ReLU), three densely connected
conv branches over the token grid (each sees the input and every earlier branch's output), ``D_fc2``
back up. Branch widths: 1x1 -> d/2; 1x1 -> d/16 -> 3x3 -> d/4; 1x1 -> d/16 -> 5x5 -> d/4, all
conv-BN(eps 1e-3)-ReLU, concatenated back to d. Parameter names follow the official checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MultiheadAttention, conv_bn_relu_forward


class ConvBNReLU(nn.Module):
    """Biased 1-D or 2-D convolution, BatchNorm, ReLU (the adapters' conv unit).

    In eval mode the BatchNorm is folded into the convolution (``fast_path``; see
    ``common.conv_bn_relu_forward``).
    """

    fast_path: bool = True

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, ndim: int, bn_eps: float) -> None:
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if ndim == 1 else nn.BatchNorm2d
        self.conv = conv(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=True)
        self.bn = norm(out_dim, eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in, L) or (N, in, H, W) -> (N, out, L) or (N, out, H, W)."""
        return conv_bn_relu_forward(x, self.conv, self.bn, self.fast_path)


class DenseConvMixer(nn.Module):
    """The three densely connected conv branches of width d over a 1-D sequence or a 2-D grid.

    A base class rather than a child module so that the adapters' parameter names
    (``dense_branch1.conv.weight``, ...) stay those of the official checkpoints.
    """

    def __init__(self, dim: int, ndim: int, bn_eps: float) -> None:
        super().__init__()
        if dim % 16:
            raise ValueError(f"adapter width {dim} must be a multiple of 16 (its narrowest branch is d/16)")
        half, quarter, sixteenth = dim // 2, dim // 4, dim // 16

        def unit(i: int, o: int, k: int) -> ConvBNReLU:
            return ConvBNReLU(i, o, k, ndim, bn_eps)

        self.dense_branch1 = unit(dim, half, 1)
        self.dense_branch2 = nn.Sequential(unit(dim + half, sixteenth, 1), unit(sixteenth, quarter, 3))
        self.dense_branch3 = nn.Sequential(
            unit(dim + half + quarter, sixteenth, 1), unit(sixteenth, quarter, 5)
        )

    def mix(self, x: Tensor) -> Tensor:
        """(N, d, *spatial) -> the concatenated branch outputs (N, d, *spatial)."""
        b1 = self.dense_branch1(x)
        b2 = self.dense_branch2(torch.cat([x, b1], dim=1))
        b3 = self.dense_branch3(torch.cat([x, b1, b2], dim=1))
        return torch.cat([b1, b2, b3], dim=1)


class TextAdapter(DenseConvMixer):
    """Text Adapter: the dense mixture run in 1-D over the token sequence.

    Token 0 (start-of-text) bypasses the convolutions. As in the official model it still receives the
    residual, so its value after the mixer is twice the down-projected input.

    Args:
        dim: width of the text stream (CLIP: 512).
        adapter_dim: adapter width d (official: 64, or 384 for L*).
        bn_eps: BatchNorm epsilon (official: 1e-3).
    """

    def __init__(self, dim: int, adapter_dim: int, bn_eps: float = 1e-3) -> None:
        super().__init__(adapter_dim, ndim=1, bn_eps=bn_eps)
        self.D_fc1 = nn.Linear(dim, adapter_dim)
        self.D_fc2 = nn.Linear(adapter_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, L, dim) -> (N, L, dim)."""
        x0 = F.relu(self.D_fc1(x))
        mixed = self.mix(x0[:, 1:].transpose(1, 2)).transpose(1, 2)
        mixed = torch.cat([x0[:, :1], mixed], dim=1) + x0
        return self.D_fc2(mixed)


class CrossModalAttention(nn.Module):
    """Patch tokens attend to word features in a small shared width (no mask: pad words included)."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.multihead_attn = MultiheadAttention(embed_dim, num_heads, dropout=dropout)
        self.back_proj = nn.Linear(embed_dim, image_dim)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        """image (N, P, image_dim), text (N, L, text_dim) -> (N, P, image_dim)."""
        q = self.image_proj(image)
        kv = self.text_proj(text)
        return self.back_proj(self.multihead_attn(q, kv, kv))


class DenseAligner(DenseConvMixer):
    """Dense Aligner: the dense mixture in 2-D over patch tokens, then cross-attention to the words.

    Prefix tokens (cls + registers) bypass the convolutions and the cross-attention; like the official
    model they still get the residual, so they come out doubled.

    Args:
        dim: width of the visual stream (768 for ViT-B, 1024 for ViT-L).
        adapter_dim: adapter width d (official: 128, or 384 for L*).
        text_dim: width of the word features (CLIP: 512).
        embed_dim / num_heads: width and heads of the cross-attention (official: 128, 8).
        dropout: dropout on the cross-attention probabilities (official: 0.1).
        bn_eps: BatchNorm epsilon (official: 1e-3).
    """

    def __init__(
        self,
        dim: int,
        adapter_dim: int,
        text_dim: int,
        embed_dim: int = 128,
        num_heads: int = 8,
        dropout: float = 0.1,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__(adapter_dim, ndim=2, bn_eps=bn_eps)
        self.D_fc1 = nn.Linear(dim, adapter_dim)
        self.D_fc2 = nn.Linear(adapter_dim, dim)
        self.cross = CrossModalAttention(adapter_dim, text_dim, embed_dim, num_heads, dropout)

    def forward(self, x: Tensor, words: Tensor, grid: tuple[int, int]) -> Tensor:
        """x (N, prefix + gh*gw, dim) in row-major patch order, words (N, L, text_dim) -> like x."""
        gh, gw = grid
        x0 = F.relu(self.D_fc1(x))
        n, length, d = x0.shape
        prefix = length - gh * gw
        if prefix < 0:
            raise ValueError(f"{length} tokens cannot hold a {gh}x{gw} patch grid")
        # Token rows are already pixels with their channels last: view them as an NCHW map in the
        # channels-last memory format (no transpose copy), and back again after the convolutions.
        spatial = x0[:, prefix:].reshape(n, gh, gw, d).permute(0, 3, 1, 2)
        mixed = self.mix(spatial) + spatial
        mixed = self.cross(mixed.permute(0, 2, 3, 1).reshape(n, gh * gw, d), words)
        out = torch.cat([x0[:, :prefix], mixed], dim=1) + x0
        return self.D_fc2(out)
