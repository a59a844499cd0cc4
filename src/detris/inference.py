"""The one inference path: images and expressions in, probability maps and masks out.

`Predictor`, ``detris eval``, the training loop's validation and the demo all call these functions, so
there is one implementation of the official protocol around the forward pass:

1. `prepare_image`: letterbox to the model's square input (one affine map, bicubic, border = the
   CLIP mean colour) and normalise with the CLIP mean/std (`detris.data.transforms`);
2. `segment`: the forward pass in eval mode (optionally with the vision tower in bf16 / fp16,
   ``DETRIS.low_precision``; optionally one sample at a time), then per sample `detris.postprocess.logits_to_probability` (sigmoid, bicubic with
   ``align_corners=True`` to the input size, inverse letterbox to the original size) and
   `detris.postprocess.binarize` (``prob > threshold``);
3. the no-target decision (gRefCOCO): the no-target head's probability above
   `NO_TARGET_THRESHOLD` when the model has that head, else an empty mask. A no-target decision
   empties the mask a user gets; the mask as predicted stays available (`Segmentation.raw_masks`) because
   the GRES metrics score it.

Datasets (`detris.data.datasets`) run step 1 themselves, with the same functions, in their loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .data.transforms import Letterbox, normalize_image
from .modeling import DETRIS, DetrisOutput
from .postprocess import DEFAULT_THRESHOLD, binarize, logits_to_probability

__all__ = ["NO_TARGET_THRESHOLD", "Segmentation", "prepare_image", "forward_logits", "segment"]

#: A no-target probability above this is a "refers to nothing" decision (ReLA's argmax of two classes).
NO_TARGET_THRESHOLD = 0.5


def prepare_image(rgb: np.ndarray, input_size: int) -> tuple[Tensor, Letterbox]:
    """``(H, W, 3)`` uint8 RGB -> the normalised model input ``(3, S, S)`` and the `Letterbox` that
    maps predictions back to ``(H, W)``."""
    box = Letterbox.fit(rgb.shape[0], rgb.shape[1], input_size)
    return normalize_image(box.image(rgb)), box


def forward_logits(
    model: DETRIS, images: Tensor, tokens: Tensor, batch_invariant: bool = False
) -> DetrisOutput:
    """``images (N, 3, S, S)``, ``tokens (N, L)`` -> the model's `DetrisOutput`: logits ``(N, 1, h, w)``
    and the no-target logits ``(N,)`` (None for a model without a no-target head).

    ``batch_invariant``: a forward per sample, so that every op rounds as in the official batch-1 test
    loop (kernels chosen by shape round differently at other batch sizes).
    """
    weight_dtype = next(model.parameters()).dtype
    if images.dtype != weight_dtype:
        # A model cast to bf16 / fp16 (``model.to(torch.bfloat16)``) takes inputs of its own dtype.
        images = images.to(weight_dtype)
    if not batch_invariant:
        return model(images, tokens)
    parts = [model(images[i : i + 1], tokens[i : i + 1]) for i in range(images.shape[0])]
    no_target = [p.no_target_logits for p in parts if p.no_target_logits is not None]
    return DetrisOutput(torch.cat([p.logits for p in parts]), torch.cat(no_target) if no_target else None)


@dataclass
class Segmentation:
    """What `segment` returns for N inputs, each at its original size ``(H_i, W_i)``.

    Attributes:
        probabilities: N float32 probability maps.
        raw_masks: N bool masks ``probability > threshold``, as predicted.
        no_target_probabilities: N probabilities that the expression refers to nothing (the no-target
            head's), or N ``None`` for a model without that head.
        no_target: N decisions "refers to nothing": the head's probability > `NO_TARGET_THRESHOLD`, or,
            without a head, an empty raw mask.
    """

    probabilities: list[np.ndarray]
    raw_masks: list[np.ndarray]
    no_target_probabilities: list[float | None]
    no_target: list[bool]

    @property
    def masks(self) -> list[np.ndarray]:
        """The masks a user gets: the raw mask, or all zero where the decision is "no target"."""
        return [np.zeros_like(m) if nt else m for m, nt in zip(self.raw_masks, self.no_target)]

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        """``probabilities, masks = segment(...)`` unpacks as the two lists."""
        return iter((self.probabilities, self.masks))


@torch.inference_mode()
def segment(
    model: DETRIS,
    images: Tensor,
    tokens: Tensor,
    letterboxes: Sequence[Letterbox],
    threshold: float = DEFAULT_THRESHOLD,
    dtype: torch.dtype | None = None,
    batch_invariant: bool = False,
) -> Segmentation:
    """Probability maps, masks and no-target decisions at the original image sizes for prepared inputs.

    Args:
        model: a DETRIS model; run in eval mode, its train/eval mode restored afterwards.
        images: ``(N, 3, S, S)`` from `prepare_image` (or a dataset), on the model's device.
        tokens: ``(N, word_len)`` from ``detris.tokenize``, on the model's device.
        letterboxes: ``N`` `Letterbox` objects (from `prepare_image` or the dataset's items): the
            original sizes ``(H_i, W_i)`` and the maps back to them.
        threshold: probability threshold (``prob > threshold``; official 0.35).
        dtype: ``torch.bfloat16`` / ``torch.float16`` for the vision tower (``DETRIS.low_precision``);
            None = float32, the protocol.
        batch_invariant: see `forward_logits`.
    """
    was_training = model.training
    model.eval()
    try:
        with model.low_precision(dtype):
            logits, nt_logits = forward_logits(model, images, tokens, batch_invariant)
    finally:
        model.train(was_training)
    # Per sample inside: the same float ops whatever else the batch holds.
    probs = logits_to_probability(logits, letterboxes)
    raw = [binarize(p, threshold) for p in probs]
    if nt_logits is None:
        return Segmentation(probs, raw, [None] * len(raw), [not m.any() for m in raw])
    nt_probs = [float(p) for p in nt_logits.float().sigmoid().cpu()]
    return Segmentation(probs, raw, list(nt_probs), [p > NO_TARGET_THRESHOLD for p in nt_probs])
