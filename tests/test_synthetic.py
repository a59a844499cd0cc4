"""Synthetic referring scenes: determinism, exact masks, independently re-checked expressions, REFER layout."""

from __future__ import annotations

import io
import json
import pickle
import re

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detris.data.synthetic import SyntheticScenes, write_refer_layout

# The test's own idea of the colours (pure hues), independent of the generator's palette values:
# every painted colour must be nearest to the hue its name says.
HUES = {
    "red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "purple": (128, 0, 128), "orange": (255, 165, 0),
}
SHAPE_WORDS = ("circle", "square", "triangle", "star")

_NP = r"(?:(small|large) )?(?:(red|green|blue|yellow|purple|orange) )?(circle|square|triangle|star|shape)"
GRAMMAR = re.compile(
    r"^the (?:(leftmost|rightmost|topmost|bottommost) )?" + _NP
    + r"(?: (on the left|on the right|at the top|at the bottom))?"
    + r"(?: (above|below|to the left of|to the right of) the " + _NP + r")?$"
)


def measure(scene):
    """Attributes of each object derived from pixels and masks only (not from the generator's labels)."""
    side = min(scene.image.shape[:2])
    out = []
    for obj in scene.objects:
        m = obj.mask.astype(bool)
        ys, xs = np.nonzero(m)
        colours = np.unique(scene.image[m], axis=0)
        assert len(colours) == 1, "an object must be painted in one flat colour"
        rgb = colours[0].astype(float)
        colour = min(HUES, key=lambda k: np.sum((rgb - np.array(HUES[k])) ** 2))
        bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        fill = m.sum() / (bw * bh)  # square ~1, circle ~pi/4, triangle ~1/2, star ~0.4
        shape = "square" if fill > 0.9 else "circle" if fill > 0.62 else "triangle" if fill > 0.46 else "star"
        size = "small" if max(bw, bh) / 2 / side < 0.1 else "large"
        out.append(dict(shape=shape, color=colour, size=size, x=xs.mean(), y=ys.mean()))
    return out


def fits(attrs, size, colour, noun):
    return (size is None or attrs["size"] == size) and (colour is None or attrs["color"] == colour) and (
        noun == "shape" or attrs["shape"] == noun
    )


def referents(expr, objs):
    """Indices of the objects the expression describes, under plain (margin-free) readings."""
    m = GRAMMAR.match(expr)
    assert m, f"expression outside the grammar: {expr!r}"
    sup, size, colour, noun, side, rel, a_size, a_colour, a_noun = m.groups()
    cands = [i for i, o in enumerate(objs) if fits(o, size, colour, noun)]
    if sup or side:
        word = sup or side
        if side:
            assert len(cands) == 2, f"{expr!r}: 'on the left'-style words need exactly two candidates"
        key = {"leftmost": "x", "on the left": "x", "rightmost": "x", "on the right": "x",
               "topmost": "y", "at the top": "y", "bottommost": "y", "at the bottom": "y"}[word]
        smallest = word in ("leftmost", "on the left", "topmost", "at the top")
        best = (min if smallest else max)(cands, key=lambda i: objs[i][key])
        return [best]
    if rel:
        anchors = [i for i, o in enumerate(objs) if fits(o, a_size, a_colour, a_noun)]
        assert len(anchors) == 1, f"{expr!r}: the anchor must be unique, matches {anchors}"
        a = objs[anchors[0]]
        hits = []
        for i in cands:
            if i == anchors[0]:
                continue
            dx, dy = objs[i]["x"] - a["x"], objs[i]["y"] - a["y"]
            ok = {"above": -dy > abs(dx), "below": dy > abs(dx),
                  "to the left of": -dx > abs(dy), "to the right of": dx > abs(dy)}[rel]
            if ok:
                hits.append(i)
        return hits
    return cands


def test_expressions_are_unambiguous_and_true():
    scenes = SyntheticScenes(120, seed=11, image_size=None, max_objects=6)
    kinds = set()
    for scene in scenes:
        objs = measure(scene)
        for i, (obj, attrs) in enumerate(zip(scene.objects, objs)):
            # The generator's labels agree with what the pixels show.
            assert (obj.shape, obj.color, obj.size) == (attrs["shape"], attrs["color"], attrs["size"])
            assert 1 <= len(obj.expressions) <= 3
            assert len(set(obj.expressions)) == len(obj.expressions)
            for expr in obj.expressions:
                assert referents(expr, objs) == [i], f"scene {scene.index}: {expr!r} -> not only object {i}"
                kinds.add("relation" if re.search(r" (above|below|of) the ", expr) else
                          "superlative" if "most " in expr else
                          "side" if re.search(r" (on|at) the (left|right|top|bottom)$", expr) else "attribute")
    assert kinds == {"attribute", "superlative", "side", "relation"}


def test_masks_are_exact_and_disjoint():
    for scene in SyntheticScenes(30, seed=2):
        total = np.zeros(scene.image.shape[:2], np.int32)
        for obj in scene.objects:
            assert obj.mask.dtype == np.uint8 and set(np.unique(obj.mask)) <= {0, 1}
            assert obj.area == int(obj.mask.sum()) > 0
            ys, xs = np.nonzero(obj.mask)
            assert obj.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            total += obj.mask
        assert total.max() == 1, "objects must not overlap"
        # Pixels of an object's exact colour are exactly the union of the masks of that colour.
        for obj in scene.objects:
            colour = scene.image[obj.mask.astype(bool)][0]
            painted = np.all(scene.image == colour, axis=-1)
            union = np.zeros_like(painted)
            for other in scene.objects:
                if np.array_equal(scene.image[other.mask.astype(bool)][0], colour):
                    union |= other.mask.astype(bool)
            np.testing.assert_array_equal(painted, union)


