"""Synthetic scenes written in the layouts of the real benchmarks (the same loaders read both): REFER
(RefCOCO/+/g) and gRefCOCO (refs to several objects or to none besides the single-object ones)."""

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
from tqdm.auto import tqdm

from .groups import pick_group_expressions
from .scenes import SPATIAL_MARGIN, SyntheticScenes
from .shapes import SHAPES, Scene

__all__ = ["ReferLayout", "write_grefcoco_layout", "write_refer_layout"]

#: Stream of the generalized refs' draws: scene ``i``'s objects and single-object expressions come from
#: ``(seed, i)`` and stay those of `write_refer_layout`.
_GROUP_STREAM = 1


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
    scenes_kw = dict(image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                     max_expressions=max_expressions)
    records, counts, img_dir = _write_scenes(out_root, dataset_name, splits, seed, num_images, image_root,
                                             image_format, segmentation, scenes_kw)
    instances_path, refs_path = _write_annotations(Path(out_root) / dataset_name, split_by, seed, records)
    return _layout(Path(out_root), img_dir, instances_path, refs_path, counts, records)


def write_grefcoco_layout(
    out_root: str | os.PathLike,
    splits: Mapping[str, int | float] | None = None,
    seed: int = 0,
    num_images: int | None = None,
    image_root: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = (256, 256),
    min_objects: int = 2,
    max_objects: int = 5,
    max_expressions: int = 3,
    multi_target_refs: int = 1,
    no_target_refs: int = 1,
    image_format: str = "png",
    split_by: str = "unc",
) -> ReferLayout:
    """Write synthetic scenes in the gRefCOCO layout: ``out_root/grefcoco/{instances.json,
    grefs(<split_by>).json}`` and the images, as `detris.data.grefer.GReferAnnotations` reads them.

    Every object is a single-target ref, as in `write_refer_layout` (same scenes for the same seed);
    each image adds up to ``multi_target_refs`` refs to several objects (``ann_id`` a list, sentences
    like "both circles") and ``no_target_refs`` refs to none (``ann_id == [-1]``, one sentence like
    "the purple star"). ``ann_id`` is always a list, ``category_id`` too.

    Arguments as in `write_refer_layout`; returns a `ReferLayout` (``refs_path`` is the JSON file).
    """
    if multi_target_refs < 0 or no_target_refs < 0:
        raise ValueError(f"need multi_target_refs, no_target_refs >= 0, got {multi_target_refs}, {no_target_refs}")
    scenes_kw = dict(image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                     max_expressions=max_expressions)
    groups = (multi_target_refs, no_target_refs, max_expressions)
    records, counts, img_dir = _write_scenes(out_root, "grefcoco", splits, seed, num_images, image_root,
                                             image_format, "rle", scenes_kw, groups)
    ann_dir = Path(out_root) / "grefcoco"
    instances_path = _write_instances(ann_dir, seed, records)
    refs_path = ann_dir / f"grefs({split_by}).json"
    refs_path.write_text(json.dumps(records.refs), encoding="utf-8")
    return _layout(Path(out_root), img_dir, instances_path, refs_path, counts, records)


def _layout(data_root: Path, img_dir: Path, instances_path: Path, refs_path: Path, counts: dict[str, int],
            records: _Records) -> ReferLayout:
    split_refs = {name: sum(r["split"] == name for r in records.refs) for name in counts}
    return ReferLayout(
        data_root=data_root, image_root=img_dir, instances_path=instances_path, refs_path=refs_path,
        num_images=sum(counts.values()), num_refs=len(records.refs), num_sentences=records.sent_id,
        split_images=dict(counts), split_refs=split_refs,
    )


