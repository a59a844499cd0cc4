"""Datasets: the official train/val/test protocol, error handling, JSONL input and image loading."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from torch.utils.data import DataLoader

from detris.data import (
    MIXED_DEFAULT,
    ImageLoadError,
    ImageNotFoundError,
    JsonlSegDataset,
    MixedReferDataset,
    ReferSegDataset,
    collate,
    load_image,
    load_refer,
    open_dataset,
)
from refer_fixtures import (
    build_refer_fixture,
    toy_decode,
    toy_tokenizer,
    uncompressed_rle,
)

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_refer_fixture(tmp_path_factory.mktemp("refer"))


@pytest.fixture(scope="module")
def refcoco(fx):
    return load_refer(fx.data_root, "refcoco")


def _ds(refer, fx, split, mode, **kw):
    kw.setdefault("input_size", 64)
    kw.setdefault("tokenizer", toy_tokenizer)
    return ReferSegDataset(refer, split, mode, fx.image_root, **kw)


def _official(image_path: Path, mask01: np.ndarray, size: int):
    """The official utils/dataset.py steps, written out with cv2 (independent of detris.data.transforms)."""
    ori = cv2.imdecode(np.fromfile(str(image_path), np.uint8), cv2.IMREAD_COLOR)
    img = cv2.cvtColor(ori, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = h * scale, w * scale
    bx, by = (size - nw) / 2.0, (size - nh) / 2.0
    src = np.array([[0, 0], [w, 0], [0, h]], np.float32)
    dst = np.array([[bx, by], [nw + bx, by], [bx, nh + by]], np.float32)
    mat = cv2.getAffineTransform(src, dst)
    inv = cv2.getAffineTransform(dst, src)
    img = cv2.warpAffine(img, mat, (size, size), flags=cv2.INTER_CUBIC,
                         borderValue=[MEAN[0] * 255, MEAN[1] * 255, MEAN[2] * 255])
    # The official masks are PNGs of mask * 255, warped as uint8.
    png = cv2.imdecode(cv2.imencode(".png", mask01 * 255)[1], cv2.IMREAD_GRAYSCALE)
    m = cv2.warpAffine(png, mat, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0) / 255.0
    t = torch.from_numpy(img.transpose(2, 0, 1)).float()
    t.div_(255.0).sub_(torch.tensor(MEAN).reshape(3, 1, 1)).div_(torch.tensor(STD).reshape(3, 1, 1))
    return t, torch.from_numpy(m).float(), inv, (h, w)


# ------------------------------------------------------------------------------------------ protocol


@pytest.mark.parametrize("ref_id,split,mode", [(1, "train", "train"), (5, "val", "val"), (6, "testA", "test")])
def test_items_match_the_official_pipeline(fx, refcoco, ref_id, split, mode):
    ds = _ds(refcoco, fx, split, mode, input_size=448)
    index = next(i for i in range(len(ds)) if ds[i]["ref_id"] == ref_id)
    item = ds[index]
    image_id = refcoco.refs[ref_id]["image_id"]
    mask01 = refcoco.get_mask(ref_id)
    img, mask, inv, (h, w) = _official(fx.image_path(image_id), mask01, 448)
    assert item["image"].shape == (3, 448, 448) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"], img, rtol=0, atol=0)
    assert item["mask"].shape == (1, 448, 448)
    torch.testing.assert_close(item["mask"][0], mask, rtol=0, atol=0)
    # The mask keeps bilinear edge values (not re-binarised).
    assert ((item["mask"] > 0) & (item["mask"] < 1)).any()
    np.testing.assert_array_equal(item["letterbox"].inverse, inv)
    assert item["letterbox"].inverse.dtype == np.float64
    assert item["letterbox"].orig_size == (h, w) and item["letterbox"].input_size == (448, 448)
    if mode == "train":
        assert "mask_orig" not in item
    else:
        assert item["mask_orig"].dtype == torch.uint8
        np.testing.assert_array_equal(item["mask_orig"].numpy(), mask01)


def test_val_uses_first_sentence_stripped(fx, refcoco):
    ds = _ds(refcoco, fx, "val", "val")
    assert len(ds) == 2
    got = [(ds[i]["ref_id"], ds[i]["sentence"], ds[i]["sent_id"]) for i in range(len(ds))]
    # Ref 5's first sentence is "  block with hole " in the file; the official code strips it.
    assert got == [(4, "café table", 400), (5, "block with hole", 500)]
    assert toy_decode(ds[1]["tokens"]) == "block with hole"
    assert ds[0]["tokens"].shape == (17,) and ds[0]["tokens"].dtype == torch.long


def test_test_mode_enumerates_every_sentence(fx, refcoco):
    ds = _ds(refcoco, fx, "val", "test")
    got = [(ds[i]["ref_id"], ds[i]["sent_id"], ds[i]["sentence"]) for i in range(len(ds))]
    assert got == [
        (4, 400, "café table"), (4, 401, "two blocks"),
        (5, 500, "block with hole"), (5, 501, "lower block"), (5, 502, "bottom"),
    ]
    assert ds.num_refs == 2 and ds.num_expressions == 5
    # Default mode of a non-train split is test.
    assert len(ReferSegDataset(refcoco, "val", image_root=fx.image_root, tokenizer=toy_tokenizer)) == 5


def test_train_sampling_is_reproducible_and_varies_by_epoch(fx, refcoco):
    a = _ds(refcoco, fx, "train", "train", seed=3)
    b = _ds(refcoco, fx, "train", "train", seed=3)
    assert len(a) == 3  # one item per ref
    sents_of_ref1 = {s["sent"] for s in refcoco.refs[1]["sentences"]}

    def draws(ds, epochs):
        out = []
        for e in epochs:
            ds.set_epoch(e)
            out.append(tuple(ds[i]["sentence"] for i in range(len(ds))))
        return out

    seq_a = draws(a, range(12))
    assert seq_a == draws(b, range(12))  # same seed -> same draws
    assert draws(a, [5]) == [seq_a[5]]  # revisiting an epoch repeats it
    assert len(set(seq_a)) > 1  # the draw changes with the epoch
    ref1 = {epoch[0] for epoch in seq_a}
    assert ref1 <= sents_of_ref1 and len(ref1) >= 2
    assert all(epoch[2] == "round thing" for epoch in seq_a)  # a one-sentence ref always gives it
    c = _ds(refcoco, fx, "train", "train", seed=4)
    assert draws(c, range(12)) != seq_a
    # The tokens are those of the drawn sentence.
    a.set_epoch(7)
    item = a[0]
    assert toy_decode(item["tokens"]) == item["sentence"]


def test_default_tokenizer_is_detris_tokenize(fx, refcoco):
    from detris.tokenizer import tokenize

    ds = ReferSegDataset(refcoco, "val", "val", fx.image_root, input_size=32, word_len=5)
    item = ds[0]
    assert torch.equal(item["tokens"], tokenize(["café table"], context_length=5)[0])


def test_collate_and_dataloader(fx, refcoco):
    ds = _ds(refcoco, fx, "val", "test")
    loader = DataLoader(ds, batch_size=4, collate_fn=collate)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [4, 1]
    b = batches[0]
    assert b["image"].shape == (4, 3, 64, 64) and b["tokens"].shape == (4, 17)
    assert b["mask"].shape == (4, 1, 64, 64) and len(b["letterbox"]) == 4
    assert [box.orig_size for box in b["letterbox"]] == [(80, 120), (80, 120), (200, 64), (200, 64)]
    # Original-size masks differ in size, so they stay a list.
    assert [tuple(m.shape) for m in b["mask_orig"]] == [(80, 120), (80, 120), (200, 64), (200, 64)]
    assert b["ref_id"] == [4, 4, 5, 5] and b["skipped"] == []


def test_mixed_dataset(fx):
    train = open_dataset("mixed", fx.data_root, "train", "train", fx.image_root, input_size=32,
                         tokenizer=toy_tokenizer)
    # refcoco unc train (3) + refcoco+ unc train (2) + refcocog umd train (2), in that order.
    assert len(train) == 7 and train.mode == "train"
    assert [train[i]["dataset"] for i in range(7)] == ["refcoco"] * 3 + ["refcoco+"] * 2 + ["refcocog_umd"] * 2
    assert [train[i]["ref_id"] for i in range(7)] == [1, 2, 3, 11, 12, 21, 22]
    val = MixedReferDataset([load_refer(fx.data_root, n) for n in MIXED_DEFAULT], "val", image_root=fx.image_root,
                            input_size=32, tokenizer=toy_tokenizer)
    # The three val splits, first sentence each (what the official mixed config validates on).
    assert val.mode == "val"
    assert [(val[i]["ref_id"], val[i]["sentence"]) for i in range(len(val))] == [
        (4, "café table"), (5, "block with hole"), (13, "two"), (23, "a tall rectangle on the left")]
    seqs = []
    for e in range(10):
        train.set_epoch(e)
        seqs.append(tuple(train[i]["sentence"] for i in range(7)))
    assert len(set(seqs)) > 1


# ---------------------------------------------------------------------------------------- errors


def test_empty_sentence_is_named(tmp_path):
    fx = build_refer_fixture(tmp_path, empty_sentence=True)
    refer = load_refer(fx.data_root, "refcoco")
    with pytest.raises(ValueError) as err:
        _ds(refer, fx, "train", "train")
    msg = str(err.value)
    assert "ref_id=2" in msg and "sent_id=201" in msg and "empty" in msg
    ds = _ds(refer, fx, "train", "train", empty_sentences="drop")
    assert ds.dropped_sentences == [(2, 201)]
    assert ds.num_expressions == 5
    # Splits without the empty sentence are unaffected.
    assert len(_ds(refer, fx, "val", "test")) == 5


def test_unknown_split_and_mode(fx, refcoco):
    with pytest.raises(ValueError, match="available"):
        _ds(refcoco, fx, "testC", "test")
    with pytest.raises(ValueError, match="mode"):
        _ds(refcoco, fx, "val", "eval")


def test_corrupt_image_raises_or_is_skipped(tmp_path):
    fx = build_refer_fixture(tmp_path)
    bad = fx.image_path(12)  # used by refs 2 (train) and 4 (val)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated JPEG
    refer = load_refer(fx.data_root, "refcoco")
    ds = _ds(refer, fx, "val", "test")
    with pytest.raises(ImageLoadError) as err:
        ds[0]
    assert str(bad) in str(err.value)

    ds = _ds(refer, fx, "val", "test", skip_bad=True)
    first = ds[0]
    assert "image" not in first and first["skipped"] == str(bad)
    assert ds.skipped == [str(bad)]
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate))
    assert batches[0] is None  # both items of the first batch use the bad image
    assert batches[1]["ref_id"] == [5, 5] and batches[1]["skipped"] == []
    assert batches[2]["ref_id"] == [5] and batches[2]["skipped"] == []
    mixed = collate([ds[1], ds[2]])
    assert mixed["ref_id"] == [5] and mixed["skipped"] == [str(bad)]
    assert collate([None, ds[3]])["ref_id"] == [5]


def test_missing_image_and_size_mismatch(tmp_path):
    fx = build_refer_fixture(tmp_path)
    fx.image_path(11).unlink()
    # Image 14 replaced by a picture of another size: the annotation cannot be trusted on it.
    Image.new("RGB", (61, 90)).save(fx.image_path(14))
    refer = load_refer(fx.data_root, "refcoco")
    ds = _ds(refer, fx, "testB", "test")  # ref 7 -> image 11
    with pytest.raises(ImageNotFoundError, match="COCO_train2014_000000000011.jpg"):
        ds[0]
    ds = _ds(refer, fx, "testA", "test")  # ref 6 -> image 14
    with pytest.raises(ImageLoadError, match="90x61.*61x90"):
        ds[0]


# ------------------------------------------------------------------------------------------ JSONL


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture()
def jsonl_data(tmp_path):
    root = tmp_path / "custom"
    (root / "img").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(root / "img" / "a.png")
    Image.fromarray(rng.integers(0, 255, (90, 30, 3), dtype=np.uint8)).save(tmp_path / "b_abs.png")
    png_mask = np.zeros((40, 70), np.uint8)
    png_mask[5:25, 10:50] = 255
    Image.fromarray(png_mask).save(root / "masks" / "a.png")
    rle_truth = np.zeros((90, 30), np.uint8)
    rle_truth[30:60, 3:27] = 1
    rle_truth[40:45, 10:12] = 0
    enc = coco_mask.encode(np.asfortranarray(rle_truth))
    lines = [
        {"image": "img/a.png", "sentence": "the block", "mask": "masks/a.png", "id": "a-block"},
        "",
        "# a comment",
        {"image": "img/a.png", "sentences": ["left triangle", "triangle"], "polygon": [[0, 0, 30, 0, 0, 20]]},
        {"image": str(tmp_path / "b_abs.png"), "sentence": "tall thing",
         "rle": {"size": [90, 30], "counts": enc["counts"].decode()}},
        {"image": str(tmp_path / "b_abs.png"), "sentence": "tall thing again", "rle": uncompressed_rle(rle_truth)},
    ]
    return _write_jsonl(root / "data.jsonl", lines), png_mask, rle_truth


def test_jsonl_three_mask_kinds(jsonl_data):
    path, png_mask, rle_truth = jsonl_data
    ds = JsonlSegDataset(path, mode="test", input_size=48, tokenizer=toy_tokenizer)
    assert len(ds) == 5 and ds.num_refs == 4
    items = [ds[i] for i in range(len(ds))]
    assert [(it["ref_id"], it["sent_id"], it["sentence"]) for it in items] == [
        ("a-block", 0, "the block"), (4, 0, "left triangle"), (4, 1, "triangle"),
        (5, 0, "tall thing"), (6, 0, "tall thing again")]
    np.testing.assert_array_equal(items[0]["mask_orig"].numpy(), (png_mask > 0).astype(np.uint8))
    tri_area = items[1]["mask_orig"].sum().item()
    assert abs(tri_area - 0.5 * 30 * 20) <= 0.05 * 300  # small triangle: rasterisation edge effects
    assert items[1]["mask_orig"].shape == (40, 70)
    np.testing.assert_array_equal(items[3]["mask_orig"].numpy(), rle_truth)
    np.testing.assert_array_equal(items[4]["mask_orig"].numpy(), rle_truth)
    assert items[3]["letterbox"].orig_size == (90, 30)
    assert items[0]["image"].shape == (3, 48, 48) and items[0]["mask"].shape == (1, 48, 48)
    val = JsonlSegDataset(path, mode="val", input_size=48, tokenizer=toy_tokenizer)
    assert [val[i]["sentence"] for i in range(len(val))] == ["the block", "left triangle", "tall thing",
                                                              "tall thing again"]


def test_jsonl_image_root(jsonl_data, tmp_path):
    path, _, _ = jsonl_data
    moved = tmp_path / "elsewhere"
    (moved / "img").mkdir(parents=True)
    (path.parent / "img" / "a.png").rename(moved / "img" / "a.png")
    ds = JsonlSegDataset(path, image_root=moved, mode="test", input_size=32, tokenizer=toy_tokenizer)
    assert ds[0]["image_path"] == str(moved / "img" / "a.png")
    assert ds[0]["mask_orig"].sum() == 20 * 40  # the mask is still found next to the JSONL file


@pytest.mark.parametrize(
    "bad,pattern",
    [
        ('{"image": "a.png", "sentence": "x", "mask": "m.png"', "not valid JSON"),
        ({"image": "a.png", "sentence": "x"}, "exactly one of 'mask', 'polygon' or 'rle'"),
        ({"image": "a.png", "sentence": "x", "mask": "m.png", "polygon": [[0, 0, 1, 0, 1, 1]]}, "exactly one"),
        ({"image": "a.png", "sentence": "   ", "mask": "m.png"}, "empty sentence"),
        ({"image": "a.png", "mask": "m.png"}, "'sentence'"),
        ({"image": "a.png", "sentence": "x", "polygon": [[0, 0, 1, 0, 1]]}, "polygon"),
        ({"image": "a.png", "sentence": "x", "rle": {"size": [2, 2], "counts": [1, 2]}}, "sum to 3"),
        ({"sentence": "x", "mask": "m.png"}, "'image'"),
        ({"image": "a.png", "sentence": "x", "mask": "m.png", "colour": 1}, "unknown field"),
        ('[1, 2]', "JSON object"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, bad, pattern):
    good = {"image": "a.png", "sentence": "fine", "mask": "m.png"}
    path = _write_jsonl(tmp_path / "x.jsonl", [good, good, bad])
    with pytest.raises(ValueError, match=pattern) as err:
        JsonlSegDataset(path, tokenizer=toy_tokenizer)
    assert "x.jsonl:3:" in str(err.value)


def test_jsonl_missing_file_and_bad_image(tmp_path, jsonl_data):
    with pytest.raises(FileNotFoundError):
        JsonlSegDataset(tmp_path / "none.jsonl", tokenizer=toy_tokenizer)
    path, _, _ = jsonl_data
    (path.parent / "img" / "a.png").write_bytes(b"")
    ds = JsonlSegDataset(path, mode="val", input_size=32, tokenizer=toy_tokenizer, skip_bad=True)
    assert "skipped" in ds[0] and ds[2]["sentence"] == "tall thing"
    assert ds.skipped == [str(path.parent / "img" / "a.png")]


# ------------------------------------------------------------------------------------- image modes


def _rgb_reference(h=20, w=30):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 8, yy * 12, np.full_like(xx, 90)], axis=2).astype(np.uint8)


def test_rgb_jpeg_decodes_like_opencv(fx):
    # The official code decodes with cv2.imdecode; our PIL path must give the same pixels.
    path = fx.image_path(12)
    ref = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(load_image(path), ref)
    np.testing.assert_array_equal(load_image(Image.open(path)), ref)


def test_mode_l_la_rgba_palette(tmp_path):
    grey = np.arange(600, dtype=np.uint32).reshape(20, 30).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))

    Image.fromarray(np.stack([grey, 255 - grey], axis=2), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png"), np.repeat(grey[:, :, None], 3, axis=2))

    rgb = _rgb_reference()
    alpha = np.zeros((20, 30), np.uint8)  # fully transparent: the colour must survive (alpha dropped)
    alpha[:, 15:] = 255
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)
    np.testing.assert_array_equal(load_image(np.dstack([rgb, alpha])), rgb)

    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 12)
    idx = (np.arange(600).reshape(20, 30) % 4).astype(np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(palette)
    p.save(tmp_path / "p.png")
    table = np.array(palette, np.uint8).reshape(256, 3)
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), table[idx])


def test_mode_cmyk_jpeg(tmp_path):
    rgb = np.zeros((24, 36, 3), np.uint8)
    rgb[:, :12] = (200, 30, 30)
    rgb[:, 12:24] = (30, 200, 30)
    rgb[:, 24:] = (30, 30, 200)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg")
    assert out.shape == (24, 36, 3) and out.dtype == np.uint8
    # JPEG is lossy; compare block centres.
    for x, colour in ((6, (200, 30, 30)), (18, (30, 200, 30)), (30, (30, 30, 200))):
        assert np.abs(out[12, x].astype(int) - np.array(colour)).max() <= 12


def test_mode_16bit_png_matches_opencv(tmp_path):
    vals = np.array([[0, 255, 256, 383, 384, 33023, 65535, 65407, 65408, 1000]], np.uint16).repeat(3, axis=0)
    cv2.imwrite(str(tmp_path / "g16.png"), vals)
    out = load_image(tmp_path / "g16.png")
    expected_row = np.array([0, 0, 1, 1, 1, 128, 255, 255, 255, 3], np.uint8)  # high byte, by hand
    assert out.shape == (3, 10, 3)
    np.testing.assert_array_equal(out[0, :, 0], expected_row)
    np.testing.assert_array_equal(out, cv2.imread(str(tmp_path / "g16.png"), cv2.IMREAD_COLOR)[:, :, ::-1])
    np.testing.assert_array_equal(load_image(vals)[0, :, 1], expected_row)


def test_mode_float_and_bool_arrays():
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert load_image(f)[0, :, 0].tolist() == [0, 128, 255]
    assert load_image(Image.fromarray(f, "F"))[0, :, 0].tolist() == [0, 128, 255]
    assert load_image(np.array([[0.0, 128.0, 300.0]]))[0, :, 0].tolist() == [0, 128, 255]
    assert load_image(np.array([[True, False]]))[0, :, 2].tolist() == [255, 0]
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def test_exif_rotated_jpeg(tmp_path):
    # Stored 30 wide x 20 high, red block at the stored top-left; orientation 6 = rotate 90 deg clockwise
    # to display, so the displayed image is 20 wide x 30 high with the block at the top-right.
    stored = np.full((20, 30, 3), 40, np.uint8)
    stored[:6, :8] = (250, 10, 10)
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (30, 20, 3)
    assert out[2, 17, 0] > 200 and out[2, 17, 1] < 60  # top-right is red
    assert out[2, 2, 0] < 80 and out[27, 2, 0] < 80 and out[27, 17, 0] < 80
    # OpenCV's IMREAD_COLOR (what the official code uses) applies the same rotation.
    ref = cv2.cvtColor(cv2.imread(str(tmp_path / "rot.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_bad_files_raise_image_load_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(_rgb_reference(64, 64)).save(buf, format="JPEG")
        content = buf.getvalue()[:300]
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_file_is_both_error_kinds(tmp_path):
    with pytest.raises(ImageNotFoundError) as err:
        load_image(tmp_path / "nope.png")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ImageLoadError)
    assert "nope.png" in str(err.value)
    with pytest.raises(TypeError):
        load_image(12)  # type: ignore[arg-type]
