"""Small building blocks shared by several architectural parts."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off inside, if it is on (a no-op context otherwise, e.g. while exporting)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names, batch-first, through SDPA.

    The official model uses ``nn.MultiheadAttention`` everywhere; keeping its parameter layout
    (``in_proj_weight`` (3E, E), ``in_proj_bias`` (3E,), ``out_proj``) lets official checkpoints load
    key-for-key, while ``scaled_dot_product_attention`` picks the fused kernel for the device.

    With dropout active (training), SDPA on CPU cannot use its fused kernel: it keeps the whole
    (N, heads, Lq, Lk) probability matrix, a float dropout mask and the dropped matrix for backward
    (for the decoder's 1024-token self-attention, 192 MiB per layer at batch 2). With ``fast_path``
    (the default) float32/64 attention with dropout on CPU goes through ``DropoutAttention`` instead,
    which keeps a boolean mask and recomputes the probabilities in backward.

    Args:
        dim: embedding width E (queries, keys and values all have width E).
        num_heads: number of heads; must divide ``dim``.
        dropout: dropout on the attention probabilities, active in training mode only.
    """

    fast_path: bool = True

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
        elif query is key:
            # Self-attention with positions added to queries and keys only (the decoder): one GEMM
            # projects both, the value projection reads the position-free input.
            two = 2 * self.dim
            q, k = F.linear(query, self.in_proj_weight[:two], self.in_proj_bias[:two]).chunk(2, dim=-1)
            v = F.linear(value, self.in_proj_weight[two:], self.in_proj_bias[two:])
        else:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
            q = F.linear(query, w_q, b_q)
            k = F.linear(key, w_k, b_k)
            v = F.linear(value, w_v, b_v)
        dropout = self.dropout if self.training else 0.0
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if dropout > 0 and self.fast_path and torch.is_grad_enabled() and uses_dropout_attention(q, is_causal):
            keep = torch.rand(q.shape[:-1] + k.shape[-2:-1], device=q.device) >= dropout
            out = DropoutAttention.apply(q, k, v, attn_mask, keep, dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)
        n, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, length, self.dim))


def uses_dropout_attention(q: Tensor, is_causal: bool) -> bool:
    """Whether ``DropoutAttention`` serves this attention: on CPU (where SDPA has no fused kernel with
    dropout), in float32/64 (under autocast SDPA keeps its own precision handling), not causal."""
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64) and not is_causal


class DropoutAttention(torch.autograd.Function):
    """``dropout(softmax(q k^T / sqrt(d) + mask)) @ v`` storing q, k, v, the log-sum-exp of each row and
    a boolean keep mask for backward, instead of the probability matrices.

    The probabilities are recomputed in backward (one extra ``q k^T``). Dropout keeps each probability
    with probability ``1 - p`` (``keep``, drawn by the caller) and scales by ``1 / (1 - p)``, as
    ``F.dropout`` does.

    Shapes: q (N, H, Lq, d), k / v (N, H, Lk, d), attn_mask bool (True = may attend) broadcastable to
    (N, H, Lq, Lk) or None, keep bool (N, H, Lq, Lk); returns (N, H, Lq, d).
    """

    @staticmethod
    def _scores(q: Tensor, k: Tensor, attn_mask: Tensor | None) -> Tensor:
        """Scaled, masked attention logits (N, H, Lq, Lk), a fresh tensor the caller may overwrite."""
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
        if attn_mask is not None:
            scores.masked_fill_(~attn_mask, float("-inf"))
        return scores

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, keep: Tensor, p: float) -> Tensor:
        scores = DropoutAttention._scores(q, k, attn_mask)
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        dropped = scores.sub_(lse).exp_().masked_fill_(~keep, 0.0).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q, k, v, attn_mask, keep, lse)
        ctx.p = p
        return torch.matmul(dropped, v)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, attn_mask, keep, lse = ctx.saved_tensors
        probs = DropoutAttention._scores(q, k, attn_mask).sub_(lse).exp_()
        inv_keep = 1.0 / (1.0 - ctx.p)
        grad_v = torch.matmul((probs * keep).mul_(inv_keep).transpose(-2, -1), grad_out)
        grad_probs = torch.matmul(grad_out, v.transpose(-2, -1)).masked_fill_(~keep, 0.0).mul_(inv_keep)
        # Softmax backward: dS = P * (dP - sum(dP * P, -1)), then the 1/sqrt(d) of the scores.
        row = (grad_probs * probs).sum(dim=-1, keepdim=True)
        grad_scores = grad_probs.sub_(row).mul_(probs).mul_(q.shape[-1] ** -0.5)
        grad_q = torch.matmul(grad_scores, k)
        grad_k = torch.matmul(grad_scores.transpose(-2, -1), q)
        return grad_q, grad_k, grad_v, None, None, None


