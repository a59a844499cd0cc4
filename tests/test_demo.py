"""The synthetic demo: overlays are written with the scene's size; the short demo learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detris.visualize import overlay_mask, render_overlay, render_readable


def test_overlay_keeps_size_and_tints_mask():
    img = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    out = overlay_mask(img, mask, outline=mask)
    assert out.shape == img.shape
    assert (out[15, 20] != 100).any() and (out[35, 55] == 100).all()
    pil = render_overlay(img, mask, "the red circle on the left", true_mask=mask)
    assert pil.size == (60, 40)


def test_readable_overlay_is_enlarged_and_captioned_outside_the_scene():
    """The demo's overlays: at least 336 px on the smaller side, the scene's pixels all visible (the
    caption sits in a band above them), each scene pixel a sharp k x k block."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    mask = np.zeros((112, 112), bool)
    pil = render_readable(img, mask, "the small shape to the right of the circle")
    arr = np.asarray(pil)
    band = arr.shape[0] - 3 * 112
    assert arr.shape[1] == 336 and band > 0
    # An empty mask tints nothing: below the band lies the scene itself, enlarged 3x by repetition.
    np.testing.assert_array_equal(arr[band:], np.repeat(np.repeat(img, 3, axis=0), 3, axis=1))
    assert (arr[:band] != arr[band:band + 1]).any()  # the caption band is not the scene
    tall = render_readable(np.zeros((400, 500, 3), np.uint8), np.zeros((400, 500), bool), "x")
    assert tall.width == 500  # large images are not enlarged


def test_overlay_rejects_wrong_mask_size():
    with pytest.raises(ValueError, match="shape"):
        overlay_mask(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 5), bool))


@pytest.mark.slow
def test_quick_demo_trains_and_writes_overlays(tmp_path):
    """The short demo learns: the loss falls and the validation mIoU beats both trivial answers.

    The trivial answers are the empty mask (mIoU 0) and the whole image (mIoU = the mean share of the
    image the referred object covers); a model that ignored the image or the expression would not do
    better than the second. Overlays with the scene's size, metrics.json and the curve exist.
    """
    pytest.importorskip("yaml")
    import json

    from detris.demo import run_demo

    result = run_demo(out_dir=tmp_path, seed=0, minutes=2.0, quick=True)
    assert result["loss_last"] < result["loss_first"]
    overlays = sorted(tmp_path.glob("overlay_*.png"))
    assert overlays
    width, height = Image.open(overlays[0]).size  # the quick scenes are 64 x 64, enlarged 6x, caption above
    assert width == 384 and height > 384
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"test", "val", "last_val", "baselines", "steps"} <= set(metrics)
    miou, baselines = metrics["last_val"]["mIoU"], metrics["baselines"]
    assert miou > baselines["empty_mask_mIoU"]
    assert miou > baselines["whole_image_mIoU"], (miou, baselines)
    assert (tmp_path / "curves.png").is_file()
    assert (tmp_path / "best" / "model.safetensors").is_file()
    _check_held_out_score(tmp_path, metrics["test"])


def _check_held_out_score(run: Path, test: dict) -> None:
    """The held-out score is the official test protocol over every sentence of the scenes after the
    validation ones, recomputed here from the generator's own masks (no files, no RLE) through the
    Predictor: mIoU = mean of I / (U + 1e-6), oIoU = sum I / sum U, Pr@t = share of IoU > t."""
    from detris.data.synthetic import SyntheticScenes
    from detris.demo import demo_settings
    from detris.predictor import Predictor

    s = demo_settings(quick=True)["data"]["synthetic"]
    first = s["train_images"] + s["val_images"]
    scenes = SyntheticScenes(first + s["test_images"], seed=0, image_size=tuple(s["image_size"]),
                             max_objects=s["max_objects"])
    predictor = Predictor.from_pretrained(run / "best", device="cpu", dtype="float32")
    inter, union = [], []
    for index in range(first, first + s["test_images"]):
        scene = scenes[index]
        for obj in scene.objects:
            for pred in predictor.predict(scene.image, list(obj.expressions)):
                truth = obj.mask.astype(bool)
                inter.append(float((pred.mask & truth).sum()))
                union.append(float((pred.mask | truth).sum()))
    ious = np.array(inter) / (np.array(union) + 1e-6)
    assert test["scenes"] == s["test_images"]
    assert test["expressions"] == len(ious)
    assert test["mIoU"] == pytest.approx(ious.mean(), abs=2e-3)
    assert test["oIoU"] == pytest.approx(sum(inter) / sum(union), abs=2e-3)
    for t in (50, 70, 90):
        assert test[f"Pr@{t}"] == pytest.approx((ious > t / 100).mean(), abs=1.5 / len(ious))


def test_the_demo_runs_its_packaged_config():
    """``detris demo`` trains the shipped configs/synthetic-tiny.yaml (what ``detris train`` gets too)."""
    from pathlib import Path

    from detris.bundled import packaged_config
    from detris.demo import demo_settings
    from detris.engine.config import config_to_dict, load_config

    checkout = Path(__file__).resolve().parents[1] / "configs" / "synthetic-tiny.yaml"
    assert packaged_config("synthetic-tiny").read_bytes() == checkout.read_bytes()
    from_file = config_to_dict(load_config(checkout))
    assert demo_settings()["train"]["max_minutes"] == from_file["train"]["max_minutes"] == 10.0
    quick = demo_settings(quick=True)
    assert quick["model"]["overrides"]["patch_size"] == from_file["model"]["overrides"]["patch_size"]
    assert quick["model"]["overrides"]["image_size"] == 64


def test_held_out_score_needs_a_test_split(tmp_path):
    """A synthetic set without held-out scenes (``test_images: 0``) gives no score instead of an error;
    with them, every sentence of every test ref is scored once."""
    from detris.build import build_model
    from detris.data.refer import load_refer
    from detris.data.synthetic import write_refer_layout
    from detris.demo import score_held_out

    model = build_model("detris-tiny", image_size=56).eval()
    for name, splits in (("without", {"train": 2, "val": 1}), ("with", {"train": 1, "val": 1, "test": 2})):
        layout = write_refer_layout(tmp_path / name, dataset_name="refcoco", splits=splits, image_size=(64, 64),
                                    max_objects=3)
        refer = load_refer(tmp_path / name, "refcoco")
        result = score_held_out(model, refer, layout.image_root, batch_size=4, progress=False)
        if "test" not in splits:
            assert result is None
            continue
        sentences = sum(len(refer.sentences(r)) for r in refer.ref_ids("test"))
        assert result is not None and result["expressions"] == sentences > 0
        assert result["scenes"] == splits["test"]
        assert 0.0 <= result["mIoU"] <= 1.0