def test_deterministic_by_seed_and_index():
    a = SyntheticScenes(6, seed=3)
    b = SyntheticScenes(6, seed=3)
    c = SyntheticScenes(50, seed=3)  # scene i does not depend on how many scenes there are
    for i in range(6):
        for other in (b[i], c[i]):
            np.testing.assert_array_equal(a[i].image, other.image)
            assert [o.expressions for o in a[i].objects] == [o.expressions for o in other.objects]
            for o1, o2 in zip(a[i].objects, other.objects):
                np.testing.assert_array_equal(o1.mask, o2.mask)
    d = SyntheticScenes(6, seed=4)
    assert not all(np.array_equal(a[i].image, d[i].image) for i in range(6))


def test_varied_sizes_and_object_counts():
    scenes = SyntheticScenes(40, seed=0, image_size=None, size_range=(160, 320), min_objects=2, max_objects=4)
    shapes = {s.image.shape for s in scenes}
    assert len(shapes) > 10
    for s in scenes:
        assert 160 <= s.height <= 320 and 160 <= s.width <= 320
        assert 2 <= len(s.objects) <= 4
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
    fixed = SyntheticScenes(3, seed=0, image_size=(120, 200))
    assert all(s.image.shape == (120, 200, 3) for s in fixed)


class _PlainOnly(pickle.Unpickler):
    def find_class(self, module, name):  # any class reference is an error
        raise pickle.UnpicklingError(f"unexpected class {module}.{name}")


def test_refer_layout(tmp_path):
    splits = {"train": 6, "val": 2, "testA": 2}
    layout = write_refer_layout(tmp_path / "data", dataset_name="synthetic", splits=splits, seed=5)
    root = tmp_path / "data" / "synthetic"
    assert layout.instances_path == root / "instances.json"
    assert layout.refs_path == root / "refs(unc).p"
    inst = json.loads((root / "instances.json").read_text())
    raw = (root / "refs(unc).p").read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2
    refs = _PlainOnly(io.BytesIO(raw)).load()

    scenes = SyntheticScenes(10, seed=5)
    n_objects = sum(len(s.objects) for s in scenes)
    assert len(inst["images"]) == 10 and layout.num_images == 10
    assert len(inst["annotations"]) == n_objects == len(refs) == layout.num_refs
    assert [c["name"] for c in sorted(inst["categories"], key=lambda c: c["id"])] == list(SHAPE_WORDS)

    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    split_of_image = {}
    sent_ids = []
    for ref in refs:
        assert set(ref) >= {"ref_id", "ann_id", "image_id", "split", "sentences", "category_id", "file_name"}
        ann = anns[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        split_of_image.setdefault(ref["image_id"], ref["split"])
        assert split_of_image[ref["image_id"]] == ref["split"]  # splits are per image
        assert ref["sentences"]
        for s in ref["sentences"]:
            assert set(s) == {"sent", "raw", "tokens", "sent_id"}
            assert s["tokens"] == s["sent"].split() and GRAMMAR.match(s["sent"])
            sent_ids.append(s["sent_id"])
    assert len(sent_ids) == len(set(sent_ids)) == layout.num_sentences
    assert len({r["ref_id"] for r in refs}) == len(refs)
    counts = {name: sum(1 for v in split_of_image.values() if v == name) for name in splits}
    assert counts == splits

    # Masks decode back exactly; images are lossless PNGs of the scenes.
    for scene, image_id in zip(scenes, sorted(images)):
        im = images[image_id]
        assert (im["height"], im["width"]) == scene.image.shape[:2]
        disk = cv2.cvtColor(cv2.imread(str(layout.image_root / im["file_name"])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(disk, scene.image)
        objs = [a for a in inst["annotations"] if a["image_id"] == image_id]
        assert len(objs) == len(scene.objects)
        for ann, obj in zip(objs, scene.objects):
            decoded = mask_utils.decode(ann["segmentation"])
            np.testing.assert_array_equal(decoded, obj.mask)
            assert ann["area"] == obj.area and ann["iscrowd"] == 0


def test_refer_layout_fractions_and_polygons(tmp_path):
    layout = write_refer_layout(tmp_path, splits={"train": 0.5, "val": 0.5}, num_images=4, seed=1,
                                segmentation="polygon", image_format="jpg")
    assert layout.split_images == {"train": 2, "val": 2}
    inst = json.loads(layout.instances_path.read_text())
    scenes = SyntheticScenes(4, seed=1)
    masks = [o.mask for s in scenes for o in s.objects]
    for ann, mask in zip(inst["annotations"], masks):
        assert isinstance(ann["segmentation"], list)
        h, w = mask.shape
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))
        iou = np.logical_and(decoded, mask).sum() / np.logical_or(decoded, mask).sum()
        assert iou > 0.8
    assert all(p.suffix == ".jpg" for p in layout.image_root.iterdir())
    with pytest.raises(ValueError, match="sum to"):
        write_refer_layout(tmp_path / "x", splits={"train": 3}, num_images=4)