def fold_batchnorm(
    weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm, transposed: bool = False
) -> tuple[Tensor, Tensor]:
    """A convolution's ``(weight, bias)`` with an eval-mode BatchNorm that follows it folded in.

    ``bn(conv(x; weight, bias)) == conv(x; w, b)`` with ``s = bn.weight / sqrt(running_var + eps)``,
    ``w = weight * s`` along the output channels and ``b = (bias - running_mean) * s + bn.bias``.

    Args:
        weight: (out, in, *k) for a convolution, (in, out, *k) for a transposed one.
        bias: (out,) or None.
        bn: the BatchNorm over the ``out`` channels (affine, with running statistics).
        transposed: whether ``weight`` is a transposed convolution's.

    Returns:
        the folded weight (same shape as ``weight``) and bias (out,), in ``weight``'s dtype.
    """
    if bn.running_var is None or bn.running_mean is None or bn.weight is None:
        raise ValueError("only an affine BatchNorm with running statistics can be folded")
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shape = [1, -1] if transposed else [-1, 1]
    folded_weight = weight * scale.reshape(shape + [1] * (weight.dim() - 2)).to(weight.dtype)
    shift = -bn.running_mean if bias is None else bias - bn.running_mean
    return folded_weight, (shift * scale + bn.bias).to(weight.dtype)


def conv_bn_relu_forward(x: Tensor, conv: Any, bn: Any, fold: bool) -> Tensor:
    """``relu(bn(conv(x)))`` for a Conv1d / Conv2d / ConvTranspose2d followed by a BatchNorm.

    In eval mode with ``fold`` the BatchNorm is folded into the convolution's weight and bias
    (``fold_batchnorm``): one pass over the output instead of three, and the ReLU runs in place. The
    parameters themselves are not changed, so state dicts, training and re-loading are unaffected; the
    folded tensors are rebuilt every call (a pass over the small conv weights, far cheaper than a pass
    over the activations).
    """
    if bn.training or not fold:
        # In place: BatchNorm's backward reads its input, not its output, so this saves an activation.
        return F.relu_(bn(conv(x)))
    transposed = isinstance(conv, nn.ConvTranspose2d)
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn, transposed=transposed)
    if transposed:
        y = F.conv_transpose2d(
            x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation
        )
    else:
        y = conv._conv_forward(x, weight, bias)
    return F.relu_(y)


class ConvBNReLU2d(nn.Sequential):
    """(Transposed) 2-D convolution, BatchNorm, ReLU as an ``nn.Sequential`` (children ``0, 1, 2``, the
    official checkpoints' names), whose eval forward folds the BatchNorm into the convolution.

    ``fast_path = False`` (or ``DETRIS.set_fast_paths(False)``) runs the three modules one after another.
    """

    fast_path: bool = True

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in, H, W) -> (N, out, H', W'), in x's memory format."""
        return conv_bn_relu_forward(x, self[0], self[1], self.fast_path)


def conv_bn_relu(
    in_dim: int, out_dim: int, kernel_size: int = 1, padding: int = 0, transposed: bool = False
) -> ConvBNReLU2d:
    """Bias-free (transposed) 2-D convolution, BatchNorm (eps 1e-5), ReLU: the neck's and head's unit.

    Children are indexed ``0, 1, 2`` as in the official checkpoints.
    """
    conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    return ConvBNReLU2d(
        conv_cls(in_dim, out_dim, kernel_size, 1, padding, bias=False),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(inplace=True),
    )
