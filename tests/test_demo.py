"""The synthetic demo: overlays are written with the scene's size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detris.visualize import overlay_mask, render_overlay


def test_overlay_keeps_size_and_tints_mask():
    img = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    out = overlay_mask(img, mask, outline=mask)
    assert out.shape == img.shape
    assert (out[15, 20] != 100).any() and (out[35, 55] == 100).all()
    pil = render_overlay(img, mask, "the red circle on the left", true_mask=mask)
    assert pil.size == (60, 40)


def test_overlay_rejects_wrong_mask_size():
    with pytest.raises(ValueError, match="shape"):
        overlay_mask(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 5), bool))


def test_quick_demo_trains_and_writes_overlays(tmp_path):
    """The short demo: loss falls; overlays with the scene's size, metrics.json and the curve exist."""
    pytest.importorskip("yaml")
    import json

    from detris.demo import run_demo

    result = run_demo(out_dir=tmp_path, seed=0, minutes=2.0, quick=True)
    assert result["loss_last"] < result["loss_first"]
    overlays = sorted(tmp_path.glob("overlay_*.png"))
    assert overlays
    assert Image.open(overlays[0]).size == (64, 64)  # the quick scenes are 64 x 64
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"val", "last_val", "baselines", "steps"} <= set(metrics)
    assert metrics["last_val"]["mIoU"] >= metrics["baselines"]["empty_mask_mIoU"]
    assert (tmp_path / "curves.png").is_file()
    assert (tmp_path / "best" / "model.safetensors").is_file()
