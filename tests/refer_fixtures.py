"""Build a tiny REFER-format data set on disk for the data tests.

The layout is the one users get from the REFER release::

    root/refer/refcoco/{instances.json, refs(unc).p, refs(google).p}
    root/refer/refcoco+/{instances.json, refs(unc).p}
    root/refer/refcocog/{instances.json, refs(umd).p, refs(google).p}
    root/images/train2014/COCO_train2014_%012d.jpg

Ground truth is stated here by hand (polygon areas from the shoelace formula, RLE masks as explicit
arrays), so tests compare the loader against numbers that do not come from the code under test.

Two of the refs files (refcoco unc, refcocog umd) are written the way Python 2 wrote them: protocol 2
with dict keys and most text as Python 2 ``str`` (read back by Python 3 as bytes), one sentence holding
UTF-8 bytes. The others are ordinary Python 3 protocol-2 pickles.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

# image_id -> (height, width): deliberately non-square, portrait and landscape.
IMAGE_SIZES: dict[int, tuple[int, int]] = {
    11: (53, 37),
    12: (80, 120),
    13: (200, 64),
    14: (61, 90),
}

# Polygon annotations: ann_id -> (image_id, polygons, hand-computed area).
POLYGON_ANNS: dict[int, tuple[int, list[list[float]], float]] = {
    201: (11, [[4, 6, 30, 6, 30, 46, 4, 46]], 26 * 40),  # rectangle 26 x 40
    202: (12, [[10, 10, 110, 10, 10, 70]], 0.5 * 100 * 60),  # right triangle
    203: (12, [[60, 40, 100, 40, 100, 75, 60, 75], [2, 72, 20, 72, 20, 79, 2, 79]], 40 * 35 + 18 * 7),
    206: (14, [[10.5, 5.5, 80.5, 5.5, 80.5, 50.5, 10.5, 50.5]], 70 * 45),
}
RLE_ANNS: dict[int, int] = {204: 13, 205: 13}  # ann_id -> image_id (masks built in _rle_truth)

# (ref_id, ann_id, split, sentences) per refs file.
REFS: dict[tuple[str, str], list[tuple[int, int, str, list[str]]]] = {
    ("refcoco", "unc"): [
        (1, 201, "train", ["Left man", "guy on left", "man"]),
        (2, 202, "train", ["the triangle", "big triangle"]),
        (3, 204, "train", ["round thing"]),
        (4, 203, "val", ["café table", "two blocks"]),
        (5, 205, "val", ["  block with hole ", "lower block", "bottom"]),
        (6, 206, "testA", ["wide box", "box"]),
        (7, 201, "testB", ["tall box"]),
    ],
    ("refcoco", "google"): [
        (1, 201, "train", ["left man", "guy"]),
        (2, 202, "train", ["triangle"]),
        (3, 204, "val", ["disk", "round"]),
        (4, 206, "test", ["wide", "box", "wide box"]),
    ],
    ("refcoco+", "unc"): [
        (11, 202, "train", ["pointy", "triangle"]),
        (12, 205, "train", ["holey block"]),
        (13, 203, "val", ["two", "blocks"]),
        (14, 201, "testA", ["tall"]),
        (15, 204, "testB", ["disk", "circle"]),
    ],
    ("refcocog", "umd"): [
        (21, 206, "train", ["a wide box in the middle", "the box"]),
        (22, 204, "train", ["a round disk"]),
        (23, 201, "val", ["a tall rectangle on the left", "rectangle"]),
        (24, 203, "test", ["two blocks", "blocks", "the two blocks at the bottom"]),
    ],
    ("refcocog", "google"): [
        (31, 202, "train", ["a triangle"]),
        (32, 205, "train", ["a block with a hole", "block"]),
        (33, 206, "val", ["wide box", "a box"]),
    ],
}
PY2_STYLE = {("refcoco", "unc"), ("refcocog", "umd")}

# Expected (refs, sentences) per (dataset name, split), counted by hand from REFS above.
EXPECTED_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    "refcoco": {"train": (3, 6), "val": (2, 5), "testA": (1, 2), "testB": (1, 1)},
    "refcoco_google": {"train": (2, 3), "val": (1, 2), "test": (1, 3)},
    "refcoco+": {"train": (2, 3), "val": (1, 2), "testA": (1, 1), "testB": (1, 2)},
    "refcocog_umd": {"train": (2, 3), "val": (1, 2), "test": (1, 3)},
    "refcocog_google": {"train": (2, 3), "val": (1, 2)},
}


@dataclass
class ReferFixture:
    data_root: Path
    image_root: Path
    rle_masks: dict[int, np.ndarray]  # ann_id -> exact uint8 mask
    polygon_areas: dict[int, float]  # ann_id -> hand-computed area
    image_sizes: dict[int, tuple[int, int]] = field(default_factory=lambda: dict(IMAGE_SIZES))

    def image_path(self, image_id: int) -> Path:
        return self.image_root / f"COCO_train2014_{image_id:012d}.jpg"


# ------------------------------------------------------------------------------------ Python 2 pickle


def py2_pickle_dumps(obj: Any) -> bytes:
    """Serialise plain data with the protocol-2 opcodes Python 2's pickler emits.

    ``bytes`` stand for Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), ``str`` for ``unicode``
    (BINUNICODE). Python 3's own protocol-2 pickler cannot produce this: it writes bytes through a
    ``_codecs.encode`` global.
    """
    out = bytearray(b"\x80\x02")

    def put(o: Any) -> None:
        if o is None:
            out.extend(b"N")
        elif o is True:
            out.extend(b"\x88")
        elif o is False:
            out.extend(b"\x89")
        elif isinstance(o, int):
            if 0 <= o < 256:
                out.extend(b"K" + bytes([o]))
            elif 0 <= o < 65536:
                out.extend(b"M" + struct.pack("<H", o))
            elif -(2**31) <= o < 2**31:
                out.extend(b"J" + struct.pack("<i", o))
            else:
                raw = o.to_bytes((o.bit_length() + 8) // 8, "little", signed=True)
                out.extend(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, bytes):
            if len(o) < 256:
                out.extend(b"U" + bytes([len(o)]) + o)
            else:
                out.extend(b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, str):
            enc = o.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(enc)) + enc)
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for x in o:
                    put(x)
                out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for x in o:
                put(x)
            out.extend(b"t")
        elif isinstance(o, dict):
            out.extend(b"}")
            if o:
                out.extend(b"(")
                for k, v in o.items():
                    put(k)
                    put(v)
                out.extend(b"u")
        else:
            raise TypeError(f"py2_pickle_dumps cannot write {type(o).__name__}")

    put(obj)
    out.extend(b".")
    return bytes(out)


def _as_py2(obj: Any, unicode_texts: Sequence[str] = ()) -> Any:
    """Make keys and texts Python 2 ``str`` (bytes); texts listed in ``unicode_texts`` stay unicode."""
    if isinstance(obj, dict):
        return {_as_py2(k, unicode_texts): _as_py2(v, unicode_texts) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_py2(v, unicode_texts) for v in obj]
    if isinstance(obj, str):
        return obj if obj in unicode_texts else obj.encode("utf-8")
    return obj


# ------------------------------------------------------------------------------------------- content


def _rle_truth() -> dict[int, np.ndarray]:
    h, w = IMAGE_SIZES[13]
    yy, xx = np.mgrid[0:h, 0:w]
    disk = ((xx - 32) ** 2 + (yy - 100) ** 2 <= 25**2).astype(np.uint8)
    block = np.zeros((h, w), np.uint8)
    block[150:190, 5:40] = 1
    block[160:170, 10:20] = 0  # a hole, so the RLE has several runs per column
    return {204: disk, 205: block}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE written out by hand: column-major runs, starting with a run of zeros."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    counts: list[int] = []
    current, run = 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _image_pixels(image_id: int) -> np.ndarray:
    h, w = IMAGE_SIZES[image_id]
    rng = np.random.default_rng(image_id)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 255], axis=2)
    noise = rng.normal(0, 12, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _ref_record(ref_id: int, ann_id: int, split: str, sents: list[str], sent_id0: int) -> dict[str, Any]:
    image_id = POLYGON_ANNS[ann_id][0] if ann_id in POLYGON_ANNS else RLE_ANNS[ann_id]
    return {
        "sent_ids": [sent_id0 + k for k in range(len(sents))],
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "ann_id": ann_id,
        "ref_id": ref_id,
        "image_id": image_id,
        "split": split,
        "category_id": 1,
        "sentences": [
            {"tokens": s.lower().split(), "raw": s, "sent_id": sent_id0 + k, "sent": s.lower()}
            for k, s in enumerate(sents)
        ],
    }


def build_refer_fixture(root: Path, empty_sentence: bool = False) -> ReferFixture:
    """Write the fixture under ``root`` and return where things are plus the hand-computed truth.

    ``empty_sentence=True`` makes the second sentence of refcoco (unc) ref 2 whitespace only.
    """
    root = Path(root)
    data_root = root / "refer"
    image_root = root / "images" / "train2014"
    image_root.mkdir(parents=True, exist_ok=True)
    for image_id in IMAGE_SIZES:
        Image.fromarray(_image_pixels(image_id)).save(
            image_root / f"COCO_train2014_{image_id:012d}.jpg", quality=92
        )

    rle_masks = _rle_truth()
    annotations = []
    for ann_id, (image_id, polys, area) in POLYGON_ANNS.items():
        xs = [v for p in polys for v in p[0::2]]
        ys = [v for p in polys for v in p[1::2]]
        annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": area,
            "segmentation": polys, "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
        })
    compressed = coco_mask.encode(np.asfortranarray(rle_masks[204]))
    annotations.append({
        "id": 204, "image_id": 13, "category_id": 1, "iscrowd": 1, "area": float(rle_masks[204].sum()),
        "segmentation": {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")},
        "bbox": [7, 75, 51, 51],
    })
    annotations.append({
        "id": 205, "image_id": 13, "category_id": 1, "iscrowd": 1, "area": float(rle_masks[205].sum()),
        "segmentation": uncompressed_rle(rle_masks[205]), "bbox": [5, 150, 35, 40],
    })
    instances = {
        "images": [
            {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": h, "width": w}
            for i, (h, w) in IMAGE_SIZES.items()
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }

    for (folder, split_by), table in REFS.items():
        d = data_root / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "instances.json").write_text(json.dumps(instances))
        refs = []
        for ref_id, ann_id, split, sents in table:
            sents = list(sents)
            if empty_sentence and (folder, split_by) == ("refcoco", "unc") and ref_id == 2:
                sents[1] = "   "
            refs.append(_ref_record(ref_id, ann_id, split, sents, 100 * ref_id))
        path = d / f"refs({split_by}).p"
        if (folder, split_by) in PY2_STYLE:
            # One sentence stays a Python 2 unicode object, the rest are UTF-8 byte strings.
            path.write_bytes(py2_pickle_dumps(_as_py2(refs, unicode_texts=("two blocks",))))
        else:
            path.write_bytes(pickle.dumps(refs, protocol=2))

    return ReferFixture(
        data_root=data_root,
        image_root=image_root,
        rle_masks=rle_masks,
        polygon_areas={a: v[2] for a, v in POLYGON_ANNS.items()},
    )


def toy_tokenizer(texts: Sequence[str], context_length: int = 17) -> Any:
    """A stand-in tokenizer: ids are character codes + 1 (so the sentence can be read back), 0-padded."""
    import torch

    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, t in enumerate(texts):
        ids = [ord(c) + 1 for c in t][:context_length]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def toy_decode(ids: Any) -> str:
    return "".join(chr(int(i) - 1) for i in ids if int(i) != 0)
