"""`Predictor`: one image and one or more referring expressions in, one mask per expression out.

The pre- and post-processing are the evaluation protocol's own functions (no second implementation):
`detris.data.images.load_image` (any PIL mode, EXIF orientation applied), the letterbox of
`detris.data.transforms`, CLIP tokens of the model's ``word_len`` (over-long expressions are cut as the
official tokenizer does), then `detris.postprocess` (sigmoid -> bicubic to the input size -> inverse
letterbox to the original size -> ``prob > threshold``). So a mask from `Predictor.predict` is the mask
``detris eval --save-predictions`` writes for the same model, image and sentence.

Several expressions for one image are run as one batch; the image is pre-processed once.
`Predictor.predict_many` segments a stream of images, each with its own expressions: DataLoader workers
read, letterbox and tokenize while the model runs, and forwards are filled across images.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .data.images import ImageInput, load_image
from .data.transforms import Letterbox
from .inference import prepare_image, segment
from .modeling import DETRIS
from .precision import INT8, dtype_name, quantize_vision_int8, resolve_dtype
from .processing import ProcessingConfig
from .tokenizer import shared_tokenizer, tokenize
from .utils import resolve_device

__all__ = ["NO_MATCH", "ImagePredictions", "Prediction", "Predictor", "check_texts"]

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


@dataclass
class ImagePredictions:
    """What `Predictor.predict_many` yields for one input image.

    Attributes:
        index: the position of the image in the input stream (0-based).
        image: the image as given (a path stays a path).
        predictions: one `Prediction` per expression, in the order given; empty when ``error`` is set.
        error: why the image (or one of its expressions) could not be used; None when all went well.
        rgb: the decoded ``(H, W, 3)`` uint8 image when ``keep_images`` was asked for, else None.
    """

    index: int
    image: ImageInput
    predictions: list[Prediction]
    error: Exception | None = None
    rgb: np.ndarray | None = None


@dataclass
class _Prepared:
    """One image read, letterboxed and tokenized (in a DataLoader worker or inline)."""

    index: int
    image: ImageInput
    texts: list[str] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    pixels: torch.Tensor | None = None  # (3, S, S) float32
    tokens: torch.Tensor | None = None  # (n, word_len) long
    box: Letterbox | None = None
    rgb: np.ndarray | None = None
    error: Exception | None = None
    results: list[Prediction | None] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.error is not None or all(r is not None for r in self.results)


def _prepare(index: int, image: ImageInput, texts: str | Sequence[str], input_size: int, word_len: int,
             keep_rgb: bool) -> _Prepared:
    """Read, letterbox and tokenize one image; an unreadable image or a bad expression becomes ``error``."""
    item = _Prepared(index, image)
    try:
        item.texts, item.truncated = check_texts(texts, word_len)
        rgb = load_image(image)
    except (ValueError, TypeError) as exc:  # ImageLoadError is a ValueError
        item.error = exc
        return item
    item.pixels, item.box = prepare_image(rgb, input_size)
    item.tokens = tokenize(item.texts, context_length=word_len)
    item.rgb = rgb if keep_rgb else None
    item.results = [None] * len(item.texts)
    return item


class _PreparedStream(IterableDataset):
    """``(image, expressions)`` pairs -> `_Prepared` items; worker ``w`` of ``k`` takes items ``i % k == w``,
    so the DataLoader (which visits its workers in turn) hands them back in input order."""

    def __init__(self, items: Iterable[tuple[ImageInput, str | Sequence[str]]], input_size: int, word_len: int,
                 keep_rgb: bool) -> None:
        self.items, self.input_size, self.word_len, self.keep_rgb = items, input_size, word_len, keep_rgb

    def __iter__(self) -> Iterator[_Prepared]:
        info = get_worker_info()
        share, of = (info.id, info.num_workers) if info is not None else (0, 1)
        for index, pair in enumerate(self.items):
            if index % of != share:
                continue
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                bad = TypeError(f"item {index}: expected an (image, expressions) pair, got {type(pair).__name__}")
                yield _Prepared(index, "<not an (image, expressions) pair>", error=bad)
                continue
            yield _prepare(index, pair[0], pair[1], self.input_size, self.word_len, self.keep_rgb)


def _no_collate(item: Any) -> Any:
    """The loader hands each `_Prepared` item over as it is (no batching: forwards are filled later)."""
    return item


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
        batch_invariant: bool = True,
    ) -> list[Prediction]:
        """Segment what each expression refers to.

        Args:
            image: a path, a PIL image (any mode; EXIF orientation applied) or an ``(H, W, 3)`` uint8
                array (``(H, W)`` grey and ``(H, W, 4)`` RGBA arrays are accepted too).
            texts: one expression or a list of them.
            threshold: probability threshold (``prob > threshold``); default the model's stored one
                (``processing.threshold``: 0.35, the official protocol's).
            batch_invariant: one forward per expression, so that each mask is the one this image and that
                expression alone give (and the one of `predict_many` and ``detris eval``), bit for bit.
                False: the expressions share forwards of up to ``max_batch`` (faster on a GPU; a pixel at
                the threshold may then differ).

        Returns:
            one `Prediction` per expression, in order; masks are bool ``(H, W)`` at the image's size.

        Raises:
            ImageLoadError: the image cannot be read (names the file and the reason).
            ValueError: an empty expression, or a threshold outside (0, 1).
        """
        threshold = self._checked_threshold(threshold)
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
                          threshold=threshold, dtype=self._autocast_dtype, batch_invariant=batch_invariant)
            for k, mask in enumerate(seg.masks):
                out.append(Prediction(texts[start + k], mask, seg.probabilities[k], truncated[start + k],
                                      seg.no_target[k], seg.no_target_probabilities[k]))
        return out

    def predict_many(
        self,
        items: Iterable[tuple[ImageInput, str | Sequence[str]]],
        threshold: float | None = None,
        batch_size: int | None = None,
        workers: int = 0,
        batch_invariant: bool = True,
        skip_errors: bool = False,
        keep_images: bool = False,
    ) -> Iterator[ImagePredictions]:
        """Segment a stream of images, each with its own expressions; results come as they are ready.

        Workers (a ``torch.utils.data.DataLoader``) read, letterbox and tokenize the next images while
        the model runs; the expressions of consecutive images fill forwards of ``batch_size``.

        Args:
            items: ``(image, expressions)`` pairs: an image as `predict` takes it (a path, a PIL image, an
                array) and one expression or a list of them. With ``workers > 0`` each worker process
                iterates its own copy of ``items`` (a list, or a generator under the ``fork`` start method).
            threshold: as in `predict`.
            batch_size: most expressions per forward (default ``max_batch``).
            workers: loader worker processes (0: read in this process, between forwards).
            batch_invariant: run the model on one expression at a time inside each batch, so that every
                mask equals the one `predict` gives for that image and that expression alone (and the one
                ``detris eval`` gives), bit for bit. False: one forward per batch (faster, most of all on
                a GPU); a pixel whose probability lies at the threshold may then differ.
            skip_errors: an unreadable image (or an empty expression) is yielded with ``error`` set
                instead of raising.
            keep_images: also yield the decoded ``(H, W, 3)`` image (for overlays).

        Yields:
            one `ImagePredictions` per item, in input order; masks are bool ``(H_i, W_i)``.

        Raises:
            ImageLoadError: an unreadable image (unless ``skip_errors``).
            ValueError: an empty expression (unless ``skip_errors``), a bad threshold or batch size.
        """
        threshold = self._checked_threshold(threshold)
        batch_size = self.max_batch if batch_size is None else int(batch_size)
        if batch_size < 1 or int(workers) < 0:
            raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
        stream = _PreparedStream(items, self.image_size, self.word_len, keep_images)
        # (No cv2.setNumThreads in the workers: in a forked child it waits forever for the parent's pool.)
        loader = DataLoader(stream, batch_size=None, num_workers=int(workers), collate_fn=_no_collate,
                            pin_memory=self.device.type == "cuda")
        waiting: deque[_Prepared] = deque()  # in input order; the head is yielded once complete
        slots: list[tuple[_Prepared, int]] = []  # expressions waiting for a forward
        for item in loader:
            if item.error is not None and not skip_errors:
                raise item.error
            waiting.append(item)
            slots.extend((item, k) for k in range(len(item.results)))
            while len(slots) >= batch_size:
                self._forward_slots(slots[:batch_size], threshold, batch_invariant)
                del slots[:batch_size]
            yield from _pop_complete(waiting)
        if slots:
            self._forward_slots(slots, threshold, batch_invariant)
        yield from _pop_complete(waiting)

    def _checked_threshold(self, threshold: float | None) -> float:
        threshold = self.processing.threshold if threshold is None else threshold
        if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) < 1.0):
            raise ValueError(f"threshold must be a number strictly between 0 and 1, got {threshold!r}")
        return float(threshold)

    def _forward_slots(self, slots: Sequence[tuple[_Prepared, int]], threshold: float, batch_invariant: bool) -> None:
        """One forward over ``(image, expression index)`` slots; stores each `Prediction` in its image."""
        images = torch.stack([item.pixels for item, _ in slots]).to(self.device)  # type: ignore[misc]
        tokens = torch.stack([item.tokens[k] for item, k in slots]).to(self.device)  # type: ignore[index]
        boxes = [item.box for item, _ in slots]
        seg = segment(self.model, images, tokens, boxes, threshold=threshold,  # type: ignore[arg-type]
                      dtype=self._autocast_dtype, batch_invariant=batch_invariant)
        for j, ((item, k), mask) in enumerate(zip(slots, seg.masks)):
            item.results[k] = Prediction(item.texts[k], mask, seg.probabilities[j], item.truncated[k],
                                         seg.no_target[j], seg.no_target_probabilities[j])

    def __repr__(self) -> str:
        name = self.model.config.name
        return f"Predictor({name}, device={self.device}, dtype={dtype_name(self.dtype)}, input={self.image_size}px)"


def _pop_complete(waiting: deque[_Prepared]) -> Iterator[ImagePredictions]:
    """Yield the finished images at the head of ``waiting`` (input order kept)."""
    while waiting and waiting[0].complete:
        item = waiting.popleft()
        preds = [] if item.error is not None else [r for r in item.results if r is not None]
        yield ImagePredictions(item.index, item.image, preds, item.error, item.rgb)
