"""The files shipped with the package: the pretrained tiny towers and the bundled demo model.

References: ``tests/fixtures/bundled_reference.json`` was recorded when the assets were made
(``tools/bundle_demo_model.py``); the true masks of freshly generated scenes are the generator's own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import detris
from detris import bundled
from detris.build import build_model
from detris.cli import main
from detris.data.synthetic import SyntheticScenes
from detris.data.transforms import letterbox_image, normalize_image
from detris.weights import CheckpointError, load_state_file

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "bundled_reference.json").read_text())
# Scenes of this seed are used nowhere else (not by the pretraining, the demo or the reference).
FRESH_SEED = 990001
MAX_ASSET_BYTES = 10 * 2**20


def _reference_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    size = REFERENCE["image_size"]
    scenes = SyntheticScenes(2, seed=REFERENCE["seed"], image_size=(size, size), max_objects=4)
    images = torch.stack([normalize_image(letterbox_image(s.image, size)[0]) for s in scenes])
    assert [s.objects[0].expressions[0] for s in scenes] == REFERENCE["texts"]
    return images, detris.tokenize(REFERENCE["texts"], context_length=REFERENCE["word_len"])


def test_tower_assets_are_small_fp16_files_in_the_official_layouts():
    paths = bundled.tiny_tower_paths()
    total = sum(p.stat().st_size for p in paths.values())
    assert total <= MAX_ASSET_BYTES, total
    for path in paths.values():
        tensors = load_state_file(path)
        assert all(t.dtype == torch.float16 for t in tensors.values())
        assert not any(".adapter." in k for k in tensors)
    assert "pos_embed" in load_state_file(paths["dinov2"])
    assert "text_projection" in load_state_file(paths["clip"])


@torch.no_grad()
def test_towers_load_strictly_and_reproduce_recorded_features():
    """Strict loading (every tower key present, nothing extra) into detris-tiny without adapters."""
    cfg = detris.get_variant("detris-tiny", image_size=REFERENCE["image_size"], patch_size=REFERENCE["patch_size"],
                             pretrained_grid=REFERENCE["pretrained_grid"], vision_adapter_layers=(),
                             text_adapter_layers=())
    paths = bundled.tiny_tower_paths()
    towers = build_model(cfg, dinov2_weights=paths["dinov2"], clip_weights=paths["clip"]).eval()
    images, tokens = _reference_inputs()
    words, sentence = towers.txt_backbone(tokens)
    final, _ = towers.dinov2(images, words, ())
    torch.testing.assert_close(sentence[:, :8], torch.tensor(REFERENCE["sentence"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final[:, 0, :8], torch.tensor(REFERENCE["vision_final_cls"]), rtol=1e-4, atol=1e-4)
    assert final.abs().mean().item() == pytest.approx(REFERENCE["vision_final_mean_abs"], rel=1e-4)


def test_tower_file_with_an_extra_key_is_refused(tmp_path):
    from safetensors.torch import save_file

    sd = load_state_file(bundled.tiny_tower_paths()["dinov2"])
    sd["blocks.9.attn.qkv.weight"] = torch.zeros(1)
    path = tmp_path / "extra.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="blocks.9"):
        build_model(detris.get_variant("detris-tiny", **bundled.TINY_TOWER_GEOMETRY), dinov2_weights=path)


def test_config_with_the_bundled_towers_and_another_patch_size_is_refused():
    pytest.importorskip("yaml")
    from detris.engine.config import ConfigError, config_from_dict

    spec = {"model": {"variant": "detris-tiny", "dinov2_weights": "bundled", "clip_weights": "bundled"},
            "data": {"dataset": "synthetic"}}
    with pytest.raises(ConfigError, match=r"model.overrides.patch_size: 14, .*bundled towers.*patch_size: 8"):
        config_from_dict(spec)
    spec["model"]["overrides"] = dict(bundled.TINY_TOWER_GEOMETRY)
    assert config_from_dict(spec).model.overrides == bundled.TINY_TOWER_GEOMETRY


@torch.no_grad()
def test_bundled_model_reproduces_recorded_logits():
    model = detris.from_pretrained(bundled.DEMO_MODEL_NAME)
    images, tokens = _reference_inputs()
    logits = model(images, tokens).logits
    torch.testing.assert_close(logits[:, 0, :4, :4].flatten(1), torch.tensor(REFERENCE["logits_corner"]),
                               rtol=1e-4, atol=1e-4)
    assert logits.mean().item() == pytest.approx(REFERENCE["logits_mean"], rel=1e-4, abs=1e-4)


def test_bundled_model_is_adapter_only_on_the_towers_by_name():
    meta = json.loads((bundled.demo_model_dir() / "config.json").read_text())
    assert meta["adapter_only"] is True
    # Canonical names and hashes, no path: found again wherever the package is installed.
    for kind, name in bundled.TINY_TOWER_FILES.items():
        record = meta["base_weights"][kind]
        assert (record["name"], record["path"], record["url"]) == (name, None, None)
        assert record["sha256"] == hashlib.sha256((bundled.assets_dir() / name).read_bytes()).hexdigest()
    model = detris.from_pretrained(bundled.DEMO_MODEL_NAME)
    counts = model.parameter_counts()
    assert counts["trainable"] < counts["total"] / 5


def test_bundled_model_segments_fresh_scenes():
    """Mean IoU against the generator's true masks on scenes no training saw (all expressions)."""
    predictor = detris.Predictor.from_pretrained(bundled.DEMO_MODEL_NAME)
    scenes = SyntheticScenes(20, seed=FRESH_SEED, image_size=(112, 112), max_objects=4)
    ious = []
    for scene in scenes:
        texts = [obj.expressions[0] for obj in scene.objects]
        for obj, pred in zip(scene.objects, predictor.predict(scene.image, texts)):
            gt = obj.mask.astype(bool)
            ious.append((pred.mask & gt).sum() / ((pred.mask | gt).sum() + 1e-6))
    # A whole-image mask scores about 0.04 here; the model as bundled scored 0.82 (docs/demo.md).
    assert np.mean(ious) >= 0.75, np.mean(ious)


