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
import math
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

__all__ = [
    "DATASETS",
    "REFER_LAYOUT",
    "ReferAnnotations",
    "SafeUnpickler",
    "UnsafePickleError",
    "load_refer",
    "read_coco_instances",
    "safe_load_pickle",
    "segmentation_to_mask",
]

PathLike = str | os.PathLike

#: Largest mask (height x width) rasterised from an annotation: twice PIL's decompression-bomb
#: threshold, the same bound `detris.data.images.load_image` puts on images.
MAX_MASK_PIXELS = 2 * 89_478_485


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


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a class or function; REFER files never do, so the file is refused unread.

    Also a ``ValueError``, like every other "this file is not what it should be" error of detris, so that
    one ``except ValueError`` (the command line's) reports it as a user error.
    """


class SafeUnpickler(pickle._Unpickler):
    """An unpickler for data-only pickles: dicts, lists, tuples, str/bytes, int, float, bool, None.

    Every global lookup (``find_class``) and persistent id is refused, which is what stops a
    crafted pickle from calling ``os.system`` & co. through ``__reduce__``: building any object
    other than the built-in containers needs a global, and none is handed out.

    It is the pure-Python unpickler (about twice as slow as the C one: ~3 s for a 20 MB refs file)
    because the C unpickler sizes its memo table by the largest index a file names: a 1 kB file
    saying ``LONG_BINPUT 846096737`` makes it allocate and clear ~13 GB. This one keeps the memo in a
    dict, so memory stays proportional to the file.
    """

    def find_class(self, module: str, name: str) -> Any:  # the pickle API
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: this pickle references a class or function, but a "
            f"REFER refs file holds only lists, dicts, strings and numbers. The file is not a genuine "
            f"REFER annotation file (or is damaged); re-download it from the REFER release."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load a persistent id: not a plain-data pickle")


def _decode_py2_text(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """Recursively turn Python 2 byte strings (read with encoding='bytes') into str.

    Containers the pickle shares (its memo lets one list appear in a thousand places) are converted
    once and shared again: converting each appearance would turn a few kB of nested references into
    an exponential number of copies.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if not isinstance(value, (dict, list, tuple)):
        return value
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, tuple):
        out: Any = tuple(_decode_py2_text(v, memo) for v in value)
        memo[id(value)] = out
    elif isinstance(value, list):
        out = memo[id(value)] = []  # registered first: a list may contain itself
        out.extend(_decode_py2_text(v, memo) for v in value)
    else:
        out = memo[id(value)] = {}
        for k, v in value.items():
            out[_decode_py2_text(k, memo)] = _decode_py2_text(v, memo)
    return out


def safe_load_pickle(path: PathLike) -> Any:
    """Load a data-only pickle with `SafeUnpickler` and return its content with text as ``str``.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: the pickle references a class/function (e.g. a ``__reduce__`` payload).
        ValueError: the file is not a readable pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    data = path.read_bytes()
    try:
        # encoding='bytes' keeps Python 2 str as bytes instead of guessing Latin-1, so UTF-8 text in
        # the file survives; _decode_py2_text then makes everything str.
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except Exception as exc:  # any decoding failure means "not a usable pickle"
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    try:
        return _decode_py2_text(obj)
    except RecursionError:
        # A pickle can build a list nested thousands deep (or one that contains itself).
        raise ValueError(f"{path}: the pickle nests containers too deeply (or in a cycle) for a REFER file") from None


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
        try:
            return _segmentation_to_mask(segmentation, height, width, strict)
        except (TypeError, KeyError, IndexError, OverflowError) as exc:
            # A field of the wrong kind (a size that is not two numbers, ...): still "a bad annotation".
            raise ValueError(f"malformed segmentation ({type(exc).__name__}: {exc})") from None


def _rle_total(counts: Any) -> int:
    """Pixels covered by RLE counts: a list of run lengths, or COCO's compressed string."""
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError("uncompressed RLE counts must be non-negative integers")
        return sum(counts)
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("compressed RLE counts must be an ASCII string") from None
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    runs: list[int] = []
    pos = 0
    # COCO's compressed form: each run is a little-endian sequence of 5-bit groups stored as
    # chr(48 + group), bit 0x20 meaning "more groups follow", the last group's 0x10 bit the sign;
    # from the third run on, a run is stored as the difference to the run two before it.
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("compressed RLE counts end in the middle of a run")
            group = counts[pos] - 48
            if not 0 <= group < 64:
                raise ValueError(f"compressed RLE counts hold the character {chr(counts[pos])!r}")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("compressed RLE counts decode to a negative run length")
        runs.append(value)
    return sum(runs)


