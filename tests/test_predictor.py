"""`detris.Predictor` and ``detris predict``.

References used here, none of them the code under test:
- a by-hand pre/post-processing (letterbox matrix written out, cv2 warps, torch interpolation);
- the masks ``detris eval --save-predictions`` writes;
- pixel arrays decoded independently of `load_image` (16-bit -> high byte, EXIF orientation applied with
  numpy rotations, alpha dropped, PIL's own conversions).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import detris
from detris.cli import main
from detris.data import synthetic
from detris.data.images import ImageLoadError
from detris.predictor import Predictor
from model_fixtures import random_tiny_model

INPUT_SIZE = 112
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
TEXTS = ["the red circle on the left", "a small blue square"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    model = random_tiny_model(INPUT_SIZE)
    # Re-centre the random head on pictures like this file's (smooth images, not noise) so that
    # about half of their pixels are foreground: masks neither empty nor full.
    s = model.config.image_size
    x = torch.from_numpy(np.stack([(scene(s, s, seed=k) / 255.0 - CLIP_MEAN) / CLIP_STD for k in range(2)]))
    x = x.permute(0, 3, 1, 2).float()
    with torch.no_grad():
        logits = model(x, detris.tokenize(TEXTS, context_length=model.config.word_len)).logits
        model.proj.txt.bias[-1] += math.log(0.35 / 0.65) - torch.quantile(logits.flatten(), 0.5).item()
    return model


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def predictor(model) -> Predictor:
    return Predictor(model, device="cpu")


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 picture with blobs (JPEG-friendly, not constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([120 + 80 * np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
    for _ in range(3):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
        img[(yy - cy * h / max(h, w)) ** 2 + (xx - cx * w / max(h, w)) ** 2 < r * r] = rng.integers(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def reference_masks(model, rgb: np.ndarray, texts, threshold=0.35) -> list[np.ndarray]:
    """The official test-time pipeline written out by hand, one expression at a time."""
    s = model.config.image_size
    h, w = rgb.shape[:2]
    scale = min(s / h, s / w)
    nh, nw = h * scale, w * scale
    mat = np.array([[scale, 0, (s - nw) / 2], [0, scale, (s - nh) / 2]], dtype=np.float64)
    border = tuple(float(v) for v in CLIP_MEAN * 255)
    warped = cv2.warpAffine(rgb, mat, (s, s), flags=cv2.INTER_CUBIC, borderValue=border)
    x = torch.from_numpy(((warped / 255.0 - CLIP_MEAN) / CLIP_STD).astype(np.float32)).permute(2, 0, 1)[None]
    inv = cv2.invertAffineTransform(mat)
    out = []
    with torch.no_grad():
        for text in texts:
            tokens = detris.tokenize([text], context_length=model.config.word_len)
            prob = torch.sigmoid(model(x, tokens).logits.float())
            prob = F.interpolate(prob, size=(s, s), mode="bicubic", align_corners=True)[0, 0].numpy()
            back = cv2.warpAffine(prob, inv, (w, h), flags=cv2.INTER_CUBIC, borderValue=0.0)
            out.append(back > threshold)
    return out


def masks_agree(a: np.ndarray, b: np.ndarray, max_fraction: float = 1e-3) -> bool:
    """Equal up to a few boundary pixels (different but valid float orders near the threshold)."""
    return a.shape == b.shape and float(np.mean(a != b)) <= max_fraction


# ------------------------------------------------------------------------------------------ API


def test_predict_matches_hand_written_pipeline(model, predictor):
    rgb = scene(90, 151)  # non-square: the letterbox pads top and bottom
    preds = predictor.predict(rgb, TEXTS)
    refs = reference_masks(model, rgb, TEXTS)
    assert [p.text for p in preds] == TEXTS
    for p, ref in zip(preds, refs):
        assert p.mask.shape == (90, 151) and p.mask.dtype == bool
        assert p.probability.shape == (90, 151) and p.probability.dtype == np.float32
        assert masks_agree(p.mask, ref), float(np.mean(p.mask != ref))
        assert 0 < p.area < p.mask.size  # the biased random model predicts something, not everything
        assert not p.truncated


def test_batched_expressions_equal_one_at_a_time(predictor):
    rgb = scene(120, 80, seed=1)
    texts = TEXTS + ["the green one at the bottom"]
    together = predictor.predict(rgb, texts)
    batched = predictor.predict(rgb, texts, batch_invariant=False)
    for k, text in enumerate(texts):
        alone = predictor.predict(rgb, text)[0]
        # Default: each expression is forwarded alone, so a list gives what each expression alone gives.
        np.testing.assert_array_equal(together[k].probability, alone.probability)
        np.testing.assert_array_equal(together[k].mask, alone.mask)
        # One forward for the list: kernels chosen by the batch size round differently.
        np.testing.assert_allclose(batched[k].probability, alone.probability, atol=1e-5)
        assert masks_agree(batched[k].mask, alone.mask)
    # max_batch splits the list into several forward passes with the same result.
    small = Predictor(predictor.model, device="cpu", max_batch=2).predict(rgb, texts, batch_invariant=False)
    for a, b in zip(batched, small):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)


def test_threshold_and_bf16(predictor, model):
    rgb = scene(64, 64, seed=2)
    p = predictor.predict(rgb, TEXTS[0])[0]
    low = predictor.predict(rgb, TEXTS[0], threshold=0.1)[0]
    assert np.array_equal(low.mask, p.probability > 0.1)
    assert low.area >= p.area
    with pytest.raises(ValueError, match="threshold"):
        predictor.predict(rgb, TEXTS[0], threshold=1.5)
    bf16 = Predictor(model, device="cpu", dtype="bfloat16").predict(rgb, TEXTS[0])[0]
    inter, union = (bf16.mask & p.mask).sum(), (bf16.mask | p.mask).sum()
    assert union > 0 and inter / union > 0.9
    with pytest.raises(ValueError, match="dtype"):
        Predictor(model, dtype="int4")  # not a precision detris offers
    with pytest.raises(TypeError, match="DETRIS"):
        Predictor(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------ awkward images


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def awkward_images(tmp: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the RGB array it should be read as, decoded without `load_image`)."""
    rgb = scene(60, 90, seed=3)
    out = {}

    p = _save(Image.fromarray(rgb).convert("CMYK"), tmp / "cmyk.jpg", quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
        out["cmyk_jpeg"] = (p, np.asarray(im.convert("RGB")))

    grey16 = (np.arange(60 * 90, dtype=np.uint32).reshape(60, 90) * 12).astype(np.uint16)
    p = _save(Image.fromarray(grey16), tmp / "grey16.png")
    with Image.open(p) as im:
        assert im.mode.startswith("I;16")
    out["png_16bit"] = (p, np.repeat((grey16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2))

    rgba = np.dstack([rgb, np.linspace(0, 255, 90, dtype=np.uint8)[None, :].repeat(60, 0)])
    out["rgba_png"] = (_save(Image.fromarray(rgba, "RGBA"), tmp / "rgba.png"), rgb)

    p = _save(Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16), tmp / "palette.png")
    with Image.open(p) as im:
        assert im.mode == "P"
        out["palette_png"] = (p, np.asarray(im.convert("RGB")))

    grey = rgb[:, :, 1].copy()
    out["greyscale_png"] = (_save(Image.fromarray(grey, "L"), tmp / "grey.png"), np.repeat(grey[:, :, None], 3, 2))

    # EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise for display.
    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(Image.fromarray(rgb), tmp / "rotated.jpg", quality=95, exif=exif.tobytes())
    with Image.open(p) as im:
        stored = np.asarray(im.convert("RGB"))  # convert() does not apply EXIF orientation
    out["exif_rotated_jpeg"] = (p, np.ascontiguousarray(np.rot90(stored, k=-1)))

    out["one_pixel"] = (_save(Image.fromarray(rgb[:1, :1]), tmp / "one.png"), rgb[:1, :1])
    return out


def test_awkward_images_give_masks_of_the_original_size(predictor, tmp_path):
    for name, (path, expected_rgb) in awkward_images(tmp_path).items():
        preds = predictor.predict(path, TEXTS)
        h, w = expected_rgb.shape[:2]
        assert [p.mask.shape for p in preds] == [(h, w)] * len(TEXTS), name
        # The file gives the masks of the pixels it should be read as.
        for p, q in zip(preds, predictor.predict(expected_rgb, TEXTS)):
            assert np.array_equal(p.mask, q.mask), name
    # The rotated file is displayed 60 wide and 90 high.
    assert predictor.predict(tmp_path / "rotated.jpg", TEXTS[0])[0].mask.shape == (90, 60)


def test_large_image_and_pil_inputs(predictor, model):
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[1000:2000, 1500:3000] = (200, 30, 30)
    p = predictor.predict(big, TEXTS[0])[0]
    assert p.mask.shape == (3000, 4000)
    ref = reference_masks(model, big, TEXTS[:1])[0]
    assert masks_agree(p.mask, ref)
    pil = Image.fromarray(scene(50, 70)).convert("RGBA")
    assert predictor.predict(pil, TEXTS[0])[0].mask.shape == (50, 70)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("truncated.jpg", None, "truncated"),
        ("empty.png", b"", "empty"),
        ("notes.jpg", b"these are not the pixels you are looking for\n" * 20, "not an image"),
    ],
)
def test_unreadable_images_raise_naming_the_file(predictor, tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        buf = io.BytesIO()
        Image.fromarray(scene(80, 80)).save(buf, format="JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message) as err:
        predictor.predict(path, TEXTS)
    assert name in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        predictor.predict(tmp_path / "missing.png", TEXTS)


# ------------------------------------------------------------------------------------------ awkward texts


def test_awkward_texts(predictor):
    rgb = scene(70, 70, seed=4)
    for bad in ["", "   \t\n"]:
        with pytest.raises(ValueError, match="empty"):
            predictor.predict(rgb, ["the dog", bad])
    with pytest.raises(ValueError, match="no expression"):
        predictor.predict(rgb, [])
    with pytest.raises(TypeError, match="string"):
        predictor.predict(rgb, [3])
    long = " ".join(["the big red ball next to the table"] * 63)[:3000]
    assert len(long.split()) >= 500
    texts = [long, "le chien 🐶 à gauche 😀", "红杯子", "الرجل على اليسار", "человек слева"]
    preds = predictor.predict(rgb, texts)
    assert [p.mask.shape for p in preds] == [(70, 70)] * len(texts)
    assert [p.truncated for p in preds] == [True, False, False, False, False]
    # A cut expression is read as its first word_len - 1 tokens (+ end token), as the official tokenizer does.
    head = " ".join(long.split()[: predictor.word_len - 2])  # one token per word here
    np.testing.assert_allclose(preds[0].probability, predictor.predict(rgb, head)[0].probability, atol=1e-5)
    # Different scripts are different inputs to the model.
    assert not np.allclose(preds[2].probability, preds[3].probability)


# ------------------------------------------------------------------------------------------ equal to eval


def test_predictor_masks_equal_eval_saved_predictions(model_dir, tmp_path):
    lay = synthetic.write_refer_layout(tmp_path / "refer", "refcoco", splits={"train": 1, "val": 3}, seed=5,
                                       image_size=None, max_objects=3, max_expressions=2)
    pred_dir = tmp_path / "pred"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(["eval", "--model", str(model_dir), "--dataset", "refcoco", "--split", "val",
                   "--data-root", str(lay.data_root), "--image-root", str(lay.image_root), "--device", "cpu",
                   "--save-predictions", str(pred_dir)])
    assert rc == 0, err.getvalue()
    records = [json.loads(line) for line in (pred_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(records) >= lay.split_refs["val"] >= 3
    predictor = Predictor.from_pretrained(model_dir, device="cpu")
    foreground = 0
    for rec in records:
        saved = np.asarray(Image.open(pred_dir / rec["mask"])) == 255
        ours = predictor.predict(rec["image"], rec["sentence"])[0].mask
        assert np.array_equal(ours, saved), rec["mask"]
        foreground += int(saved.sum())
    assert foreground > 0


# ------------------------------------------------------------------------------------------ CLI


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_predict_cli_single_image(model, model_dir, tmp_path):
    rgb = scene(75, 100, seed=6)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    rc, out, err = run(["predict", "--model", str(model_dir), "--image", str(tmp_path / "photo.png"),
                        "--text", TEXTS[0], "--text", TEXTS[1], "--out", str(tmp_path / "out"), "--device", "cpu",
                        # The masks are compared with float32 ones; the default (auto) may pick bfloat16.
                        "--dtype", "float32"])
    assert rc == 0, err
    assert "1 image(s) x 2 expression(s)" in out
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    entries = summary["images"][0]["predictions"]
    assert [e["text"] for e in entries] == TEXTS
    refs = reference_masks(model, rgb, TEXTS)
    for i, e in enumerate(entries):
        assert (e["mask"], e["overlay"]) == (f"photo_{i}_mask.png", f"photo_{i}_overlay.png")
        mask = np.asarray(Image.open(tmp_path / "out" / e["mask"]))
        assert mask.shape == (75, 100) and set(np.unique(mask)) <= {0, 255}
        assert masks_agree(mask == 255, refs[i])
        assert e["area"] == int((mask == 255).sum())
        overlay = Image.open(tmp_path / "out" / e["overlay"])
        assert overlay.size == (100, 75) and overlay.mode == "RGB"
        # The overlay tints the mask: it differs from the image there.
        diff = np.abs(np.asarray(overlay, dtype=int) - rgb.astype(int)).sum(-1)
        assert diff[mask == 255].mean() > 5


def test_predict_cli_folder_skips_bad_images(model_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(scene(40, 60)).save(folder / "a.png")
    Image.fromarray(scene(50, 50)).save(folder / "a.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    (folder / "readme.txt").write_text("not picked up")
    rc, out, err = run(["predict", "--model", str(model_dir), "--image", str(folder), "--text", "the thing",
                        "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert sorted(Path(r["image"]).name for r in summary["images"]) == ["a.jpg", "a.png"]
    assert [Path(e["image"]).name for e in summary["errors"]] == ["broken.jpg"]
    assert "broken.jpg" in err
    names = sorted(p.name for p in (tmp_path / "out").glob("*_mask.png"))
    assert names == ["a_jpg_0_mask.png", "a_png_0_mask.png"]


def test_predict_cli_errors(model_dir, tmp_path):
    Image.fromarray(scene(30, 30)).save(tmp_path / "ok.png")
    (tmp_path / "zero.png").write_bytes(b"")
    base = ["predict", "--model", str(model_dir), "--out", str(tmp_path / "out"), "--device", "cpu"]
    rc, _, err = run(base + ["--image", str(tmp_path / "zero.png"), "--text", "x"])
    assert rc == 2 and "zero.png" in err and "empty" in err
    rc, _, err = run(base + ["--image", str(tmp_path / "ok.png"), "--text", "  "])
    assert rc == 2 and "empty" in err
    rc, _, err = run(base + ["--image", str(tmp_path / "nope.png"), "--text", "x"])
    assert rc == 2 and "nope.png" in err
    rc, _, err = run(["predict", "--model", str(tmp_path / "no-model"), "--image", str(tmp_path / "ok.png"),
                      "--text", "x", "--out", str(tmp_path / "o2")])
    assert rc == 2 and "no-model" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = run(["predict", "--model", str(model_dir), "--image", str(tmp_path / "ok.png"), "--text", "x",
                      "--out", str(blocker / "sub")])
    assert rc == 2 and "not writable" in err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_cast_to_low_precision_runs_and_matches_autocast(dtype):
    """``model.to(torch.bfloat16)`` / ``.half()`` (what many users do for inference) runs, and its masks
    agree with bf16 autocast on the float32 model (the trained bundled model: confident masks)."""
    from detris.bundled import DEMO_MODEL_NAME

    autocast = Predictor.from_pretrained(DEMO_MODEL_NAME, dtype="bfloat16")
    cast = Predictor(detris.from_pretrained(DEMO_MODEL_NAME).to(dtype))
    ious = []
    for s in synthetic.SyntheticScenes(4, seed=31, image_size=(112, 112), max_objects=4):
        texts = [o.expressions[0] for o in s.objects]
        for a, b in zip(autocast.predict(s.image, texts), cast.predict(s.image, texts)):
            union = (a.mask | b.mask).sum()
            ious.append(1.0 if union == 0 else (a.mask & b.mask).sum() / union)
    assert np.mean(ious) >= 0.98, ious
