"""Procedural referring scenes: coloured shapes with exact masks and unambiguous expressions.

No real dataset can be downloaded here, so learning is demonstrated on scenes made by this module.
A scene is a grey, slightly noisy canvas with 2..N non-overlapping flat-coloured shapes.  Every
object gets one or more referring expressions drawn from this small grammar::

    the [size] [colour] NOUN                            "the large blue square", "the red shape"
    the SUPERLATIVE [size] [colour] NOUN               "the leftmost square", "the topmost shape"
    the [size] [colour] NOUN SIDE                       "the triangle on the left"
    the [size] [colour] NOUN RELATION the ANCHOR        "the green shape above the yellow circle"

    NOUN        = circle | square | triangle | star | shape      ("shape" = any kind)
    SUPERLATIVE = leftmost | rightmost | topmost | bottommost
    SIDE        = on the left | on the right | at the top | at the bottom   (exactly two candidates)
    RELATION    = above | below | to the left of | to the right of

An expression is emitted only if exactly one object satisfies it.  Spatial words use the centroid of
each object's mask and a safety margin (7 % of the shorter image side): a superlative needs a gap of
at least the margin to the runner-up, and a relation holds "definitely" when the offset along the
relation's axis exceeds both the margin and the cross-axis offset plus the margin; it is emitted
only if no other candidate even comes close (within the margin) to satisfying it.  So any reasonable
reading ("above" = the vertical offset dominates) picks the same object.

Everything is a pure function of ``(seed, index)``: scene ``i`` is the same whatever else is generated.
:func:`write_refer_layout` writes scenes in the REFER layout of the real benchmarks
(``instances.json`` + ``refs(unc).p`` + an image folder), so the same loader reads both.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "SUPERLATIVES",
    "SIDES",
    "RELATIONS",
    "SceneObject",
    "Scene",
    "SyntheticScenes",
    "ReferLayout",
    "write_refer_layout",
]

#: Shape kinds (also the COCO category names, ids 1..4 in this order).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: Named flat colours (RGB); all strongly saturated so that the grey background never matches.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
#: Size classes and their radius range as a fraction of the shorter image side; the gap between
#: the two ranges keeps "small" and "large" visually unambiguous.
SIZES: dict[str, tuple[float, float]] = {"small": (0.06, 0.085), "large": (0.13, 0.17)}
SUPERLATIVES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
SIDES: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom")
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")

# Distance of the farthest vertex from the centre, in units of the radius, per shape; used to keep
# objects apart (the square's and triangle's corners stick out of the radius circle).
_REACH = {"circle": 1.0, "square": 0.9 * np.sqrt(2.0), "triangle": float(np.hypot(0.95, 0.8)), "star": 1.0}
_STAR_INNER = 0.42  # inner/outer radius ratio of the five-pointed star
_SPATIAL_MARGIN = 0.07  # margin of spatial words, fraction of the shorter image side
_GAP = 0.03  # minimum free space between two objects, fraction of the shorter image side

# For each superlative / side word: (axis 0 = x / 1 = y, sign) such that the referred object has
# the smallest value of sign * coordinate.
_EXTREME = {
    "leftmost": (0, 1.0), "rightmost": (0, -1.0), "topmost": (1, 1.0), "bottommost": (1, -1.0),
    "on the left": (0, 1.0), "on the right": (0, -1.0), "at the top": (1, 1.0), "at the bottom": (1, -1.0),
}
# For each relation: (axis, sign) such that "o REL anchor" means sign * (anchor - o)[axis] > 0.
_RELATION_AXIS = {"above": (1, 1.0), "below": (1, -1.0), "to the left of": (0, 1.0), "to the right of": (0, -1.0)}


@dataclass
class SceneObject:
    """One shape of a scene.

    Attributes:
        shape, color, size: the attribute words (see :data:`SHAPES`, :data:`COLORS`, :data:`SIZES`).
        mask: ``(H, W)`` uint8 0/1, exactly the pixels painted with the object's colour.
        centroid: ``(x, y)`` mean pixel coordinate of the mask (what spatial words refer to).
        bbox: ``(x, y, w, h)`` tight box of the mask in COCO convention.
        area: number of mask pixels.
        expressions: unambiguous referring expressions (at least one).
    """

    shape: str
    color: str
    size: str
    mask: np.ndarray
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: int
    expressions: list[str] = field(default_factory=list)


@dataclass
class Scene:
    """One generated image with its objects. ``image`` is ``(H, W, 3)`` uint8 RGB."""

    index: int
    image: np.ndarray
    objects: list[SceneObject]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


Descriptor = tuple[Optional[str], Optional[str], Optional[str]]  # (size, colour, shape)


def _describe(desc: Descriptor) -> str:
    size, color, shape = desc
    return " ".join(w for w in (size, color, shape or "shape") if w)


def _matches(desc: Descriptor, obj: SceneObject) -> bool:
    size, color, shape = desc
    return (size is None or size == obj.size) and (color is None or color == obj.color) and (
        shape is None or shape == obj.shape
    )


def _descriptors(obj: SceneObject) -> list[Descriptor]:
    """All 8 attribute subsets that describe ``obj`` (from bare "shape" to size+colour+shape)."""
    out = []
    for use_size, use_color, use_shape in itertools.product((False, True), repeat=3):
        out.append((obj.size if use_size else None, obj.color if use_color else None,
                    obj.shape if use_shape else None))
    return out


def _draw_shape(mask: np.ndarray, shape: str, cx: float, cy: float, r: float) -> None:
    """Fill ``shape`` of radius ``r`` centred at ``(cx, cy)`` into ``mask`` with 1 (no anti-aliasing)."""
    if shape == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, thickness=-1,
                   lineType=cv2.LINE_8)
        return
    if shape == "square":
        half = 0.9 * r
        pts = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else _STAR_INNER * r
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    poly = np.round(np.asarray(pts, dtype=np.float64)).astype(np.int32)
    cv2.fillPoly(mask, [poly], 1, lineType=cv2.LINE_8)


class SyntheticScenes:
    """A deterministic, random-access collection of procedural referring scenes.

    Args:
        num_images: number of scenes.
        seed: base seed; scene ``i`` depends only on ``(seed, i)``.
        image_size: ``(height, width)`` of every image, or ``None`` for sizes drawn per image from
            ``size_range`` (each side independently).
        size_range: ``(min, max)`` side length used when ``image_size`` is ``None``.
        min_objects, max_objects: number of shapes per scene (inclusive).
        max_expressions: at most this many expressions per object (at least one is guaranteed).
        distractor_prob: probability that a new object copies the shape and/or colour of an earlier
            one, so that attributes alone often do not suffice and spatial words are needed.
    """

    def __init__(
        self,
        num_images: int,
        seed: int = 0,
        image_size: Optional[tuple[int, int]] = (256, 256),
        size_range: tuple[int, int] = (160, 384),
        min_objects: int = 2,
        max_objects: int = 5,
        max_expressions: int = 3,
        distractor_prob: float = 0.5,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}"
            )
        if max_expressions < 1:
            raise ValueError(f"max_expressions must be >= 1, got {max_expressions}")
        if image_size is not None:
            image_size = (int(image_size[0]), int(image_size[1]))
            if min(image_size) < 64:
                raise ValueError(f"image_size must be at least 64x64, got {image_size}")
        elif not 64 <= size_range[0] <= size_range[1]:
            raise ValueError(f"size_range must satisfy 64 <= min <= max, got {size_range}")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.image_size = image_size
        self.size_range = (int(size_range[0]), int(size_range[1]))
        self.min_objects = int(min_objects)
        self.max_objects = int(max_objects)
        self.max_expressions = int(max_expressions)
        self.distractor_prob = float(distractor_prob)

    def __len__(self) -> int:
        return self.num_images

    def __iter__(self):
        for i in range(self.num_images):
            yield self[i]

    def __getitem__(self, index: int) -> Scene:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"scene index {index} out of range for {self.num_images} scenes")
        index = index % self.num_images if self.num_images else index
        rng = np.random.default_rng([self.seed, index])
        if self.image_size is not None:
            h, w = self.image_size
        else:
            lo, hi = self.size_range
            h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        # A scene in which some object has no unambiguous expression is redrawn from the same stream.
        for _ in range(200):
            scene = self._try_scene(rng, index, h, w)
            if scene is not None:
                return scene
        raise RuntimeError(
            f"could not generate scene {index} with every object describable; "
            "lower max_objects or enlarge image_size"
        )

    # -- generation ----------------------------------------------------------------------------
    def _sample_attributes(self, rng: np.random.Generator, placed: list[dict]) -> tuple[str, str, str]:
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        if placed and rng.random() < self.distractor_prob:
            other = placed[rng.integers(len(placed))]
            what = rng.random()
            if what < 0.4:
                shape = other["shape"]
            elif what < 0.8:
                color = other["color"]
            else:
                shape, color = other["shape"], other["color"]
        return shape, color, size

    def _try_scene(self, rng: np.random.Generator, index: int, h: int, w: int) -> Optional[Scene]:
        side = min(h, w)
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        placed: list[dict] = []
        for _ in range(n):
            shape, color, size = self._sample_attributes(rng, placed)
            lo, hi = SIZES[size]
            r = float(rng.uniform(lo, hi)) * side
            reach = _REACH[shape] * r
            for _attempt in range(60):
                cx = float(rng.uniform(reach + 2, w - reach - 2))
                cy = float(rng.uniform(reach + 2, h - reach - 2))
                ok = all(
                    np.hypot(cx - p["cx"], cy - p["cy"]) >= reach + p["reach"] + _GAP * side
                    for p in placed
                )
                if ok:
                    placed.append(dict(shape=shape, color=color, size=size, cx=cx, cy=cy, r=r, reach=reach))
                    break
        if len(placed) < self.min_objects:
            return None

        # Background: neutral grey with mild noise (90..165 +- 8 stays inside 0..255); objects are
        # painted flat on top of it.
        grey = int(rng.integers(90, 166))
        image = (rng.integers(-8, 9, size=(h, w, 3), dtype=np.int16) + grey).astype(np.uint8)
        objects: list[SceneObject] = []
        for p in placed:
            mask = np.zeros((h, w), dtype=np.uint8)
            _draw_shape(mask, p["shape"], p["cx"], p["cy"], p["r"])
            # Only the object's neighbourhood can hold mask pixels; scanning it alone is faster.
            ya, yb = max(int(p["cy"] - p["reach"]) - 2, 0), min(int(p["cy"] + p["reach"]) + 3, h)
            xa, xb = max(int(p["cx"] - p["reach"]) - 2, 0), min(int(p["cx"] + p["reach"]) + 3, w)
            ys, xs = np.nonzero(mask[ya:yb, xa:xb])
            if len(xs) == 0:
                return None
            ys, xs = ys + ya, xs + xa
            image[ys, xs] = COLORS[p["color"]]
            x0, y0 = int(xs.min()), int(ys.min())
            objects.append(
                SceneObject(
                    shape=p["shape"], color=p["color"], size=p["size"], mask=mask,
                    centroid=(float(xs.mean()), float(ys.mean())),
                    bbox=(x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1),
                    area=int(len(xs)),
                )
            )

        margin = _SPATIAL_MARGIN * side
        anchor_descs = [_shortest_unique(objects, a) for a in range(len(objects))]
        for t, obj in enumerate(objects):
            candidates = _candidate_expressions(objects, t, margin, anchor_descs)
            if not any(candidates.values()):
                return None
            obj.expressions = _pick(candidates, self.max_expressions, rng)
        return Scene(index=index, image=image, objects=objects)


def _candidate_expressions(
    objects: list[SceneObject], t: int, margin: float, anchor_descs: Sequence[Optional[Descriptor]]
) -> dict[str, list[str]]:
    """Every unambiguous expression for ``objects[t]``, grouped by kind.

    ``anchor_descs[a]`` is the shortest unique attribute description of object ``a`` (or None).
    """
    target = objects[t]
    out: dict[str, list[str]] = {"attribute": [], "superlative": [], "side": [], "relation": []}
    matching = {desc: [i for i, o in enumerate(objects) if _matches(desc, o)]
                for desc in _descriptors(target)}
    for desc in _descriptors(target):
        group = matching[desc]
        if desc != (None, None, None) and group == [t]:
            out["attribute"].append(f"the {_describe(desc)}")
        if len(group) < 2:
            continue
        for word, (axis, sign) in _EXTREME.items():
            if word in SIDES and len(group) != 2:
                continue
            # The referred object must win by at least the margin over every other candidate.
            keys = {i: sign * objects[i].centroid[axis] for i in group}
            if all(keys[t] + margin <= keys[i] for i in group if i != t):
                if word in SIDES:
                    out["side"].append(f"the {_describe(desc)} {word}")
                else:
                    out["superlative"].append(f"the {word} {_describe(desc)}")

    for a, anchor in enumerate(objects):
        if a == t:
            continue
        anchor_desc = anchor_descs[a]
        if anchor_desc is None:
            continue
        for word, (axis, sign) in _RELATION_AXIS.items():
            for desc in _descriptors(target):
                group = [i for i in matching[desc] if i != a]
                definite, possible = [], []
                for i in group:
                    along = sign * (anchor.centroid[axis] - objects[i].centroid[axis])
                    across = abs(anchor.centroid[1 - axis] - objects[i].centroid[1 - axis])
                    if along >= margin and along >= across + margin:
                        definite.append(i)
                    if along > -margin and along > across - margin:
                        possible.append(i)
                if definite == [t] and possible == [t]:
                    out["relation"].append(
                        f"the {_describe(desc)} {word} the {_describe(anchor_desc)}"
                    )
    return out


def _shortest_unique(objects: list[SceneObject], a: int) -> Optional[Descriptor]:
    """The attribute-only description with the fewest words that picks out ``objects[a]`` alone."""
    best: Optional[Descriptor] = None
    best_len = 99
    for desc in _descriptors(objects[a]):
        if desc == (None, None, None):
            continue
        if [i for i, o in enumerate(objects) if _matches(desc, o)] != [a]:
            continue
        n_words = sum(d is not None for d in desc)
        if n_words < best_len:
            best, best_len = desc, n_words
    return best


def _pick(candidates: dict[str, list[str]], k: int, rng: np.random.Generator) -> list[str]:
    """Up to ``k`` distinct expressions, visiting the kinds in a random order for variety."""
    pools = {kind: list(dict.fromkeys(v)) for kind, v in candidates.items() if v}
    kinds = list(pools)
    order = [kinds[i] for i in rng.permutation(len(kinds))]
    chosen: list[str] = []
    while len(chosen) < k and any(pools.values()):
        for kind in order:
            pool = pools[kind]
            if not pool or len(chosen) >= k:
                continue
            chosen.append(pool.pop(int(rng.integers(len(pool)))))
    return chosen


# -- REFER layout -------------------------------------------------------------------------------
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


def _split_counts(splits: Mapping[str, Union[int, float]], num_images: Optional[int]) -> dict[str, int]:
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


def _segmentation(mask: np.ndarray, kind: str) -> Union[dict, list]:
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
    out_root: Union[str, os.PathLike],
    dataset_name: str = "synthetic",
    splits: Optional[Mapping[str, Union[int, float]]] = None,
    seed: int = 0,
    num_images: Optional[int] = None,
    image_root: Optional[Union[str, os.PathLike]] = None,
    image_size: Optional[tuple[int, int]] = (256, 256),
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

    split_of_image: list[str] = []
    for name, c in counts.items():
        split_of_image.extend([name] * c)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    split_refs = {name: 0 for name in counts}
    ann_id = ref_id = sent_id = 0
    write_params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    for idx in range(total):
        scene = scenes[idx]
        image_id = idx + 1
        stem = f"{dataset_name}_{image_id:06d}"
        file_name = f"{stem}.{image_format}"
        if not cv2.imwrite(str(img_dir / file_name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), write_params):
            raise OSError(f"could not write image {img_dir / file_name}")
        images.append({"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width})
        split = split_of_image[idx]
        for k, obj in enumerate(scene.objects):
            ann_id += 1
            x, y, bw, bh = obj.bbox
            annotations.append({
                "id": ann_id,
                "image_id": image_id,
                "category_id": SHAPES.index(obj.shape) + 1,
                "segmentation": _segmentation(obj.mask, segmentation),
                "area": float(obj.area),
                "bbox": [float(x), float(y), float(bw), float(bh)],
                "iscrowd": 0,
            })
            sentences = []
            for text in obj.expressions:
                sentences.append({"tokens": text.split(), "raw": text, "sent_id": sent_id, "sent": text})
                sent_id += 1
            refs.append({
                "sent_ids": [s["sent_id"] for s in sentences],
                "file_name": f"{stem}_{k}.{image_format}",
                "ann_id": ann_id,
                "ref_id": ref_id,
                "image_id": image_id,
                "split": split,
                "sentences": sentences,
                "category_id": SHAPES.index(obj.shape) + 1,
            })
            ref_id += 1
            split_refs[split] += 1

    instances = {
        "info": {"description": f"detris synthetic referring scenes (seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)],
    }
    instances_path = ann_dir / "instances.json"
    with open(instances_path, "w") as f:
        json.dump(instances, f)
    refs_path = ann_dir / f"refs({split_by}).p"
    with open(refs_path, "wb") as f:
        # Protocol 2 like the distributed REFER files; only plain containers and scalars inside.
        pickle.dump(refs, f, protocol=2)
    return ReferLayout(
        data_root=data_root, image_root=img_dir, instances_path=instances_path, refs_path=refs_path,
        num_images=total, num_refs=len(refs), num_sentences=sent_id,
        split_images=dict(counts), split_refs=split_refs,
    )
