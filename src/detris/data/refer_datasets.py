"""Torch datasets over REFER and gRefCOCO annotations, and mixed sets of them (the official L* set)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .grefer import GReferAnnotations
from .pipeline import Entry, ExpressionDataset, PathLike, Tokenizer, default_tokenizer
from .refer import ReferAnnotations

__all__ = ["GReferSegDataset", "MixedReferDataset", "ReferSegDataset"]

class ReferSegDataset(ExpressionDataset):
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
                Entry(
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

    def _load_mask(self, entry: Entry, height: int, width: int) -> np.ndarray:
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
        tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.split = split
        self.mode = mode
        self.parts: list[ExpressionDataset] = []
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