@pytest.fixture()
def asset_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of the assets folder that the package reads instead of its own."""
    copy = tmp_path / "assets"
    shutil.copytree(bundled.assets_dir(), copy)
    monkeypatch.setattr(bundled, "assets_dir", lambda: copy)
    return copy


def _predict(tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    scene = SyntheticScenes(1, seed=FRESH_SEED, image_size=(112, 112))[0]
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image)
    rc = main(["predict", "--image", str(image), "--text", scene.objects[0].expressions[0],
               "--out", str(tmp_path / "out"), *extra])
    return rc, capsys.readouterr().err


def test_predict_without_model_uses_the_bundled_model(tmp_path, capsys):
    rc, err = _predict(tmp_path, capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["model"] == bundled.DEMO_MODEL_NAME
    assert summary["images"][0]["predictions"][0]["area"] > 0


@pytest.mark.parametrize("damage", ["delete-model", "truncate-model", "truncate-tower", "delete-tower"])
def test_damaged_assets_give_one_line_naming_the_file_and_the_fix(asset_copy, tmp_path, capsys, damage):
    target = {
        "delete-model": asset_copy / bundled.DEMO_MODEL_NAME / "model.safetensors",
        "truncate-model": asset_copy / bundled.DEMO_MODEL_NAME / "model.safetensors",
        "truncate-tower": asset_copy / bundled.TINY_TOWER_FILES["clip"],
        "delete-tower": asset_copy / bundled.TINY_TOWER_FILES["dinov2"],
    }[damage]
    if damage.startswith("delete"):
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    rc, err = _predict(tmp_path, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert target.name in lines[0] and "reinstall" in lines[0], lines[0]
