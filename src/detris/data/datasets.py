"""Torch datasets for referring segmentation, following the official DETRIS data protocol.

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
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .grefer import GReferAnnotations
from .images import ImageLoadError, load_image
from .refer import ReferAnnotations, segmentation_to_mask
from .transforms import Letterbox, normalize_image

__all__ = [
    "GReferSegDataset",
    "JsonlSegDataset",
    "MixedReferDataset",
    "ReferSegDataset",
    "collate",
]

PathLike = str | os.PathLike
#: ``tokenizer(texts, context_length=L) -> LongTensor (N, L)``, like `detris.tokenizer.tokenize`.
Tokenizer = Callable[..., torch.Tensor]

_MODES = ("train", "val", "test")


@dataclass(frozen=True)
class _Entry:
    """One referred object: its image, its sentences and how to find its mask."""

    ref_id: int | str
    image_path: str
    sentences: tuple[tuple[int | str, str], ...]  # ((sent_id, text), ...)
    dataset: str
    expected_hw: tuple[int, int] | None = None  # size promised by the annotation, if any
    mask_spec: Any = None  # subclass-specific description of the mask
    no_target: bool = False  # the sentences refer to nothing in the image


def _default_tokenizer() -> Tokenizer:
    # Imported lazily so that building a dataset with a custom tokenizer never loads the vocabulary.
    from ..tokenizer import tokenize

    return tokenize


class _ExpressionDataset(Dataset):
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
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
        self.seed = int(seed)
        self.epoch = 0
        self.skip_bad = bool(skip_bad)
        self.empty_sentences = empty_sentences
        #: Image paths skipped because they could not be read (only with ``skip_bad=True``).
        self.skipped: list[str] = []
        #: ``(ref_id, sent_id)`` of empty sentences removed with ``empty_sentences='drop'``.
        self.dropped_sentences: list[tuple[Any, Any]] = []
        self._entries: list[_Entry] = []
        self._items: list[tuple[int, int | None]] = []

    # ----------------------------------------------------------------- index
    def _finalize(self, where: str) -> None:
        """Check sentences and build the item list. ``where`` names the source in error messages."""
        checked: list[_Entry] = []
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
    def _load_mask(self, entry: _Entry, height: int, width: int) -> np.ndarray:
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
            if not self.skip_bad:
                raise
            self.skipped.append(entry.image_path)
            return {"skipped": entry.image_path, "reason": str(exc)}

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


class ReferSegDataset(_ExpressionDataset):
    """Items of one split of a REFER dataset (RefCOCO / RefCOCO+ / RefCOCOg).

    Args:
        refer: a loaded `ReferAnnotations` (see `load_refer`).
        split: e.g. ``train``, ``val``, ``testA``, ``testB``, ``test``; unknown splits raise and list
            the available ones.
        mode: ``train`` | ``val`` | ``test`` (see the module docstring); defaults to ``train`` for the
            train split and ``test`` otherwise.
        image_root: folder of the COCO train2014 images (``image_root / file_name``).
        input_size: side ``S`` of the square model input (448 in the official configs).
        word_len: token length ``L`` (17; 22 for RefCOCOg umd in the official configs).
        tokenizer: ``tokenizer(texts, context_length=L) -> LongTensor (N, L)``; default `detris.tokenize`.
        seed: seed of the train-mode sentence draw.
        skip_bad: skip unreadable images instead of raising (see the module docstring).
        empty_sentences: ``error`` (default) raises on an empty/whitespace sentence naming its ref_id and
            sent_id; ``drop`` leaves it out and records it in ``dropped_sentences``.
    """

    def __init__(
        self,
        refer: ReferAnnotations | GReferAnnotations,
        split: str,
        mode: str | None = None,
        image_root: PathLike = ".",
        input_size: int = 448,
        word_len: int = 17,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        skip_bad: bool = False,
        empty_sentences: str = "error",
    ) -> None:
        mode = mode or ("train" if split == "train" else "test")
        super().__init__(mode, input_size, word_len, tokenizer, seed, skip_bad, empty_sentences)
        self.refer = refer
        self.name = refer.dataset
        self.split = split
        self.image_root = Path(image_root)
        for ref_id in refer.ref_ids(split):
            ref = refer.refs[ref_id]
            info = refer.image_info(ref_id)
            sentences = []
            for k, s in enumerate(ref["sentences"]):
                # 'sent' is the normalised text the official pipeline uses; 'raw' is the fallback.
                text = s.get("sent", s.get("raw", ""))
                sentences.append((s.get("sent_id", k), text))
            self._entries.append(
                _Entry(
                    ref_id=ref_id,
                    image_path=str(self.image_root / str(info["file_name"])),
                    sentences=tuple(sentences),
                    dataset=refer.dataset,
                    expected_hw=(int(info["height"]), int(info["width"])),
                    mask_spec=ref_id,
                    no_target=self._is_no_target(ref_id),
                )
            )
        self._finalize(f"{refer.refs_path} [{split}]")

    def _is_no_target(self, ref_id: Any) -> bool:
        return False  # every REFER expression refers to one object

    def _load_mask(self, entry: _Entry, height: int, width: int) -> np.ndarray:
        return self.refer.get_mask(entry.mask_spec)

    def __repr__(self) -> str:
        return (
            f"ReferSegDataset(dataset={self.refer.dataset!r}, split_by={self.refer.split_by!r}, "
            f"split={self.split!r}, mode={self.mode!r}, refs={self.num_refs}, items={len(self)}, "
            f"input_size={self.input_size}, word_len={self.word_len})"
        )


class GReferSegDataset(ReferSegDataset):
    """Items of one split of gRefCOCO: an expression refers to one object, several (the ground truth is
    the union of their masks) or none (an all-zero mask and ``no_target`` true).

    Args:
        grefer: a loaded `detris.data.grefer.GReferAnnotations`.
        split: ``train``, ``val``, ``testA`` or ``testB``; an unknown split raises and lists the others.
        Other arguments: as in `ReferSegDataset` (``mode`` defaults to ``train`` for the train split and
            ``test`` -- one item per sentence, ReLA's evaluation samples -- otherwise).
    """

    generalized = True
    refer: GReferAnnotations

    def __init__(self, grefer: GReferAnnotations, split: str, *args: Any, **kwargs: Any) -> None:
        if not isinstance(grefer, GReferAnnotations):
            raise TypeError(f"GReferSegDataset reads a GReferAnnotations, got {type(grefer).__name__}")
        super().__init__(grefer, split, *args, **kwargs)

    def _is_no_target(self, ref_id: Any) -> bool:
        return self.refer.is_no_target(ref_id)

    @property
    def grefer(self) -> GReferAnnotations:
        return self.refer

    @property
    def num_no_target(self) -> int:
        """Expressions (over all sentences) that refer to nothing."""
        return sum(len(e.sentences) for e in self._entries if e.no_target)

    def __repr__(self) -> str:
        return (
            f"GReferSegDataset(split={self.split!r}, mode={self.mode!r}, refs={self.num_refs}, items={len(self)}, "
            f"no_target_expressions={self.num_no_target}, input_size={self.input_size}, word_len={self.word_len})"
        )


class MixedReferDataset(Dataset):
    """The official "mixed" set of the DETRIS-L* config: RefCOCO (unc) + RefCOCO+ (unc) + RefCOCOg (umd),
    optionally with gRefCOCO (``open_dataset("mixed", ..., parts=(*MIXED_DEFAULT, "grefcoco"))``).

    ``split='train'`` concatenates the three train splits (42404 + 42278 + 42226 = 126908 refs upstream);
    ``split='val'`` concatenates the three ``val`` splits (3811 + 3805 + 2573 = 10189 refs), which is what
    the official ``tools/mix.py`` builds and the mixed config validates on (first sentence per ref).
    Parts are concatenated in that order. ``ref_id`` repeats across parts, so items carry ``dataset``.
    With a gRefCOCO part the set is ``generalized`` (scored with the GRES metrics).

    Args:
        sources: the parts, loaded `ReferAnnotations` / `GReferAnnotations` objects (by name from a data root:
            ``detris.data.catalog.open_dataset("mixed", ...)``).
        split: ``train`` or ``val`` (any split all parts have works).
        mode: as in `ReferSegDataset`; defaults to ``train`` for the train split and ``val`` otherwise.
        Other arguments: as in `ReferSegDataset`.
    """

    def __init__(
        self,
        sources: Sequence[ReferAnnotations | GReferAnnotations],
        split: str = "train",
        mode: str | None = None,
        image_root: PathLike = ".",
        input_size: int = 448,
        word_len: int = 17,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        skip_bad: bool = False,
        empty_sentences: str = "error",
    ) -> None:
        mode = mode or ("train" if split == "train" else "val")
        tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
        self.split = split
        self.mode = mode
        self.parts: list[_ExpressionDataset] = []
        for src in sources:
            kind = GReferSegDataset if isinstance(src, GReferAnnotations) else ReferSegDataset
            self.parts.append(kind(src, split, mode, image_root, input_size, word_len, tokenizer,  # type: ignore[arg-type]
                                   seed, skip_bad, empty_sentences))
        self.generalized = any(p.generalized for p in self.parts)
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return part, index - int(self._offsets[part])

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, local = self._locate(index)
        # The part number joins the seed so that equal local indices of different parts draw independently.
        return self.parts[part]._get(local, (part,))

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to every part (train-mode sentence draw)."""
        for p in self.parts:
            p.set_epoch(epoch)

    @property
    def skipped(self) -> list[str]:
        """Skipped image paths over all parts (this process only)."""
        return [path for p in self.parts for path in p.skipped]

    @property
    def num_refs(self) -> int:
        return sum(p.num_refs for p in self.parts)

    @property
    def num_expressions(self) -> int:
        return sum(p.num_expressions for p in self.parts)

    def __repr__(self) -> str:
        names = ", ".join(f"{p.name}:{len(p)}" for p in self.parts)
        return f"MixedReferDataset(split={self.split!r}, mode={self.mode!r}, parts=[{names}])"


# ---------------------------------------------------------------------------------------------- JSONL


def _read_mask_png(path: Path) -> np.ndarray:
    """A mask image -> uint8 0/1. Palette/1-bit: any non-zero index; otherwise values >= half range."""
    if not path.is_file():
        raise ImageLoadError(f"mask file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except Exception as exc:  # PIL's decoders raise many types on damaged files (see data/images.py)
        raise ImageLoadError(f"{path}: cannot read mask image ({type(exc).__name__}: {exc})") from exc
    if mode in ("P", "PA", "1"):
        plane = arr[..., 0] if arr.ndim == 3 else arr
        return (plane != 0).astype(np.uint8)
    if arr.ndim == 3:
        # Colour masks: a pixel is foreground when any colour channel is on (alpha ignored).
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.size and arr.max() <= 1:
        return (arr > 0).astype(np.uint8)  # a 0/1 mask
    if np.issubdtype(arr.dtype, np.floating):
        return (arr >= 0.5).astype(np.uint8)
    half = 32768 if (arr.dtype != np.uint8 and arr.max() > 255) else 128
    return (arr >= half).astype(np.uint8)


def _parse_mask_field(kind: str, value: Any, where: str, base: Path) -> tuple[str, Any]:
    """Check one JSONL mask field; returns ``(kind, value)`` with mask paths resolved against ``base``
    and ``mask`` / ``rle`` as lists (several = the union: a multi-target expression)."""
    if kind == "mask":
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not paths or not all(isinstance(v, str) and v for v in paths):
            raise ValueError(f"{where}: 'mask' must be a path string to a PNG mask, or a non-empty list of them")
        return "mask", [str(base / v) for v in paths]
    if kind == "polygon":
        ok = isinstance(value, list) and value and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            for p in value
        )
        if not ok:
            raise ValueError(
                f"{where}: 'polygon' must be a list of polygons [[x0, y0, x1, y1, x2, y2, ...], ...], "
                f"each with an even number (>= 6) of numbers"
            )
        return "polygon", value
    rles = [value] if isinstance(value, dict) else value
    if not isinstance(rles, list) or not rles:
        raise ValueError(f"{where}: 'rle' must be an RLE object or a non-empty list of them")
    for rle in rles:
        _check_rle(rle, where)
    if len({tuple(r["size"]) for r in rles}) > 1:
        raise ValueError(f"{where}: the RLEs of one line must have the same size, got {[r['size'] for r in rles]}")
    return "rle", rles


def _check_rle(value: Any, where: str) -> None:
    size: Any = value.get("size") if isinstance(value, dict) else None
    counts: Any = value.get("counts") if isinstance(value, dict) else None
    ok_size = isinstance(size, list) and len(size) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    )
    ok_counts = isinstance(counts, str) or (
        isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
    )
    if not (ok_size and ok_counts):
        raise ValueError(f"{where}: 'rle' must be {{\"size\": [h, w], \"counts\": [ints] or \"compressed string\"}}")
    if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
        raise ValueError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, expected h*w = {size[0] * size[1]}")


