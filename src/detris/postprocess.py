"""Official DETRIS test-time post-processing: logits -> probability map -> binary mask in the original image.

The sequence reproduced here is the one of the official ``engine/engine.py`` (``inference`` and
``validate``), in this order:

1. ``sigmoid`` on the raw logits ``(N, 1, h, w)`` (the official evaluation runs in float32, without
   autocast, so we compute in float32 whatever dtype the model produced);
2. bicubic interpolation with ``align_corners=True`` of the *probabilities* (not the logits) to the
   model input size -- skipped when the map already has that size;
3. per sample, ``cv2.warpAffine`` of the float32 map with the inverse letterbox matrix to the original
   ``(h, w)``, bicubic, border value 0 (values may overshoot [0, 1]; they are not clipped);
4. threshold with a strict comparison: ``prob > 0.35``.

(The training-time monitor of the official code, ``trainMetricGPU``, uses ``>= 0.35`` on the
128x128 map instead; see :func:`detris.metrics.train_batch_metrics`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import Letterbox

__all__ = ["DEFAULT_THRESHOLD", "logits_to_probability", "upsample_probability", "binarize"]

#: Probability threshold of the official evaluation (compared with ``>``).
DEFAULT_THRESHOLD: float = 0.35

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def upsample_probability(prob: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Probabilities ``(N, 1, h, w)`` -> ``(N, 1, *size)`` as the official test resizes them (bicubic,
    ``align_corners=True``); unchanged when already at ``size``. Differentiable (the Dice loss
    scores the prediction through it)."""
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    return F.interpolate(prob, size=tuple(size), mode="bicubic", align_corners=True)


@torch.no_grad()
def logits_to_probability(logits: torch.Tensor, letterboxes: Sequence[Letterbox]) -> list[np.ndarray]:
    """Turn model logits into probability maps over the original images.

    Args:
        logits: ``(N, 1, h, w)`` raw model output (any float dtype, any device).
        letterboxes: ``N`` `Letterbox` objects, one per sample: how its image was fitted to the model
            input (``input_size``) and how to map a prediction back (``restore``).

    Returns:
        list of ``N`` float32 arrays, the i-th of shape ``letterboxes[i].orig_size``; threshold with
        :func:`binarize`.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(
            f"logits must have shape (N, 1, h, w), got {tuple(logits.shape)}; "
            "add the channel axis with logits.unsqueeze(1) if it is missing"
        )
    if len(letterboxes) != logits.shape[0]:
        raise ValueError(f"got {logits.shape[0]} logit maps but {len(letterboxes)} letterboxes; pass one per sample")
    out = []
    for i, box in enumerate(letterboxes):
        # Sigmoid first, then interpolate the probabilities: the order changes the result because
        # bicubic interpolation overshoots and sigmoid is non-linear.
        prob = upsample_probability(torch.sigmoid(logits[i : i + 1].detach().to(torch.float32)), box.input_size)
        out.append(box.restore(prob[0, 0].cpu().numpy()))
    return out


def binarize(prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Binary mask from a probability map: ``prob > threshold`` (strict, as the official evaluation).

    Args:
        prob: probability map of any shape (numpy array or tensor).
        threshold: probability threshold, 0.35 in the official protocol.

    Returns:
        bool numpy array of the same shape.
    """
    return np.asarray(_as_numpy(prob) > threshold, dtype=bool)
