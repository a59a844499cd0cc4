"""Reading the REFER annotations (RefCOCO, RefCOCO+, RefCOCOg) as they are distributed.

Layout expected under ``DATA_ROOT`` (the unzipped ``refcoco.zip``, ``refcoco+.zip``, ``refcocog.zip``)::

    DATA_ROOT/
    ├── refcoco/    instances.json  refs(unc).p  refs(google).p
    ├── refcoco+/   instances.json  refs(unc).p
    └── refcocog/   instances.json  refs(umd).p  refs(google).p

Images are COCO train2014, found at ``IMAGE_ROOT/<file_name from instances.json>``.

The ``refs(*).p`` files are pickles. Unpickling runs code chosen by whoever wrote the file, so they are
read with `SafeUnpickler`, which admits only the plain containers and scalars that REFER uses and
refuses every class or function reference. The official files were written by Python 2 (protocol 2);
Python 2 byte strings are decoded as UTF-8 (falling back to Latin-1), so keys and values come back as
``str`` whichever way they were stored.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

__all__ = [
    "DATASETS",
    "REFER_LAYOUT",
    "ReferDataset",
    "SafeUnpickler",
    "UnsafePickleError",
    "load_refer",
    "safe_load_pickle",
    "segmentation_to_mask",
]

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
(unzip refcoco.zip, refcoco+.zip and refcocog.zip from https://github.com/lichengunc/refer into DATA_ROOT)"""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a class or function; REFER files never do, so the file is refused unread."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for data-only pickles: dicts, lists, tuples, str/bytes, int, float, bool, None.

    Every global lookup (``find_class``) and persistent id is refused, which is what stops a
    crafted pickle from calling ``os.system`` & co. through ``__reduce__``: building any object
    other than the built-in containers needs a global, and none is handed out.
    """

    def find_class(self, module: str, name: str) -> Any:  # the pickle API
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: this pickle references a class or function, but a "
            f"REFER refs file holds only lists, dicts, strings and numbers. The file is not a genuine "
            f"REFER annotation file (or is damaged); re-download it from the REFER release."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load a persistent id: not a plain-data pickle")


def _decode_py2_text(value: Any) -> Any:
    """Recursively turn Python 2 byte strings (read with encoding='bytes') into str."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_decode_py2_text(k): _decode_py2_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_py2_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode_py2_text(v) for v in value)
    return value


def safe_load_pickle(path: PathLike) -> Any:
    """Load a data-only pickle with `SafeUnpickler` and return its content with text as ``str``.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: the pickle references a class/function (e.g. a ``__reduce__`` payload).
        ValueError: the file is not a readable pickle.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        # encoding='bytes' keeps Python 2 str as bytes instead of guessing Latin-1, so UTF-8 text in
        # the file survives; _decode_py2_text then makes everything str.
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except Exception as exc:  # any decoding failure means "not a usable pickle"
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    return _decode_py2_text(obj)


def segmentation_to_mask(segmentation: Any, height: int, width: int, strict: bool = True) -> np.ndarray:
    """Rasterise a COCO segmentation at the image's original resolution.

    Args:
        segmentation: polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixel coordinates), an uncompressed RLE
            ``{"size": [h, w], "counts": [int, ...]}`` or a compressed RLE ``{"size": [h, w],
            "counts": str | bytes}``.
        height, width: the image size; RLE sizes must agree with it.
        strict: raise on a polygon with fewer than 3 points or an odd number of coordinates. With
            ``strict=False`` such degenerate polygons (zero area; a few exist in COCO) are dropped.

    Returns:
        ``np.uint8`` array ``(height, width)`` with values 0/1 (the union of all parts).
    """
    with warnings.catch_warnings():
        # pycocotools built against NumPy 1 warns about the `copy` keyword on every decode under NumPy 2;
        # the warning is about pycocotools' internals and says nothing about the data.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pycocotools")
        return _segmentation_to_mask(segmentation, height, width, strict)


def _segmentation_to_mask(segmentation: Any, height: int, width: int, strict: bool) -> np.ndarray:
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError("an RLE segmentation needs 'size' and 'counts'")
        size = [int(s) for s in segmentation["size"]]
        if size != [int(height), int(width)]:
            raise ValueError(f"RLE size {size} does not match the image size {[int(height), int(width)]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            # Uncompressed RLE: pycocotools compresses it for us.
            rle = coco_mask.frPyObjects(segmentation, int(height), int(width))
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        decoded = coco_mask.decode(rle)
    elif isinstance(segmentation, (list, tuple)):
        polygons = []
        for poly in segmentation:
            if not isinstance(poly, (list, tuple)):
                raise ValueError("polygons must be given as a list of coordinate lists [[x0, y0, x1, y1, ...], ...]")
            if len(poly) < 6 or len(poly) % 2:
                if strict:
                    raise ValueError(
                        f"a polygon needs an even number (>= 6) of coordinates x0, y0, x1, y1, ...; got {len(poly)}"
                    )
                continue
            polygons.append([float(v) for v in poly])
        if not polygons:
            if strict or not segmentation:
                raise ValueError("the polygon segmentation is empty")
            # Only degenerate polygons: the object has no area.
            return np.zeros((int(height), int(width)), np.uint8)
        # Every polygon here has >= 6 coordinates, so frPyObjects takes its polygon path (a first entry of
        # exactly 4 numbers would make it read the list as boxes).
        rles = coco_mask.frPyObjects(polygons, int(height), int(width))
        decoded = coco_mask.decode(rles)
    else:
        raise ValueError(f"unsupported segmentation type {type(segmentation).__name__}")
    if decoded.ndim == 3:
        # Several polygons decode to one plane each; the object is their union. (The official code sums
        # them into uint8, so overlaps would read 2; any non-zero pixel is foreground there too.)
        decoded = decoded.any(axis=2)
    return np.ascontiguousarray(decoded.astype(np.uint8))


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


class ReferDataset:
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
        try:
            with open(inst_path, encoding="utf-8") as f:
                instances = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{inst_path}: not valid JSON ({exc})") from exc
        for key in ("images", "annotations"):
            if key not in instances:
                raise ValueError(f"{inst_path}: missing the COCO key {key!r}")

        self.images: dict[int, dict[str, Any]] = {int(im["id"]): im for im in instances["images"]}
        self.anns: dict[int, dict[str, Any]] = {int(a["id"]): a for a in instances["annotations"]}
        self.categories: dict[int, str] = {
            int(c["id"]): str(c.get("name", c["id"])) for c in instances.get("categories", [])
        }
        self.refs: dict[int, dict[str, Any]] = {}
        for i, ref in enumerate(refs):
            missing = [k for k in _REQUIRED_REF_KEYS if k not in ref]
            if missing:
                raise ValueError(f"{refs_path}: ref #{i} lacks the keys {missing}")
            ref_id = int(ref["ref_id"])
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
        except ValueError as exc:
            raise ValueError(
                f"{self.instances_path}: annotation {ann.get('id')} (ref_id {ref_id}): {exc}"
            ) from exc

    def __len__(self) -> int:
        return len(self.refs)

    def __repr__(self) -> str:
        return (
            f"ReferDataset(dataset={self.dataset!r}, split_by={self.split_by!r}, refs={len(self.refs)}, "
            f"images={len(self.images)}, data_root={str(self.data_root)!r})"
        )


def load_refer(data_root: PathLike, dataset: str, split_by: str | None = None) -> ReferDataset:
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
    return ReferDataset(data_root, dataset, split_by)