def _write_scenes(out_root: str | os.PathLike, dataset_name: str, splits: Mapping[str, int | float] | None,
                  seed: int, num_images: int | None, image_root: str | os.PathLike | None, image_format: str,
                  segmentation: str, scenes_kw: dict[str, Any],
                  groups: tuple[int, int, int] | None = None) -> tuple[_Records, dict[str, int], Path]:
    """Generate and write every image; returns the records, the split sizes and the image folder.
    ``groups`` = (multi-target refs, no-target refs, sentences per multi-target ref) per image, or None
    for single-object refs only (the REFER layout)."""
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if splits is None:
        splits = {"train": 400, "val": 50, "testA": 50}
    counts = _split_counts(splits, num_images)
    total = sum(counts.values())
    scenes = SyntheticScenes(total, seed=seed, **scenes_kw)
    ann_dir = Path(out_root) / dataset_name
    img_dir = Path(image_root) if image_root is not None else Path(out_root) / "images"
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    split_of_image = [name for name, c in counts.items() for _ in range(c)]
    records = _Records(generalized=groups is not None)
    for idx in tqdm(range(total), desc=f"writing {dataset_name}", unit="image", disable=total < 200, leave=False):
        scene = scenes[idx]
        first_ann = records.ann_id + 1
        _write_scene(scene, idx + 1, split_of_image[idx], dataset_name, img_dir, image_format, segmentation,
                     records)
        if groups is not None:
            rng = np.random.default_rng([seed, idx, _GROUP_STREAM])
            margin = SPATIAL_MARGIN * min(scene.height, scene.width)
            for targets, texts in pick_group_expressions(scene.objects, margin, *groups, rng):
                ann_ids = [first_ann + t for t in targets] or [-1]
                categories = [SHAPES.index(scene.objects[t].shape) + 1 for t in targets] or [-1]
                records.add_ref(texts, ann_ids, categories, idx + 1, split_of_image[idx],
                                f"{dataset_name}_{idx + 1:06d}_g{len(records.refs)}.{image_format}")
    return records, counts, img_dir


def _write_instances(ann_dir: Path, seed: int, records: _Records) -> Path:
    """``instances.json`` (COCO: images, annotations, one category per shape) from ``records``."""
    instances = {
        "info": {"description": f"detris synthetic referring scenes (seed {seed})"},
        "images": records.images,
        "annotations": records.annotations,
        "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)],
    }
    instances_path = ann_dir / "instances.json"
    with open(instances_path, "w") as f:
        json.dump(instances, f)
    return instances_path


def _write_annotations(ann_dir: Path, split_by: str, seed: int, records: _Records) -> tuple[Path, Path]:
    """``instances.json`` (COCO) and ``refs(<split_by>).p`` (REFER) from ``records``."""
    instances_path = _write_instances(ann_dir, seed, records)
    refs_path = ann_dir / f"refs({split_by}).p"
    with open(refs_path, "wb") as f:
        # Protocol 2 like the distributed REFER files; only plain containers and scalars inside.
        pickle.dump(records.refs, f, protocol=2)
    return instances_path, refs_path


@dataclass
class _Records:
    """The COCO images / annotations and REFER refs written so far, and the running ids.
    ``generalized``: refs in the gRefCOCO form (``ann_id`` and ``category_id`` lists)."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    refs: list[dict[str, Any]] = field(default_factory=list)
    ann_id: int = 0
    sent_id: int = 0
    generalized: bool = False

    def add_ref(self, texts: list[str], ann_ids: list[int], categories: list[int], image_id: int, split: str,
                file_name: str) -> None:
        """One ref with a sentence per text (new sentence ids)."""
        sentences = []
        for text in texts:
            sentences.append({"tokens": text.split(), "raw": text, "sent_id": self.sent_id, "sent": text})
            self.sent_id += 1
        single = not self.generalized and len(ann_ids) == 1
        self.refs.append({
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": file_name,
            "ann_id": ann_ids[0] if single else ann_ids,
            "ref_id": len(self.refs),
            "image_id": image_id,
            "split": split,
            "sentences": sentences,
            "category_id": categories[0] if single else categories,
        })


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
        records.add_ref(obj.expressions, [records.ann_id], [category], image_id, split,
                        f"{stem}_{k}.{image_format}")
