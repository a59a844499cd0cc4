"""Small building blocks shared by several architectural parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names, batch-first, through SDPA.

    The official model uses ``nn.MultiheadAttention`` everywhere; keeping its parameter layout
    (``in_proj_weight`` (3E, E), ``in_proj_bias`` (3E,), ``out_proj``) lets official checkpoints load
    key-for-key, while ``scaled_dot_product_attention`` picks the fused kernel for the device.

    Args:
        dim: embedding width E (queries, keys and values all have width E).
        num_heads: number of heads; must divide ``dim``.
        dropout: dropout on the attention probabilities, active in training mode only.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """query (N, Lq, E), key/value (N, Lk, E) -> (N, Lq, E).

        ``attn_mask`` is boolean with True = may attend, broadcastable to (N, heads, Lq, Lk).
        """
        if query is key and key is value:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
            q = F.linear(query, w_q, b_q)
            k = F.linear(key, w_k, b_k)
            v = F.linear(value, w_v, b_v)
        out = F.scaled_dot_product_attention(
            self._split_heads(q),
            self._split_heads(k),
            self._split_heads(v),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        n, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, length, self.dim))


def conv_bn_relu(
    in_dim: int, out_dim: int, kernel_size: int = 1, padding: int = 0, transposed: bool = False
) -> nn.Sequential:
    """Bias-free (transposed) 2-D convolution, BatchNorm (eps 1e-5), ReLU: the neck's and head's unit.

    Children are indexed ``0, 1, 2`` as in the official checkpoints.
    """
    conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    return nn.Sequential(
        conv_cls(in_dim, out_dim, kernel_size, 1, padding, bias=False),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(inplace=True),
    )
