"""COCO annotations as REFER and gRefCOCO distribute them: ``instances.json`` read and checked, and an
annotation's segmentation (polygons or RLE) rasterised to a mask."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

__all__ = ["MAX_MASK_PIXELS", "as_id", "read_coco_instances", "segmentation_to_mask"]


#: Largest mask (height x width) rasterised from an annotation: twice PIL's decompression-bomb
#: threshold, the same bound `detris.data.images.load_image` puts on images.
MAX_MASK_PIXELS = 2 * 89_478_485


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
            index[as_id(record["id"])] = record
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            detail = "no 'id'" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path}: {key}[{i}] is not a usable record ({detail})") from None
    return index


def _check_image_record(image: dict[str, Any], path: Path) -> None:
    """An image record must give a file name and a positive size (masks are rasterised at it)."""
    try:
        height, width = as_id(image["height"]), as_id(image["width"])
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


def as_id(value: Any) -> int:
    """An id as REFER stores it: an int (or an integral float / digit string, as some exports write)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an id")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value!r} is not an integer id")
    return int(value)
