"""The gRefCOCO reader on layouts the test writes: JSON and pickle refs, int and list ann ids, [-1],
union masks (checked against masks drawn here), crowd annotations, and one clear error per bad file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detris.data.grefer import GReferAnnotations

H, W = 20, 30


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


MASKS = {1: _box(0, 5, 0, 5), 2: _box(10, 15, 10, 20), 3: _box(2, 8, 20, 28)}


def _sent(i: int, text: str) -> dict:
    return {"sent_id": i, "raw": text, "sent": text, "tokens": text.split()}


REFS = [
    {"ref_id": 0, "image_id": 1, "split": "val", "ann_id": 1, "category_id": 1,
     "sentences": [_sent(0, "the left box")]},
    {"ref_id": 1, "image_id": 1, "split": "val", "ann_id": [1, 2], "category_id": [1, 1],
     "sentences": [_sent(1, "both boxes"), _sent(2, "the two boxes")]},
    {"ref_id": 2, "image_id": 1, "split": "val", "ann_id": [-1], "category_id": [-1],
     "sentences": [_sent(3, "the purple star")]},
    {"ref_id": 3, "image_id": 1, "split": "testA", "ann_id": [2, 3], "category_id": [1, 2],
     "sentences": [_sent(4, "the box and the crowd")]},
]


def write_layout(root: Path, refs: list = REFS, as_pickle: bool = False, instances: object = None) -> Path:
    folder = root / "grefcoco"
    folder.mkdir(parents=True)
    anns = [{"id": i, "image_id": 1, "category_id": 1, "segmentation": _rle(m), "area": float(m.sum()),
             "bbox": [0, 0, 1, 1], "iscrowd": int(i == 3)} for i, m in MASKS.items()]
    inst = instances if instances is not None else {
        "images": [{"id": 1, "file_name": "img.jpg", "height": H, "width": W}], "annotations": anns,
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "crowd"}]}
    (folder / "instances.json").write_text(inst if isinstance(inst, str) else json.dumps(inst))
    if as_pickle:
        (folder / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    else:
        (folder / "grefs(unc).json").write_text(json.dumps(refs))
    return root


@pytest.mark.parametrize("as_pickle", [False, True], ids=["json", "pickle"])
def test_targets_unions_and_no_target(tmp_path, as_pickle):
    ds = GReferAnnotations(write_layout(tmp_path, as_pickle=as_pickle))
    assert np.array_equal(ds.get_mask(0), MASKS[1])  # an int ann_id
    assert np.array_equal(ds.get_mask(1), MASKS[1] | MASKS[2])  # the union of two targets
    assert ds.is_no_target(2) and not ds.get_mask(2).any() and ds.get_mask(2).shape == (H, W)
    assert np.array_equal(ds.get_mask(3), MASKS[2])  # the crowd annotation (3) is never a target
    assert [(rid, s["sent_id"]) for rid, s in ds.samples("val")] == [(0, 0), (1, 1), (1, 2), (2, 3)]
    assert ds.ref_ids("testA") == [3]


@pytest.mark.parametrize(("change", "words"), [
    (lambda refs: refs[1].update(ann_id=[1, 99]), ["ref_id 1", "99"]),
    (lambda refs: refs[2].update(sentences=[]), ["ref_id 2", "no sentences"]),
    (lambda refs: refs[0].update(ann_id="one"), ["ref_id 0", "ann_id"]),
])
def test_bad_refs_are_named(tmp_path, change, words):
    refs = json.loads(json.dumps(REFS))
    change(refs)
    with pytest.raises(ValueError) as err:
        GReferAnnotations(write_layout(tmp_path, refs))
    assert "grefs(unc).json" in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_malformed_json_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"instances\.json: not valid JSON"):
        GReferAnnotations(write_layout(tmp_path / "a", instances="{not json"))
    root = write_layout(tmp_path / "b")
    (root / "grefcoco" / "grefs(unc).json").write_text("[{")
    with pytest.raises(ValueError, match=r"grefs\(unc\)\.json: not valid JSON"):
        GReferAnnotations(root)
    (root / "grefcoco" / "grefs(unc).json").unlink()
    with pytest.raises(FileNotFoundError, match=r"grefs\(unc\)"):
        GReferAnnotations(root)
    with pytest.raises(ValueError, match="no split 'testB'"):
        GReferAnnotations(write_layout(tmp_path / "c")).ref_ids("testB")
