"""The text-conditioned head: upsample the fused map x4, then a per-sample dynamic 3x3 convolution."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import conv_bn_relu


class Projector(nn.Module):
    """Upsample x4 (bilinear x2, conv, bilinear x2, conv, 1x1) and apply a kernel + bias predicted from
    the sentence vector, one per sample.

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

    def forward(self, x: Tensor, sentence: Tensor) -> Tensor:
        """x (N, 2*in_dim, H, W), sentence (N, text_dim) -> logits (N, 1, 4H, 4W)."""
        x = self.vis(x)
        n, c, h, w = x.shape
        params = self.txt(sentence)
        weight = params[:, :-1].reshape(n, c, self.kernel_size, self.kernel_size)
        bias = params[:, -1]
        # One grouped convolution applies every sample's own kernel in a single call.
        out = F.conv2d(x.reshape(1, n * c, h, w), weight, bias, padding=self.kernel_size // 2, groups=n)
        return out.reshape(n, 1, h, w)
