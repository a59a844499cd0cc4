"""The optional no-target head: does the expression refer to nothing in the image? (gRefCOCO)

Not part of the official DETRIS, which always paints some object. The decision is a classifier beside
the mask head, trained with binary cross-entropy on "no target" (the positives of the GRES metrics):

* the decoder's output map (the visual features after attending to the words) pooled two ways: the
  mean over all positions and the mean weighted by the predicted mask (what the model would segment);
* the sentence vector, projected to the same width;
* two summaries of the mask logits -- their maximum and the mean probability -- taken without
  gradient, so that the classifier's loss never reshapes the masks.

A two-layer MLP maps their concatenation to one logit. docs/gres.md compares this with ReLA's design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NoTargetHead"]


class NoTargetHead(nn.Module):
    """Logit that an expression has no target.

    Args:
        vis_dim: channels of the decoder's output map.
        text_dim: size of the sentence vector.
        hidden_dim: width of the MLP's hidden layer.
    """

    #: Scalar summaries of the mask logits appended to the pooled features.
    NUM_MASK_STATS = 2

    def __init__(self, vis_dim: int, text_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.txt = nn.Linear(text_dim, vis_dim)
        self.mlp = nn.Sequential(
            nn.Linear(3 * vis_dim + self.NUM_MASK_STATS, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, features: Tensor, sentence: Tensor, mask_logits: Tensor) -> Tensor:
        """features (N, C, h, w), sentence (N, text_dim), mask_logits (N, 1, H, W) -> logits (N,)."""
        n = features.shape[0]
        logits = mask_logits.detach().float()
        prob = logits.sigmoid()
        weight = prob
        if weight.shape[-2:] != features.shape[-2:]:
            # The mask is at a finer grid than the decoder map: average it down (a fixed map).
            weight = F.adaptive_avg_pool2d(weight, (features.shape[-2], features.shape[-1]))
        feats = features.float().flatten(2)  # (N, C, h*w)
        w = weight.flatten(2)  # (N, 1, h*w)
        mean = feats.mean(2)
        masked = (feats * w).sum(2) / w.sum(2).clamp_min(1e-6)
        stats = torch.stack([logits.flatten(1).amax(1), prob.flatten(1).mean(1)], dim=1)
        dtype = self.txt.weight.dtype
        text = self.txt(sentence.to(dtype))
        x = torch.cat([mean.to(dtype), masked.to(dtype), text, stats.to(dtype)], dim=1)
        return self.mlp(x).reshape(n)
