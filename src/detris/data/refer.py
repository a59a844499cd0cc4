"""Reading the REFER annotations (RefCOCO, RefCOCO+, RefCOCOg) as they are distributed.

Layout expected under ``DATA_ROOT`` (the unzipped ``refcoco.zip``, ``refcoco+.zip``, ``refcocog.zip``)::

    DATA_ROOT/
    ├── refcoco/    instances.json  refs(unc).p  refs(google).p
    ├── refcoco+/   instances.json  refs(unc).p
    └── refcocog/   instances.json  refs(umd).p  refs(google).p

Images are COCO train2014, found at ``IMAGE_ROOT/<file_name from instances.json>``.

The ``refs(*).p`` files are pickles, read without running their code (`detris.data.safe_pickle`); the
masks come from ``instances.json`` (`detris.data.coco`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .coco import as_id, read_coco_instances, segmentation_to_mask
from .safe_pickle import safe_load_pickle

__all__ = ["DATASETS", "REFER_LAYOUT", "ReferAnnotations", "load_refer"]

PathLike = str | os.PathLike


@dataclass(frozen=True)
class _DatasetSpec:
    folder: str
    split_by: str
    split_bys: tuple[str, ...]


# Public dataset names -> (folder under DATA_ROOT, default refs file, refs files that exist upstream).
# refcocog_u / refcocog_g are the names the official code uses for its processed folders.
DATASETS: dict[str, _DatasetSpec] = {
    "refcoco": _DatasetSpec("refcoco", "unc", ("unc", "google")),
    "refcoco_google": _DatasetSpec("refcoco", "google", ("unc", "google")),
    "refcoco+": _DatasetSpec("refcoco+", "unc", ("unc",)),
    "refcocog": _DatasetSpec("refcocog", "umd", ("umd", "google")),
    "refcocog_umd": _DatasetSpec("refcocog", "umd", ("umd", "google")),
    "refcocog_u": _DatasetSpec("refcocog", "umd", ("umd", "google")),
    "refcocog_google": _DatasetSpec("refcocog", "google", ("umd", "google")),
    "refcocog_g": _DatasetSpec("refcocog", "google", ("umd", "google")),
}

REFER_LAYOUT = """\
DATA_ROOT/
├── refcoco/    instances.json  refs(unc).p  refs(google).p
├── refcoco+/   instances.json  refs(unc).p
└── refcocog/   instances.json  refs(umd).p  refs(google).p
(`detris data download refcoco refcoco+ refcocog --root DATA_ROOT` fetches, checks and unpacks the REFER zips;
docs/data.md lists where each file comes from)"""


def _missing_file_error(data_root: Path, path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"REFER {what} not found: {path}\n"
        f"Expected layout (DATA_ROOT = {data_root}):\n{REFER_LAYOUT}"
    )


def _official_split_match(wanted: str, ref_split: str) -> bool:
    """The split rule of the official REFER API: testA/testB also take combined splits like testAB."""
    if wanted == ref_split:
        return True
    if wanted == "test":
        return ref_split.startswith("test")
    if len(wanted) == 5 and wanted.startswith("test") and ref_split.startswith("test"):
        return wanted[-1] in ref_split[4:]
    return False


_REQUIRED_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def _check_ref(ref: dict[str, Any], i: int, path: Path) -> int:
    """Check one ref's fields (ids, split, sentences with text); returns its ref_id."""
    missing = [k for k in _REQUIRED_REF_KEYS if k not in ref]
    if missing:
        raise ValueError(f"{path}: ref #{i} lacks the keys {missing}")
    try:
        ref_id = as_id(ref["ref_id"])
        for key in ("ann_id", "image_id"):
            as_id(ref[key])
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{path}: ref #{i} has a ref_id, ann_id or image_id that is not an integer") from None
    sentences = ref["sentences"]
    if not isinstance(ref["split"], str):
        raise ValueError(f"{path}: ref_id {ref_id} has a split that is not a string: {ref['split']!r}")
    if not isinstance(sentences, list) or not all(
        isinstance(s, dict) and isinstance(s.get("sent", s.get("raw", "")), str) for s in sentences
    ):
        raise ValueError(f"{path}: ref_id {ref_id}: 'sentences' must be a list of {{sent, raw, ...}} with text")
    return ref_id


