"""`Predictor`: one image and one or more referring expressions in, one mask per expression out.

The pre- and post-processing are the evaluation protocol's own functions (no second implementation):
`detris.data.images.load_image` (any PIL mode, EXIF orientation applied), the letterbox of
`detris.data.transforms`, CLIP tokens of the model's ``word_len`` (over-long expressions are cut as the
official tokenizer does), then `detris.postprocess` (sigmoid -> bicubic to the input size -> inverse
letterbox to the original size -> ``prob > threshold``). So a mask from `Predictor.predict` is the mask
``detris eval --save-predictions`` writes for the same model, image and sentence.

Several expressions for one image are run as one batch; the image is pre-processed once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data.images import ImageInput, load_image
from .inference import prepare_image, segment
from .modeling import DETRIS
from .precision import INT8, dtype_name, quantize_vision_int8, resolve_dtype
from .processing import ProcessingConfig
from .tokenizer import shared_tokenizer, tokenize
from .utils import resolve_device

__all__ = ["NO_MATCH", "Prediction", "Predictor", "check_texts"]

#: What a no-target prediction is called in files and on the web page.
NO_MATCH = "no matching object"



@dataclass
class Prediction:
    """The result for one expression.

    Attributes:
        text: the expression as given.
        mask: bool ``(H, W)`` at the original image size (EXIF orientation applied); all zero when
            ``no_target``.
        probability: float32 ``(H, W)``, the probability map the mask thresholds (bicubic
            resampling may take it slightly outside ``[0, 1]``, as in the official evaluation).
        truncated: the expression had more tokens than the model reads (``word_len``) and was cut.
        no_target: the model found nothing the expression refers to (its no-target head said so, or,
            for a model without that head, no pixel passed the threshold).
        no_target_probability: the no-target head's probability; None for a model without that head.
    """

    text: str
    mask: np.ndarray
    probability: np.ndarray
    truncated: bool = False
    no_target: bool = False
    no_target_probability: float | None = None

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(self.mask.sum())


def check_texts(texts: str | Sequence[str], word_len: int) -> tuple[list[str], list[bool]]:
    """Validate referring expressions; returns them as a list and, per text, whether it will be cut.

    Raises:
        TypeError: ``texts`` is not a string or a sequence of strings.
        ValueError: no expression, or an expression that is empty / only whitespace / has no tokens.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("no expression given: pass at least one referring expression, e.g. 'the dog on the left'")
    tok = shared_tokenizer()
    truncated = []
    for k, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"expression {k} must be a string, got {type(text).__name__}: {text!r}")
        if not text.strip():
            raise ValueError(
                f"expression {k} is empty: describe the object to segment, e.g. 'the man in the red shirt'"
            )
        n = len(tok.encode(text))
        if n == 0:
            raise ValueError(f"expression {k} ({text!r}) has no tokens after text clean-up; use words")
        truncated.append(n + 2 > word_len)  # + start and end tokens
    return texts, truncated


class Predictor:
    """Referring segmentation of user images with a DETRIS model.

    Args:
        model: a `detris.DETRIS` (e.g. from `detris.from_pretrained`); it is put in eval mode, moved
            to ``device``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` or None (CUDA when available).
        dtype: compute precision: None / ``torch.float32`` (the exact protocol), ``torch.bfloat16``,
            ``torch.float16`` (GPU only), or ``"auto"``: bfloat16 where the hardware computes it natively
            (a CPU with avx512_bf16 or AMX, a recent GPU), float32 elsewhere. Names (``"bfloat16"``) work
            too. A low precision runs the vision tower in it, under autocast, and the rest in float32
            (`DETRIS.low_precision`); the weights stay as they are. ``"int8"`` (CPU) runs a
            copy of the model with int8 vision-tower Linear layers (`detris.precision.quantize_vision_int8`).
        max_batch: most expressions run in one forward pass (bounds memory for long lists).

    Example::

        predictor = Predictor(detris.from_pretrained("detris-tiny-synthetic"))
        for p in predictor.predict("photo.jpg", ["the red cup", "the man on the left"]):
            print(p.text, p.area, p.mask.shape)
    """

    def __init__(
        self,
        model: DETRIS,
        device: None | str | torch.device = None,
        dtype: None | str | torch.dtype = None,
        max_batch: int = 8,
    ) -> None:
        if not isinstance(model, DETRIS):
            raise TypeError(
                f"Predictor needs a DETRIS model, got {type(model).__name__}; "
                "load one with detris.from_pretrained or detris.load_official_checkpoint"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_batch = int(max_batch)
        # int8 lives in the weights; bf16 / fp16 in the vision tower's autocast.
        self._autocast_dtype = None if self.dtype == INT8 else self.dtype
        self.model = model.to(self.device).eval()
        if self.dtype == INT8:
            self.model = quantize_vision_int8(self.model).eval()
        # The preprocessing contract stored with the weights (the official one for older files).
        self.processing: ProcessingConfig = model.processing
        self.image_size = self.processing.input_size
        self.word_len = self.processing.word_len

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: None | str | torch.device = None,
        dtype: None | str | torch.dtype = None,
        **kwargs,
    ) -> Predictor:
        """A Predictor for a model directory written by ``save_pretrained`` (or a Hub id)."""
        from .pretrained import from_pretrained

        return cls(from_pretrained(name_or_path), device=device, dtype=dtype, **kwargs)

    def predict(
        self,
        image: ImageInput,
        texts: str | Sequence[str],
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Segment what each expression refers to.

        Args:
            image: a path, a PIL image (any mode; EXIF orientation applied) or an ``(H, W, 3)`` uint8
                array (``(H, W)`` grey and ``(H, W, 4)`` RGBA arrays are accepted too).
            texts: one expression or a list of them.
            threshold: probability threshold (``prob > threshold``); default the model's stored one
                (``processing.threshold``: 0.35, the official protocol's).

        Returns:
            one `Prediction` per expression, in order; masks are bool ``(H, W)`` at the image's size.

        Raises:
            ImageLoadError: the image cannot be read (names the file and the reason).
            ValueError: an empty expression, or a threshold outside (0, 1).
        """
        threshold = self.processing.threshold if threshold is None else threshold
        if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) < 1.0):
            raise ValueError(f"threshold must be a number strictly between 0 and 1, got {threshold!r}")
        texts, truncated = check_texts(texts, self.word_len)
        rgb = load_image(image)
        pixels, box = prepare_image(rgb, self.image_size)
        pixels = pixels.unsqueeze(0).to(self.device)
        tokens = tokenize(texts, context_length=self.word_len).to(self.device)
        out: list[Prediction] = []
        for start in range(0, len(texts), self.max_batch):
            chunk = tokens[start : start + self.max_batch]
            n = chunk.shape[0]
            seg = segment(self.model, pixels.expand(n, -1, -1, -1), chunk, [box] * n,
                          threshold=threshold, dtype=self._autocast_dtype)
            for k, mask in enumerate(seg.masks):
                out.append(Prediction(texts[start + k], mask, seg.probabilities[k], truncated[start + k],
                                      seg.no_target[k], seg.no_target_probabilities[k]))
        return out

    def __repr__(self) -> str:
        name = self.model.config.name
        return f"Predictor({name}, device={self.device}, dtype={dtype_name(self.dtype)}, input={self.image_size}px)"
