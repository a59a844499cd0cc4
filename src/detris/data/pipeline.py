"""The item pipeline every referring-segmentation dataset shares, and `collate`.

Modes (what an item holds, and how many items there are):

* ``train``: one item per ref (object); each epoch draws one of its sentences at random. The draw
  comes from a generator seeded by ``(seed, epoch, index)``, so it is reproducible, differs between
  epochs (call `set_epoch` like ``DistributedSampler.set_epoch``) and does not depend on worker count.
* ``val``: one item per ref with its *first* sentence (official validation during training).
* ``test``: one item per sentence of every ref (official evaluation).

Every item is a dict:

===============  ===========================================  ========================================
key              value                                        notes
===============  ===========================================  ========================================
``image``        float32 ``(3, S, S)``                        letterboxed (bicubic) + CLIP-normalised
``tokens``       int64 ``(word_len,)``                        CLIP ids, zero padded, truncated
``mask``         float32 ``(1, S, S)``                        letterboxed mask, bilinear, *not* re-binarised
``mask_orig``    uint8 ``(H, W)`` 0/1                         val/test only: the ground truth at original size
``letterbox``    `Letterbox`                                  the fit of the ``(H, W)`` original into the
                                                              input, and the map of a prediction back
``ref_id``       int or str                                   the object; ``sent_id``: the sentence
``sentence``     str                                          the stripped expression
``dataset``      str                                          e.g. ``refcoco``; ``image_path``: str
``no_target``    bool                                         the expression refers to nothing (gRefCOCO)
===============  ===========================================  ========================================

Generalized data (`GReferSegDataset`, JSONL with ``no_target`` lines): an expression may refer to
several objects (``mask`` is the union of theirs) or to none (``mask`` all zero, ``no_target`` true).
Such datasets have ``generalized = True``, which makes `detris.evaluate` score them with the GRES metrics.

The official training item is ``(image, tokens, mask)``; the official validation item carries the
path of the original-size mask PNG plus ``inverse`` and ``ori_size``, and the test item all sentences of
a ref. Here ``mask_orig`` replaces the PNG path (the same 0/1 mask, decoded from the annotation), and test
items are flattened to one per sentence.

Bad images: with ``skip_bad=False`` (default) an unreadable image raises `ImageLoadError` naming the file.
With ``skip_bad=True`` the item comes back as a small marker ``{"skipped": path, "reason": message}``,
the path is appended to ``dataset.skipped`` (in the process that loaded it: with ``num_workers > 0`` that
is a worker, so read the batch's ``"skipped"`` list instead), and `collate` drops it from the batch and
lists it in ``batch["skipped"]``. A batch whose items were all skipped collates to ``None``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import ImageLoadError, load_image
from .transforms import Letterbox, normalize_image

__all__ = ["Entry", "ExpressionDataset", "Tokenizer", "collate", "default_tokenizer", "loader_batches"]

PathLike = str | os.PathLike
#: ``tokenizer(texts, context_length=L) -> LongTensor (N, L)``, like `detris.tokenizer.tokenize`.
Tokenizer = Callable[..., torch.Tensor]

_MODES = ("train", "val", "test")


@dataclass(frozen=True)
class Entry:
    """One referred object: its image, its sentences and how to find its mask."""

    ref_id: int | str
    image_path: str
    sentences: tuple[tuple[int | str, str], ...]  # ((sent_id, text), ...)
    dataset: str
    expected_hw: tuple[int, int] | None = None  # size promised by the annotation, if any
    mask_spec: Any = None  # subclass-specific description of the mask
    no_target: bool = False  # the sentences refer to nothing in the image


def default_tokenizer() -> Tokenizer:
    # Imported lazily so that building a dataset with a custom tokenizer never loads the vocabulary.
    from ..tokenizer import tokenize

    return tokenize


class ExpressionDataset(Dataset):
    """Shared item pipeline; subclasses fill ``self._entries`` and implement `_load_mask`."""

    #: Whether expressions may refer to several objects or to none (scored with the GRES metrics).
    generalized: bool = False
    #: The dataset's name, as items carry it in ``dataset``.
    name: str = ""

    def __init__(
        self,
        mode: str,
        input_size: int,
        word_len: int,
        tokenizer: Tokenizer | None,
        seed: int,
        skip_bad: bool,
        empty_sentences: str,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if empty_sentences not in ("error", "drop"):
            raise ValueError(f"empty_sentences must be 'error' or 'drop', got {empty_sentences!r}")
        if int(input_size) <= 0 or int(word_len) < 2:
            raise ValueError(f"need input_size > 0 and word_len >= 2, got {input_size}, {word_len}")
        self.mode = mode
        self.input_size = int(input_size)
        self.word_len = int(word_len)
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.seed = int(seed)
        self.epoch = 0
        self.skip_bad = bool(skip_bad)
        self.empty_sentences = empty_sentences
        #: Image paths skipped because they could not be read (only with ``skip_bad=True``).
        self.skipped: list[str] = []
        #: ``(ref_id, sent_id)`` of empty sentences removed with ``empty_sentences='drop'``.
        self.dropped_sentences: list[tuple[Any, Any]] = []
        self._entries: list[Entry] = []
        self._items: list[tuple[int, int | None]] = []

    # ----------------------------------------------------------------- index
    def _finalize(self, where: str) -> None:
        """Check sentences and build the item list. ``where`` names the source in error messages."""
        checked: list[Entry] = []
        for entry in self._entries:
            kept = []
            for sent_id, text in entry.sentences:
                if not isinstance(text, str) or not text.strip():
                    if self.empty_sentences == "error":
                        raise ValueError(
                            f"{where}: empty sentence {text!r} (ref_id={entry.ref_id}, sent_id={sent_id}); "
                            f"fix the annotation or pass empty_sentences='drop' to leave it out"
                        )
                    self.dropped_sentences.append((entry.ref_id, sent_id))
                    continue
                # The official preprocessing strips every sentence before tokenising.
                kept.append((sent_id, text.strip()))
            if kept:
                checked.append(dataclasses.replace(entry, sentences=tuple(kept)))
        self._entries = checked
        if self.mode == "test":
            self._items = [(e, s) for e, entry in enumerate(self._entries) for s in range(len(entry.sentences))]
        elif self.mode == "val":
            self._items = [(e, 0) for e in range(len(self._entries))]
        else:
            self._items = [(e, None) for e in range(len(self._entries))]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def num_refs(self) -> int:
        """Number of referred objects."""
        return len(self._entries)

    def image_paths(self) -> list[str]:
        """Every image file the dataset reads, once each, in first-use order."""
        return list(dict.fromkeys(e.image_path for e in self._entries))

    @property
    def num_expressions(self) -> int:
        """Number of sentences over all objects (the length of the test mode)."""
        return sum(len(e.sentences) for e in self._entries)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose sentence draw `__getitem__` returns in train mode."""
        self.epoch = int(epoch)

    def sentence_index(self, index: int, _stream: tuple[int, ...] = ()) -> int:
        """Which sentence of item ``index`` is used now (train: the epoch's random draw)."""
        entry_idx, sent_idx = self._items[index]
        if sent_idx is not None:
            return sent_idx
        n = len(self._entries[entry_idx].sentences)
        # A fresh generator per (seed, epoch, item) makes the draw independent of worker layout and order.
        rng = np.random.default_rng([self.seed, self.epoch, *_stream, index])
        return int(rng.integers(n))

    # ----------------------------------------------------------------- items
    def _load_mask(self, entry: Entry, height: int, width: int) -> np.ndarray:
        """The object's mask as uint8 0/1 ``(height, width)``."""
        raise NotImplementedError

    def _tokens(self, text: str) -> torch.Tensor:
        ids = torch.as_tensor(self.tokenizer([text], context_length=self.word_len))
        if ids.numel() != self.word_len:
            raise ValueError(
                f"the tokenizer returned shape {tuple(ids.shape)} for one sentence, expected "
                f"(1, {self.word_len}); it must accept (texts, context_length=...)"
            )
        return ids.reshape(self.word_len).long()

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._get(index, ())

    def _get(self, index: int, _stream: tuple[int, ...]) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        entry_idx, _ = self._items[index]
        entry = self._entries[entry_idx]
        sent_id, sentence = entry.sentences[self.sentence_index(index, _stream)]
        try:
            image = load_image(entry.image_path)
            h, w = image.shape[:2]
            if entry.expected_hw is not None and (h, w) != tuple(entry.expected_hw):
                raise ImageLoadError(
                    f"{entry.image_path}: the image is {h}x{w} (HxW) but the annotation says "
                    f"{entry.expected_hw[0]}x{entry.expected_hw[1]}; wrong file, or an EXIF rotation "
                    f"the annotation did not see"
                )
            mask = self._load_mask(entry, h, w)
            if mask.shape != (h, w):
                raise ImageLoadError(
                    f"{entry.image_path}: the image is {h}x{w} (HxW) but its mask is "
                    f"{mask.shape[0]}x{mask.shape[1]}"
                )
        except ImageLoadError as exc:
            # Named with its ref: training meets a bad file mid-epoch, far from any listing of files.
            named = f"{exc} (ref {entry.ref_id}, sentence {sent_id})"
            if not self.skip_bad:
                raise type(exc)(named) from exc
            self.skipped.append(entry.image_path)
            return {"skipped": entry.image_path, "reason": named}

        box = Letterbox.fit(h, w, self.input_size)
        item: dict[str, Any] = {
            "image": normalize_image(box.image(image)),
            "tokens": self._tokens(sentence),
            "mask": torch.from_numpy(box.mask(mask)).unsqueeze(0),
            "letterbox": box,
            "ref_id": entry.ref_id,
            "sent_id": sent_id,
            "sentence": sentence,
            "dataset": entry.dataset,
            "image_path": entry.image_path,
            "no_target": entry.no_target,
        }
        if self.mode != "train":
            item["mask_orig"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))
        return item


