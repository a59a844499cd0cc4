"""The neck: project the three DINOv2 maps, gate each by the sentence, aggregate, CoordConv."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import conv_bn_relu


class SentenceGate(nn.Module):
    """The official neck's "cross-attention" of every visual token to the single sentence token.

    Attention over one key is identically 1, so the result is ``v * out_proj(W_v s + b_v)``: the query
    and key projections exist in checkpoints (``multihead_attn.in_proj_weight`` rows 0..2E) but cannot
    change the output, and are skipped here.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.multihead_attn = _AttentionParams(dim)

    def forward(self, visual: Tensor, sentence: Tensor) -> Tensor:
        """visual (N, C, H, W), sentence (N, C) -> (N, C, H, W)."""
        attn = self.multihead_attn
        dim = attn.out_proj.in_features
        value = F.linear(sentence, attn.in_proj_weight[2 * dim :], attn.in_proj_bias[2 * dim :])
        gate = attn.out_proj(value)
        return visual * gate[:, :, None, None]


class _AttentionParams(nn.Module):
    """Parameter holder with ``nn.MultiheadAttention``'s names, for checkpoint compatibility."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class CoordConv(nn.Module):
    """Appends normalised [x, y] coordinates in [-1, 1] as two channels, then conv-BN-ReLU."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_dim + 2, out_dim, kernel_size, kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        # Built in float32 as the official model does, then cast to the activations' dtype.
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x, grid_y]).to(x.dtype).expand(n, -1, -1, -1)
        return self.conv1(torch.cat([x, coords], dim=1))


class Neck(nn.Module):
    """Fuses the three same-resolution ViT maps with the sentence vector into one (N, dim, H, W) map.

    Args:
        in_dims: channels of the three maps (the ViT width, three times).
        dim: output channels (official ``vis_dim`` 512).
        text_dim: size of the sentence vector.
    """

    def __init__(self, in_dims: Sequence[int], dim: int, text_dim: int) -> None:
        super().__init__()
        if len(in_dims) != 3:
            raise ValueError(f"the neck fuses exactly three maps, got {len(in_dims)} input widths")
        self.txt_proj = nn.Linear(text_dim, dim)
        self.f3_proj = conv_bn_relu(in_dims[0], dim, 1)
        self.f4_proj = conv_bn_relu(in_dims[1], dim, 1)
        # A 1x1 transposed conv: the ViT maps share one stride, so the official "upsampling" is 1x1.
        self.f5_proj = conv_bn_relu(in_dims[2], dim, 1, transposed=True)
        self.fusion3 = SentenceGate(dim)
        self.fusion4 = SentenceGate(dim)
        self.fusion5 = SentenceGate(dim)
        self.aggr = conv_bn_relu(3 * dim, dim, 1)
        self.coordconv = nn.Sequential(CoordConv(dim, dim, 3), conv_bn_relu(dim, dim, 3, 1))

    def forward(self, maps: Sequence[Tensor], sentence: Tensor) -> Tensor:
        """maps: three (N, C_i, H, W); sentence (N, text_dim) -> (N, dim, H, W)."""
        v3, v4, v5 = maps
        s = self.txt_proj(sentence)
        f3 = self.fusion3(self.f3_proj(v3), s)
        f4 = self.fusion4(self.f4_proj(v4), s)
        f5 = self.fusion5(self.f5_proj(v5), s)
        fq = self.aggr(torch.cat([f3, f4, f5], dim=1))
        return self.coordconv(fq) + fq