def _checked_polygon(poly: Sequence[Any], height: int, width: int) -> list[float]:
    """A polygon's coordinates as floats, refused when pycocotools cannot rasterise them safely.

    pycocotools walks every edge at 5x resolution: a non-finite coordinate crashes it, and coordinates
    far outside the image cost memory in proportion to the distance (1e9 exhausts any machine).
    """
    try:
        coords = [float(v) for v in poly]
    except (TypeError, ValueError):
        raise ValueError("polygon coordinates must be numbers") from None
    reach = 4 * max(int(height), int(width), 1)
    if not all(math.isfinite(v) and -reach <= v <= reach for v in coords):
        raise ValueError(
            f"a polygon coordinate is not finite or lies far outside the {height}x{width} image "
            f"(allowed: -{reach} .. {reach})"
        )
    return coords


def _segmentation_to_mask(segmentation: Any, height: int, width: int, strict: bool) -> np.ndarray:
    if not (0 < int(height) and 0 < int(width) and int(height) * int(width) <= MAX_MASK_PIXELS):
        raise ValueError(f"image size {height}x{width} is not usable for a mask (at most {MAX_MASK_PIXELS} pixels)")
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError("an RLE segmentation needs 'size' and 'counts'")
        size = [int(s) for s in segmentation["size"]]
        if size != [int(height), int(width)]:
            raise ValueError(f"RLE size {size} does not match the image size {[int(height), int(width)]}")
        if any(s <= 0 for s in size) or size[0] * size[1] > MAX_MASK_PIXELS:
            raise ValueError(f"RLE size {size} is not a usable image size")
        counts = segmentation["counts"]
        # pycocotools trusts the counts: runs that do not add up to h*w leave part of the mask as
        # uninitialised memory (or write past it), so they are checked here first.
        total = _rle_total(counts)
        if total != size[0] * size[1]:
            raise ValueError(f"RLE counts cover {total} pixels, but the size {size} has {size[0] * size[1]}")
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
            polygons.append(_checked_polygon(poly, height, width))
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


def _as_id(value: Any) -> int:
    """An id as REFER stores it: an int (or an integral float / digit string, as some exports write)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an id")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value!r} is not an integer id")
    return int(value)


def _read_instances(path: Path) -> dict[str, Any]:
    """``instances.json`` parsed, with the COCO keys REFER needs, each a list."""
    try:
        with open(path, encoding="utf-8") as f:
            instances = json.load(f)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(instances, dict):
        raise ValueError(f"{path}: expected a COCO object with 'images' and 'annotations', got {type(instances).__name__}")
    for key in ("images", "annotations"):
        if key not in instances:
            raise ValueError(f"{path}: missing the COCO key {key!r}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances.get(key, []), list):
            raise ValueError(f"{path}: the COCO key {key!r} must hold a list")
    return instances


def _index_records(records: list[Any], path: Path, key: str) -> dict[int, dict[str, Any]]:
    """``{id: record}`` of a COCO list (images, annotations, categories); each record needs an ``id``."""
    index: dict[int, dict[str, Any]] = {}
    for i, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise ValueError(f"it is a {type(record).__name__}, not an object")
            index[_as_id(record["id"])] = record
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            detail = "no 'id'" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path}: {key}[{i}] is not a usable record ({detail})") from None
    return index


def _check_image_record(image: dict[str, Any], path: Path) -> None:
    """An image record must give a file name and a positive size (masks are rasterised at it)."""
    try:
        height, width = _as_id(image["height"]), _as_id(image["width"])
        ok = isinstance(image["file_name"], str) and height > 0 and width > 0
    except (KeyError, TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(
            f"{path}: image {image.get('id')!r} needs a 'file_name' string and positive integer 'height' "
            f"and 'width'"
        )


def read_coco_instances(path: Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]], dict[int, str]]:
    """A COCO ``instances.json`` checked and indexed: ``(images, annotations, category names)`` by id.

    Raises:
        ValueError: not UTF-8 JSON, not a COCO object, a record without a usable ``id``, an image
            without a file name or a positive size -- each naming the file (and the record).
    """
    instances = _read_instances(path)
    images = _index_records(instances["images"], path, "images")
    for image in images.values():
        _check_image_record(image, path)
    anns = _index_records(instances["annotations"], path, "annotations")
    categories = _index_records(instances.get("categories", []), path, "categories")
    return images, anns, {cid: str(c.get("name", cid)) for cid, c in categories.items()}


def _check_ref(ref: dict[str, Any], i: int, path: Path) -> int:
    """Check one ref's fields (ids, split, sentences with text); returns its ref_id."""
    missing = [k for k in _REQUIRED_REF_KEYS if k not in ref]
    if missing:
        raise ValueError(f"{path}: ref #{i} lacks the keys {missing}")
    try:
        ref_id = _as_id(ref["ref_id"])
        for key in ("ann_id", "image_id"):
            _as_id(ref[key])
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