_STACKED = ("image", "tokens", "mask")


def collate(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Batch items from these datasets (use as ``DataLoader(..., collate_fn=collate)``).

    Stacks ``image (N,3,S,S)``, ``tokens (N,L)`` and ``mask (N,1,S,S)``; keeps ``mask_orig`` (sizes
    differ), the ``letterbox`` objects and the metadata as lists. Skipped items
    (markers from ``skip_bad=True``, or ``None``) are dropped and their paths listed in
    ``batch["skipped"]``. Returns ``None`` when every item of the batch was skipped.
    """
    good: list[dict[str, Any]] = []
    skipped: list[str] = []
    for item in batch:
        if item is None:
            continue
        if "image" not in item:
            skipped.append(item.get("skipped", "<unknown>"))
            continue
        good.append(item)
    if not good:
        return None
    out: dict[str, Any] = {}
    for key in good[0]:
        values = [it[key] for it in good]
        out[key] = torch.stack(values) if key in _STACKED else values
    out["skipped"] = skipped
    return out


def loader_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate a DataLoader, turning a worker's wrapped `ImageLoadError` back into its one-line message.

    A DataLoader worker re-raises an item's exception in the main process with the worker's whole
    traceback as the message; for an unreadable image the last line (which names the file) is all the
    user needs.
    """
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ImageLoadError as exc:
            text = str(exc).strip()
            if text.startswith("Caught ") and "Original Traceback" in text:
                last = text.splitlines()[-1]
                # "detris.data.images.ImageLoadError: <message>" -> "<message>"
                raise type(exc)(last.split(": ", 1)[1] if ": " in last else last) from None
            raise
        yield batch
