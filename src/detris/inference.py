"""The one inference path: images and expressions in, probability maps and masks out.

`Predictor`, ``detris eval``, the training loop's validation and the demo all call these functions, so
there is one implementation of the official protocol around the forward pass:

1. `prepare_image`: letterbox to the model's square input (one affine map, bicubic, border = the
   CLIP mean colour) and normalise with the CLIP mean/std (`detris.data.transforms`);
2. `segment`: the forward pass in eval mode (optionally under autocast, optionally one sample at a
   time), then per sample `detris.postprocess.logits_to_probability` (sigmoid, bicubic with
   ``align_corners=True`` to the input size, inverse letterbox to the original size) and
   `detris.postprocess.binarize` (``prob > threshold``).

Datasets (`detris.data.datasets`) run step 1 themselves, with the same functions, in their loader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data.transforms import letterbox_image, normalize_image
from .postprocess import DEFAULT_THRESHOLD, binarize, logits_to_probability

__all__ = ["prepare_image", "forward_logits", "segment"]


def prepare_image(rgb: np.ndarray, input_size: int) -> tuple[Tensor, np.ndarray]:
    """``(H, W, 3)`` uint8 RGB -> the normalised model input ``(3, S, S)`` and the inverse letterbox
    matrix ``(2, 3)`` that maps predictions back to ``(H, W)``."""
    warped, _matrix, inverse = letterbox_image(rgb, input_size)
    return normalize_image(warped), inverse


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_logits(model: nn.Module, images: Tensor, tokens: Tensor, one_at_a_time: bool = False) -> Tensor:
    """``images (N, 3, S, S)``, ``tokens (N, L)`` -> logits ``(N, 1, h, w)``; checks the output shape.

    ``one_at_a_time``: a forward per sample, so that every op rounds as in the official batch-1 test
    loop (kernels chosen by shape round differently at other batch sizes).
    """
    weight_dtype = next(model.parameters()).dtype
    if images.dtype != weight_dtype:
        # A model cast to bf16 / fp16 (``model.to(torch.bfloat16)``) takes inputs of its own dtype.
        images = images.to(weight_dtype)
    if one_at_a_time:
        logits = torch.cat([model(images[i : i + 1], tokens[i : i + 1]) for i in range(images.shape[0])])
    else:
        logits = model(images, tokens)
    if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[:2] != (images.shape[0], 1):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model returned {shape}; expected logits of shape (N={images.shape[0]}, 1, h, w)")
    return logits


@torch.inference_mode()
def segment(
    model: nn.Module,
    images: Tensor,
    tokens: Tensor,
    inverses: Sequence[np.ndarray] | Tensor,
    orig_sizes: Sequence[Sequence[int]] | Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    dtype: torch.dtype | None = None,
    one_at_a_time: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Probability maps and masks at the original image sizes for prepared inputs.

    Args:
        model: a DETRIS model; run in eval mode, its train/eval mode restored afterwards.
        images: ``(N, 3, S, S)`` from `prepare_image` (or a dataset), on the model's device.
        tokens: ``(N, word_len)`` from ``detris.tokenize``, on the model's device.
        inverses: ``N`` inverse letterbox matrices ``(2, 3)``.
        orig_sizes: ``N`` original sizes ``(H_i, W_i)``.
        threshold: probability threshold (``prob > threshold``; official 0.35).
        dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``); None = float32, the protocol.
        one_at_a_time: see `forward_logits`.

    Returns:
        ``(probabilities, masks)``: ``N`` float32 ``(H_i, W_i)`` maps and ``N`` bool masks.
    """
    was_training = model.training
    model.eval()
    try:
        with _autocast(dtype, images.device):
            logits = forward_logits(model, images, tokens, one_at_a_time)
    finally:
        model.train(was_training)
    input_hw = tuple(images.shape[-2:])
    probs = []
    for i in range(logits.shape[0]):
        # Per sample: the same float ops whatever else the batch holds.
        probs += logits_to_probability(logits[i : i + 1], input_hw, inverses[i : i + 1], orig_sizes[i : i + 1])
    return probs, [binarize(p, threshold) for p in probs]