class JsonlSegDataset(_ExpressionDataset):
    """Referring-segmentation data in a simple JSON-lines file.

    One JSON object per line, one referred object per line::

        {"image": "images/cat.jpg", "sentence": "the cat on the left", "mask": "masks/cat_left.png"}
        {"image": "images/cat.jpg", "sentence": "right cat", "polygon": [[10, 20, 50, 20, 50, 80, 10, 80]]}
        {"image": "/data/dog.png", "sentences": ["brown dog", "the dog"], "rle": {"size": [480, 640], "counts": "..."}, "id": "dog-1"}
        {"image": "images/cat.jpg", "sentence": "both cats", "mask": ["masks/cat_left.png", "masks/cat_right.png"]}
        {"image": "images/cat.jpg", "sentence": "the purple dog", "no_target": true}

    Fields:

    * ``image`` (required): image path.
    * ``sentence`` (a string) or ``sentences`` (a non-empty list of strings): the expression(s). With
      several, train mode draws one per epoch, val mode uses the first, test mode yields each.
    * exactly one mask, at the image's size (after EXIF rotation):
      ``mask``: path of a PNG (0/1 or 0/255 grey, or a palette PNG where any non-zero index is the
      object; grey values >= 128 count as foreground); ``polygon``: a list of polygons, each
      ``[x0, y0, x1, y1, ...]`` in pixels (COCO convention, at least 3 points); ``rle``: a COCO RLE
      ``{"size": [h, w], "counts": [...] | "..."}`` (uncompressed or compressed). An expression that
      refers to several objects gives a list of ``mask`` paths, of ``rle`` objects, or several polygons:
      its ground truth is their union.
    * or ``"no_target": true`` and no mask: the expression refers to nothing in the image (its ground
      truth is empty). A file with such a line is ``generalized``: evaluated with the GRES metrics.
    * ``id`` (optional): reported as ``ref_id``; defaults to the line number. ``sent_id`` is the index
      of the sentence within the line.

    Relative paths are resolved against the JSONL file's folder; relative ``image`` paths against
    ``image_root`` instead when it is given. Blank lines and lines starting with ``#`` are ignored.
    The file is validated when the dataset is built; errors name the file and line number.

    Args:
        path: the ``.jsonl`` file.
        image_root: optional base folder for relative image paths.
        mode, input_size, word_len, tokenizer, seed, skip_bad, empty_sentences: as in `ReferSegDataset`
            (``mode`` defaults to ``train``).
    """

    def __init__(
        self,
        path: PathLike,
        image_root: PathLike | None = None,
        mode: str = "train",
        input_size: int = 448,
        word_len: int = 17,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        skip_bad: bool = False,
        empty_sentences: str = "error",
    ) -> None:
        super().__init__(mode, input_size, word_len, tokenizer, seed, skip_bad, empty_sentences)
        self.path = Path(path)
        self.name = self.path.stem
        self.generalized = False  # set by the first "no_target" line
        if not self.path.is_file():
            raise FileNotFoundError(f"JSONL annotation file not found: {self.path}")
        base = self.path.parent
        img_base = Path(image_root) if image_root is not None else base
        self.image_root = img_base
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            self._entries.append(self._parse_line(line, lineno, base, img_base))
        if not self._entries:
            raise ValueError(f"{self.path}: no records found (expected one JSON object per line)")
        self._finalize(str(self.path))

    def _parse_line(self, line: str, lineno: int, base: Path, img_base: Path) -> _Entry:
        where = f"{self.path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        known = {"image", "sentence", "sentences", "mask", "polygon", "rle", "id", "no_target"}
        unknown = sorted(set(rec) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
        image = rec.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where}: 'image' must be a non-empty path string")
        ref_id = rec.get("id", lineno)
        if not isinstance(ref_id, (int, str)) or isinstance(ref_id, bool):
            raise ValueError(f"{where}: 'id' must be a string or an integer")

        if ("sentence" in rec) == ("sentences" in rec):
            raise ValueError(f"{where}: give exactly one of 'sentence' (string) or 'sentences' (list of strings)")
        texts = [rec["sentence"]] if "sentence" in rec else rec["sentences"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{where}: 'sentence' must be a string / 'sentences' a non-empty list of strings")
        for k, t in enumerate(texts):
            if not t.strip() and self.empty_sentences == "error":
                raise ValueError(
                    f"{where}: empty sentence (ref_id={ref_id}, sent_id={k}); write the expression or "
                    f"pass empty_sentences='drop'"
                )

        no_target = rec.get("no_target", False)
        if not isinstance(no_target, bool):
            raise ValueError(f"{where}: 'no_target' must be true or false")
        kinds = [k for k in ("mask", "polygon", "rle") if k in rec]
        expected_hw: tuple[int, int] | None = None
        if no_target:
            if kinds:
                raise ValueError(f"{where}: a 'no_target' line refers to nothing, so it has no {kinds[0]!r}")
            spec: tuple[Any, ...] = (lineno, "none", None)
        else:
            if len(kinds) != 1:
                raise ValueError(
                    f"{where}: give exactly one of 'mask', 'polygon' or 'rle' (got {kinds or 'none'}), "
                    f"or \"no_target\": true for an expression that refers to nothing"
                )
            kind, value = kinds[0], rec[kinds[0]]
            spec = (lineno, *_parse_mask_field(kind, value, where, base))
            if kind == "rle":
                size = spec[2][0]["size"]
                expected_hw = (int(size[0]), int(size[1]))
        self.generalized = self.generalized or no_target
        return _Entry(
            ref_id=ref_id,
            image_path=str(img_base / image),  # an absolute `image` replaces the base
            sentences=tuple(enumerate(texts)),
            dataset=self.path.stem,
            expected_hw=expected_hw,
            mask_spec=spec,
            no_target=no_target,
        )

    def _load_mask(self, entry: _Entry, height: int, width: int) -> np.ndarray:
        lineno, kind, value = entry.mask_spec
        if kind == "none":
            return np.zeros((height, width), np.uint8)
        if kind == "mask":
            masks = [_read_mask_png(Path(v)) for v in value]
            for path, m in zip(value, masks):
                if m.shape != masks[0].shape:
                    raise ImageLoadError(f"{self.path}:{lineno}: mask {path} is {m.shape[0]}x{m.shape[1]}, "
                                         f"the line's first mask {masks[0].shape[0]}x{masks[0].shape[1]}")
            return np.bitwise_or.reduce(masks) if len(masks) > 1 else masks[0]
        try:
            if kind == "rle":
                out = np.zeros((height, width), np.uint8)
                for rle in value:
                    out |= segmentation_to_mask(rle, height, width, strict=True)
                return out
            return segmentation_to_mask(value, height, width, strict=True)
        except ValueError as exc:
            raise ValueError(f"{self.path}:{lineno}: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"JsonlSegDataset(path={str(self.path)!r}, mode={self.mode!r}, records={self.num_refs}, "
            f"items={len(self)}, input_size={self.input_size}, word_len={self.word_len})"
        )


# --------------------------------------------------------------------------------------------- collate

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
