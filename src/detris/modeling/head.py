"""The text-conditioned head: upsample the fused map x4, then a per-sample dynamic 3x3 convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import conv_bn_relu, full_precision


class _Recompute:
    """A saved tensor replaced by its (cheap) recipe: ``module(source)``."""

    def __init__(self, module: nn.Module, source: Tensor) -> None:
        self.module = module
        self.source = source

    def __call__(self) -> Tensor:
        return self.module(self.source)


def upsample_then(upsample: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(upsample(x))``, where in backward the upsampled map is recomputed from ``x`` rather than
    stored: the convolution in ``layer`` keeps its input for its weight gradient, and a x2 upsampled
    map is four times the size of ``x`` (64 MiB of the head's 176 MiB at 128x128, batch 2, DETRIS-B).
    Upsampling is a fixed, cheap, deterministic map, so the gradients are unchanged."""
    up = upsample(x)
    if not (torch.is_grad_enabled() and up.requires_grad):
        return layer(up)
    ptr, shape = up.untyped_storage().data_ptr(), up.shape

    def pack(t: Tensor) -> Tensor | _Recompute:
        if t.shape == shape and t.untyped_storage().data_ptr() == ptr:
            return _Recompute(upsample, x)
        return t

    def unpack(saved: Tensor | _Recompute) -> Tensor:
        return saved() if isinstance(saved, _Recompute) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return layer(up)


def dynamic_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Each sample convolved with its own single-output kernel, zero padding, same size out.

    ``out[i] = conv2d(x[i:i+1], weight[i:i+1], bias[i:i+1], padding=k // 2)``, computed as one batched
    matmul of the k*k kernel taps with the channels, ``z[i, t] = sum_c weight[i, c, t] * x[i, c]``,
    followed by the sum of the k*k shifted tap maps. Same FLOPs as the grouped convolution the
    official model uses, but several times faster on CPU (oneDNN has no fast kernel for a grouped
    convolution with one output channel per group; docs/benchmarks.md has the measurements), and the
    graph does not depend on the batch size (exports take any batch).

    Args:
        x: (N, C, H, W).
        weight: (N, C, k, k), k odd.
        bias: (N,).

    Returns:
        (N, 1, H, W).
    """
    n, c, h, w = x.shape
    k = weight.shape[-1]
    pad = k // 2
    taps = torch.bmm(weight.reshape(n, c, k * k).transpose(1, 2), x.reshape(n, c, h * w))
    taps = F.pad(taps.reshape(n, k * k, h, w), (pad, pad, pad, pad))
    out = bias.reshape(n, 1, 1) + taps[:, 0, :h, :w]
    for t in range(1, k * k):
        dy, dx = divmod(t, k)
        out = out + taps[:, t, dy : dy + h, dx : dx + w]
    return out.unsqueeze(1)


# Input channels from which the head's units train at least as fast in the standard layout in float32:
# oneDNN's channels-last weight gradient of wide 3x3 convolutions is the slower one on CPUs, while narrow
# maps gain more from channels-last upsampling; its bfloat16 convolutions are faster channels-last at
# every width (measured by benchmarks/head_layout.py; docs/benchmarks.md).
_WIDE_CHANNELS = 512


def training_layout(x: Tensor) -> torch.memory_format:
    """Memory layout in which to train the head's upsample + 3x3 convolution units on ``x`` (N, C, H, W):
    on CPU channels-last for narrow maps or under bfloat16 autocast (faster units there;
    ``benchmarks/head_layout.py``), else the standard layout; on GPUs the standard layout (not measured)."""
    if x.device.type != "cpu":
        return torch.contiguous_format
    bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return torch.channels_last if bf16 or x.shape[1] < _WIDE_CHANNELS else torch.contiguous_format


class Projector(nn.Module):
    """Upsample x4 (bilinear x2, conv, bilinear x2, conv, 1x1) and apply a kernel + bias predicted from
    the sentence vector, one per sample. With ``fast_path`` (default) the per-sample kernels are
    applied by ``dynamic_conv`` and training does not store the upsampled maps (``upsample_then``).

    Args:
        text_dim: size of the sentence vector.
        in_dim: channels after upsampling (official ``vis_dim // 2`` = 256); the input has ``2 * in_dim``.
        kernel_size: side of the dynamic kernel (3).
    """

    def __init__(self, text_dim: int, in_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.kernel_size = kernel_size
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(2 * in_dim, 2 * in_dim, 3, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(2 * in_dim, in_dim, 3, 1),
            nn.Conv2d(in_dim, in_dim, 1),
        )
        self.txt = nn.Linear(text_dim, in_dim * kernel_size * kernel_size + 1)

    fast_path: bool = True

    def forward(self, x: Tensor, sentence: Tensor) -> Tensor:
        """x (N, 2*in_dim, H, W), sentence (N, text_dim) -> logits (N, 1, 4H, 4W)."""
        if self.fast_path:
            # Memory layout of the two upsample + 3x3 convolution units (oneDNN on CPU): channels-last
            # runs their forward faster; in training it depends on the width (`training_layout`).
            x = x.contiguous(memory_format=training_layout(x) if torch.is_grad_enabled() and self.training
                             else torch.channels_last)
            up1, unit1, up2, unit2, pointwise = self.vis
            x = pointwise(upsample_then(up2, unit2, upsample_then(up1, unit1, x)))
        else:
            x = self.vis(x)
        n, c, h, w = x.shape
        # The logits are computed in the parameters' dtype even under autocast: this last layer is
        # cheap (one output channel) and its rounding would move the mask boundary.
        with full_precision(x.device.type):
            dtype = self.txt.weight.dtype
            params = self.txt(sentence.to(dtype))
            weight = params[:, :-1].reshape(n, c, self.kernel_size, self.kernel_size)
            bias = params[:, -1]
            if self.fast_path:
                return dynamic_conv(x.to(dtype), weight, bias)
            # As written in the official model: one grouped convolution over the batch.
            x = x.to(dtype).reshape(1, n * c, h, w)
            out = F.conv2d(x, weight, bias, padding=self.kernel_size // 2, groups=n)
        return out.reshape(n, 1, h, w)
