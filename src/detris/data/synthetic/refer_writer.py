"""Synthetic scenes written in the REFER layout of the real benchmarks (the same loader reads both)."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .scenes import SyntheticScenes
from .shapes import SHAPES, Scene

__all__ = ["ReferLayout", "write_refer_layout"]


@dataclass
class ReferLayout:
    """Where :func:`write_refer_layout` put things and how much it wrote."""

    data_root: Path
    image_root: Path
    instances_path: Path
    refs_path: Path
    num_images: int
    num_refs: int
    num_sentences: int
    split_images: dict[str, int]
    split_refs: dict[str, int]


def _split_counts(splits: Mapping[str, int | float], num_images: int | None) -> dict[str, int]:
    if not splits:
        raise ValueError("splits must name at least one split, e.g. {'train': 400, 'val': 50}")
    values = list(splits.values())
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        counts = {k: int(v) for k, v in splits.items()}
        if any(v < 0 for v in counts.values()):
            raise ValueError(f"split sizes must be >= 0, got {counts}")
        if num_images is not None and num_images != sum(counts.values()):
            raise ValueError(
                f"num_images={num_images} but the split sizes {counts} sum to "
                f"{sum(counts.values())}; pass fractions instead of counts, or drop num_images"
            )
        return counts
    if num_images is None:
        raise ValueError("fractional splits need num_images (e.g. num_images=500)")
    fr = {k: float(v) for k, v in splits.items()}
    if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fr}")
    counts, given = {}, 0
    names = list(fr)
    for name in names[:-1]:
        counts[name] = int(round(fr[name] * num_images))
        given += counts[name]
    counts[names[-1]] = num_images - given
    if counts[names[-1]] < 0:
        raise ValueError(f"split fractions {fr} do not fit num_images={num_images}")
    return counts


def _segmentation(mask: np.ndarray, kind: str) -> dict | list:
    if kind == "rle":
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if kind == "polygon":
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        if not polys:
            raise RuntimeError("object too small to be written as a polygon")
        return polys
    raise ValueError(f"segmentation must be 'rle' or 'polygon', got {kind!r}")


def write_refer_layout(
    out_root: str | os.PathLike,
    dataset_name: str = "synthetic",
    splits: Mapping[str, int | float] | None = None,
    seed: int = 0,
    num_images: int | None = None,
    image_root: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = (256, 256),
    min_objects: int = 2,
    max_objects: int = 5,
    max_expressions: int = 3,
    image_format: str = "png",
    segmentation: str = "rle",
    split_by: str = "unc",
) -> ReferLayout:
    """Write synthetic scenes in the REFER layout of the real benchmarks.

    Produces ``out_root/<dataset_name>/instances.json`` (COCO: images, annotations with RLE or
    polygon segmentation, one category per shape), ``out_root/<dataset_name>/refs(<split_by>).p``
    (pickle protocol 2 of a list of plain dicts: ``ref_id, ann_id, image_id, split, sentences
    [{sent, raw, tokens, sent_id}], sent_ids, category_id, file_name``) and the images under
    ``image_root/<file_name>`` (default ``out_root/images``). Splits are per image, as in REFER: all
    objects of an image belong to the same split. Every object is one ref, its expressions the
    sentences. As in the real refs files, a ref's ``file_name`` is the image stem plus a suffix and
    is *not* a file on disk: images are found through ``instances.json``.

    Args:
        out_root: the DATA_ROOT.
        dataset_name: folder name under ``out_root``.
        splits: split name -> number of images (ints), or -> fraction of ``num_images`` (floats);
            default ``{"train": 400, "val": 50, "testA": 50}``.
        seed: scene seed (see :class:`SyntheticScenes`).
        num_images: total images; needed with fractional splits, checked against integer ones.
        image_root: where images go (default ``out_root/images``).
        image_size, min_objects, max_objects, max_expressions: see :class:`SyntheticScenes`.
        image_format: ``"png"`` (lossless, masks match colours exactly) or ``"jpg"``.
        segmentation: ``"rle"`` (exact) or ``"polygon"`` (contours; approximate after rasterising).
        split_by: suffix of the refs file, ``refs(<split_by>).p``.

    Returns:
        a :class:`ReferLayout` with the paths and counts.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if splits is None:
        splits = {"train": 400, "val": 50, "testA": 50}
    counts = _split_counts(splits, num_images)
    total = sum(counts.values())
    scenes = SyntheticScenes(
        total, seed=seed, image_size=image_size, min_objects=min_objects,
        max_objects=max_objects, max_expressions=max_expressions,
    )
    data_root = Path(out_root)
    ann_dir = data_root / dataset_name
    img_dir = Path(image_root) if image_root is not None else data_root / "images"
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)

    split_of_image = [name for name, c in counts.items() for _ in range(c)]
    records = _Records()
    for idx in range(total):
        _write_scene(scenes[idx], idx + 1, split_of_image[idx], dataset_name, img_dir, image_format, segmentation,
                     records)

    instances_path, refs_path = _write_annotations(ann_dir, split_by, seed, records)
    split_refs = {name: sum(r["split"] == name for r in records.refs) for name in counts}
    return ReferLayout(
        data_root=data_root, image_root=img_dir, instances_path=instances_path, refs_path=refs_path,
        num_images=total, num_refs=len(records.refs), num_sentences=records.sent_id,
        split_images=dict(counts), split_refs=split_refs,
    )


