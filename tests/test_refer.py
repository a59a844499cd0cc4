"""REFER reading: layout, splits, Python 2 pickles, the safe unpickler and the masks."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from detris.data.coco import segmentation_to_mask
from detris.data.refer import ReferAnnotations, load_refer
from detris.data.safe_pickle import UnsafePickleError, safe_load_pickle
from refer_fixtures import EXPECTED_COUNTS, IMAGE_SIZES, POLYGON_ANNS, build_refer_fixture, uncompressed_rle


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_refer_fixture(tmp_path_factory.mktemp("refer"))


# ----------------------------------------------------------------------------------- splits, counts


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_split_ref_and_expression_counts(fx, name):
    refer = load_refer(fx.data_root, name)
    expected = EXPECTED_COUNTS[name]
    for split, (n_refs, n_sents) in expected.items():
        ids = refer.ref_ids(split)
        assert len(ids) == n_refs, (name, split)
        assert sum(len(refer.sentences(r)) for r in ids) == n_sents, (name, split)
    # Every split of the file is one of the expected ones, and they partition the refs.
    assert sum(len(refer.ref_ids(s)) for s in expected) == len(refer)


@pytest.mark.parametrize(
    "name,split_by",
    [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog_umd", "umd"), ("refcocog_google", "google"),
     ("refcoco_google", "google")],
)
def test_default_split_by(fx, name, split_by):
    refer = load_refer(fx.data_root, name)
    assert refer.split_by == split_by
    assert refer.refs_path.name == f"refs({split_by}).p"


def test_split_by_override_and_invalid(fx):
    assert len(load_refer(fx.data_root, "refcoco", split_by="google")) == 4
    with pytest.raises(ValueError, match="split-by"):
        load_refer(fx.data_root, "refcoco+", split_by="google")
    with pytest.raises(ValueError, match="refcocog_umd"):
        load_refer(fx.data_root, "refclef")


def test_official_test_split_rule(fx):
    # As in the official REFER API, 'test' on a testA/testB dataset selects both.
    refer = load_refer(fx.data_root, "refcoco")
    assert sorted(refer.ref_ids("test")) == [6, 7]
    assert refer.ref_ids("testA") == [6]
    assert refer.ref_ids(None) == [1, 2, 3, 4, 5, 6, 7]


def test_unknown_split_lists_available(fx):
    refer = load_refer(fx.data_root, "refcoco")
    with pytest.raises(ValueError) as err:
        refer.ref_ids("testC")
    msg = str(err.value)
    assert "'testC'" in msg
    for s in ("train", "val", "testA", "testB"):
        assert s in msg
    with pytest.raises(ValueError, match="available"):
        load_refer(fx.data_root, "refcocog_google").ref_ids("test")


# ------------------------------------------------------------------------------------ py2 pickles


def test_python2_pickle_bytes_keys_and_utf8(fx):
    raw = (fx.data_root / "refcoco" / "refs(unc).p").read_bytes()
    # The file really is Python-2 style: plain pickle.load with default ASCII decoding chokes on it.
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    refer = load_refer(fx.data_root, "refcoco")
    ref = refer.refs[4]
    assert all(isinstance(k, str) for k in ref)
    assert ref["split"] == "val"
    assert [s["sent"] for s in ref["sentences"]] == ["café table", "two blocks"]
    assert ref["sentences"][0]["tokens"] == ["café", "table"]
    assert ref["sentences"][0]["sent_id"] == 400


def test_python3_pickle(fx):
    refer = load_refer(fx.data_root, "refcoco+")
    assert refer.refs[13]["sentences"][1]["sent"] == "blocks"


# --------------------------------------------------------------------------------- safe unpickling


class _Payload:
    """Unpickling this calls exec(), which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_payload_is_live_under_plain_pickle(tmp_path):
    # Control: the same kind of file really does run code when loaded naively, so the refusal
    # tested below is what keeps the marker away.
    marker = tmp_path / "control_marker"
    blob = pickle.dumps([{"ref_id": 1, "x": _Payload(marker)}], protocol=2)
    pickle.loads(blob)
    assert marker.exists()