class ReferAnnotations:
    """One REFER annotation set (a dataset + a split-by), indexed for lookup.

    Attributes:
        data_root: ``DATA_ROOT``.
        dataset: the public name (``refcoco``, ``refcoco+``, ``refcocog_umd``, ...).
        split_by: ``unc``, ``google`` or ``umd``.
        refs: ``{ref_id: ref dict}`` in file order; a ref has ``ref_id, ann_id, image_id, split,
            sentences[{sent, raw, tokens, sent_id}]`` and maybe ``category_id, file_name``.
        anns: ``{ann_id: COCO annotation}``; images: ``{image_id: COCO image}``;
        categories: ``{category_id: name}``.
    """

    def __init__(self, data_root: PathLike, dataset: str = "refcoco", split_by: str | None = None) -> None:
        if dataset not in DATASETS:
            raise ValueError(
                f"unknown REFER dataset {dataset!r}; choose one of {sorted(DATASETS)}"
            )
        spec = DATASETS[dataset]
        self.data_root = Path(data_root)
        self.dataset = dataset
        self.split_by = split_by or spec.split_by
        if self.split_by not in spec.split_bys:
            raise ValueError(
                f"{dataset!r} has no split-by {self.split_by!r}; the REFER release has {list(spec.split_bys)}"
            )
        folder = self.data_root / spec.folder
        refs_path = folder / f"refs({self.split_by}).p"
        inst_path = folder / "instances.json"
        if not self.data_root.is_dir():
            raise _missing_file_error(self.data_root, self.data_root, "data root")
        for path, what in ((refs_path, "refs file"), (inst_path, "instances file")):
            if not path.is_file():
                raise _missing_file_error(self.data_root, path, what)
        self.refs_path = refs_path
        self.instances_path = inst_path

        refs = safe_load_pickle(refs_path)
        if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
            raise ValueError(f"{refs_path}: expected a list of ref dicts, got {type(refs).__name__}")
        self.images: dict[int, dict[str, Any]]
        self.anns: dict[int, dict[str, Any]]
        self.categories: dict[int, str]
        self.images, self.anns, self.categories = read_coco_instances(inst_path)
        self.refs: dict[int, dict[str, Any]] = {}
        for i, ref in enumerate(refs):
            ref_id = _check_ref(ref, i, refs_path)
            if int(ref["ann_id"]) not in self.anns:
                raise ValueError(
                    f"{refs_path}: ref_id {ref_id} points to ann_id {ref['ann_id']}, which is not in {inst_path}"
                )
            if int(ref["image_id"]) not in self.images:
                raise ValueError(
                    f"{refs_path}: ref_id {ref_id} points to image_id {ref['image_id']}, which is not in {inst_path}"
                )
            self.refs[ref_id] = ref

    # ------------------------------------------------------------------ splits
    @property
    def splits(self) -> list[str]:
        """Split names that select at least one ref (raw names plus derived ``test``/``testA``...)."""
        raw = sorted({str(r["split"]) for r in self.refs.values()})
        derived = set(raw)
        for s in raw:
            if s.startswith("test") and s != "test":
                derived.add("test")
                derived.update("test" + letter for letter in s[4:])
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(derived, key=lambda s: (order.get(s, 3), s))

    def ref_ids(self, split: str | None = None) -> list[int]:
        """Ref ids of a split in file order (all refs if ``split`` is None).

        Raises:
            ValueError: the split selects nothing; the message lists the available splits.
        """
        if split is None:
            return list(self.refs)
        ids = [rid for rid, r in self.refs.items() if _official_split_match(split, str(r["split"]))]
        if not ids:
            raise ValueError(
                f"{self.dataset} ({self.split_by}) has no split {split!r}; available: {self.splits}"
            )
        return ids

    # ------------------------------------------------------------------ lookups
    def sentences(self, ref_id: int) -> list[dict[str, Any]]:
        """The ref's sentences ``[{sent, raw, tokens, sent_id}, ...]`` in stored order."""
        return list(self.refs[ref_id]["sentences"])

    def image_info(self, ref_id: int) -> dict[str, Any]:
        """The COCO image record (``id, file_name, height, width``) of a ref."""
        return self.images[int(self.refs[ref_id]["image_id"])]

    def image_path(self, ref_id: int, image_root: PathLike) -> Path:
        """``image_root / file_name`` of the ref's image (``file_name`` from instances.json)."""
        return Path(image_root) / str(self.image_info(ref_id)["file_name"])

    def annotation(self, ref_id: int) -> dict[str, Any]:
        """The COCO annotation the ref points to."""
        return self.anns[int(self.refs[ref_id]["ann_id"])]

    def get_mask(self, ref_id: int) -> np.ndarray:
        """The referred object's mask at the original image size: ``np.uint8 (H, W)`` with values 0/1."""
        ann = self.annotation(ref_id)
        image = self.image_info(ref_id)
        try:
            return segmentation_to_mask(
                ann["segmentation"], int(image["height"]), int(image["width"]), strict=False
            )
        except (KeyError, ValueError) as exc:
            if isinstance(exc, KeyError):
                exc = ValueError("no 'segmentation'")
            raise ValueError(
                f"{self.instances_path}: annotation {ann.get('id')} (ref_id {ref_id}): {exc}"
            ) from exc

    def __len__(self) -> int:
        return len(self.refs)

    def __repr__(self) -> str:
        return (
            f"ReferAnnotations(dataset={self.dataset!r}, split_by={self.split_by!r}, refs={len(self.refs)}, "
            f"images={len(self.images)}, data_root={str(self.data_root)!r})"
        )


def load_refer(data_root: PathLike, dataset: str, split_by: str | None = None) -> ReferAnnotations:
    """Load one REFER dataset.

    Args:
        data_root: the folder holding ``refcoco/``, ``refcoco+/`` and ``refcocog/`` (see `REFER_LAYOUT`).
        dataset: ``refcoco`` (unc), ``refcoco+`` (unc), ``refcocog_umd``, ``refcocog_google``,
            ``refcoco_google``; also ``refcocog`` (umd) and the official ``refcocog_u``/``refcocog_g``.
        split_by: override the dataset's default refs file (``unc``, ``google``, ``umd``).

    Raises:
        FileNotFoundError: a file is missing; the message names it and shows the expected layout.
        UnsafePickleError: the refs file is not a plain-data pickle.
    """
    return ReferAnnotations(data_root, dataset, split_by)