def _write_annotations(ann_dir: Path, split_by: str, seed: int, records: _Records) -> tuple[Path, Path]:
    """``instances.json`` (COCO) and ``refs(<split_by>).p`` (REFER) from ``records``."""
    instances = {
        "info": {"description": f"detris synthetic referring scenes (seed {seed})"},
        "images": records.images,
        "annotations": records.annotations,
        "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)],
    }
    instances_path = ann_dir / "instances.json"
    with open(instances_path, "w") as f:
        json.dump(instances, f)
    refs_path = ann_dir / f"refs({split_by}).p"
    with open(refs_path, "wb") as f:
        # Protocol 2 like the distributed REFER files; only plain containers and scalars inside.
        pickle.dump(records.refs, f, protocol=2)
    return instances_path, refs_path


@dataclass
class _Records:
    """The COCO images / annotations and REFER refs written so far, and the running ids."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    refs: list[dict[str, Any]] = field(default_factory=list)
    ann_id: int = 0
    sent_id: int = 0


def _write_scene(scene: Scene, image_id: int, split: str, dataset_name: str, img_dir: Path, image_format: str,
                 segmentation: str, records: _Records) -> None:
    """Write one scene's image; add its image, one annotation and one ref per object to ``records``."""
    stem = f"{dataset_name}_{image_id:06d}"
    file_name = f"{stem}.{image_format}"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    if not cv2.imwrite(str(img_dir / file_name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write image {img_dir / file_name}")
    records.images.append({"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width})
    for k, obj in enumerate(scene.objects):
        records.ann_id += 1
        x, y, bw, bh = obj.bbox
        category = SHAPES.index(obj.shape) + 1
        records.annotations.append({
            "id": records.ann_id, "image_id": image_id, "category_id": category,
            "segmentation": _segmentation(obj.mask, segmentation), "area": float(obj.area),
            "bbox": [float(x), float(y), float(bw), float(bh)], "iscrowd": 0,
        })
        sentences = []
        for text in obj.expressions:
            sentences.append({"tokens": text.split(), "raw": text, "sent_id": records.sent_id, "sent": text})
            records.sent_id += 1
        records.refs.append({
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": f"{stem}_{k}.{image_format}",
            "ann_id": records.ann_id,
            "ref_id": len(records.refs),
            "image_id": image_id,
            "split": split,
            "sentences": sentences,
            "category_id": category,
        })