@pytest.mark.parametrize("payload_cls", [_Payload, _SystemPayload])
def test_malicious_refs_pickle_is_refused(tmp_path, payload_cls):
    fx = build_refer_fixture(tmp_path / "data")
    marker = tmp_path / "marker"
    refs = [{"ref_id": 1, "ann_id": 201, "image_id": 11, "split": "train", "sentences": [],
             "evil": payload_cls(marker)}]
    target = fx.data_root / "refcoco" / "refs(unc).p"
    target.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        load_refer(fx.data_root, "refcoco")
    msg = str(err.value)
    assert "refs(unc).p" in msg and "refusing" in msg
    assert isinstance(err.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_garbage_pickle_is_a_clear_error(tmp_path):
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        safe_load_pickle(bad)


def test_refs_file_must_be_a_list_of_dicts(tmp_path):
    fx = build_refer_fixture(tmp_path)
    (fx.data_root / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="list of ref dicts"):
        load_refer(fx.data_root, "refcoco+")


# ---------------------------------------------------------------------------------- missing files


def test_missing_refs_file_shows_layout(tmp_path):
    fx = build_refer_fixture(tmp_path)
    missing = fx.data_root / "refcocog" / "refs(google).p"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_refer(fx.data_root, "refcocog_google")
    msg = str(err.value)
    assert str(missing) in msg
    # The expected tree is part of the message.
    for part in ("refcoco/", "refcoco+/", "refcocog/", "instances.json", "refs(umd).p", "refs(unc).p"):
        assert part in msg
    # The other split-by of the same folder still loads.
    assert len(load_refer(fx.data_root, "refcocog_umd")) == 4


def test_missing_instances_and_root(tmp_path):
    fx = build_refer_fixture(tmp_path)
    (fx.data_root / "refcoco+" / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances\.json") as err:
        load_refer(fx.data_root, "refcoco+")
    assert "refs(google).p" in str(err.value)  # layout shown
    with pytest.raises(FileNotFoundError, match="DATA_ROOT"):
        load_refer(tmp_path / "nowhere", "refcoco")


# ------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("ann_id", sorted(POLYGON_ANNS))
def test_polygon_mask_area_matches_hand_computed(fx, ann_id):
    refer = load_refer(fx.data_root, "refcoco")
    ref_id = next(r for r, ref in refer.refs.items() if ref["ann_id"] == ann_id)
    mask = refer.get_mask(ref_id)
    image_id = POLYGON_ANNS[ann_id][0]
    assert mask.shape == IMAGE_SIZES[image_id]  # original resolution (H, W)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 1}
    area = fx.polygon_areas[ann_id]
    assert abs(int(mask.sum()) - area) <= 0.02 * area
    # Foreground stays inside the polygons' bounding box (with one pixel of rasterisation slack).
    polys = POLYGON_ANNS[ann_id][1]
    xs = [v for p in polys for v in p[0::2]]
    ys = [v for p in polys for v in p[1::2]]
    yy, xx = np.nonzero(mask)
    assert xx.min() >= min(xs) - 1 and xx.max() <= max(xs) + 1
    assert yy.min() >= min(ys) - 1 and yy.max() <= max(ys) + 1


def test_two_polygons_are_united(fx):
    refer = load_refer(fx.data_root, "refcoco")
    mask = refer.get_mask(4)  # ann 203: a 40x35 block and an 18x7 strip, disjoint
    assert mask[50, 80] == 1 and mask[75, 10] == 1 and mask[20, 20] == 0


@pytest.mark.parametrize("ann_id,ref_id", [(204, 3), (205, 5)])  # compressed, uncompressed RLE
def test_rle_masks_exact(fx, ann_id, ref_id):
    refer = load_refer(fx.data_root, "refcoco")
    assert refer.refs[ref_id]["ann_id"] == ann_id
    np.testing.assert_array_equal(refer.get_mask(ref_id), fx.rle_masks[ann_id])


def test_segmentation_to_mask_forms_and_errors():
    truth = np.zeros((7, 9), np.uint8)
    truth[2:5, 3:8] = 1
    np.testing.assert_array_equal(segmentation_to_mask(uncompressed_rle(truth), 7, 9), truth)
    with pytest.raises(ValueError, match="does not match"):
        segmentation_to_mask(uncompressed_rle(truth), 9, 7)
    with pytest.raises(ValueError, match="even number"):
        segmentation_to_mask([[1, 1, 5, 1, 5]], 7, 9)
    # Degenerate polygons are dropped when not strict (COCO has a few), leaving the real one.
    m = segmentation_to_mask([[1, 1, 2, 2], [3, 2, 8, 2, 8, 5, 3, 5]], 7, 9, strict=False)
    assert m.sum() == 15


def test_repr_and_class(fx):
    refer = load_refer(fx.data_root, "refcocog_umd")
    assert isinstance(refer, ReferAnnotations)
    assert "refcocog_umd" in repr(refer) and "umd" in repr(refer)
    assert refer.image_path(21, fx.image_root) == fx.image_path(14)
