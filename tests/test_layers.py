"""What the three-layer redesign promises beyond the import rules: the preprocessing contract stored
with the weights (and older files without it), files written with the user's umask, one inference path."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import detris
from detris.data.transforms import CLIP_MEAN, CLIP_STD, inverse_warp, letterbox_image, normalize_image
from detris.export import export_model
from detris.inference import prepare_image, segment
from detris.postprocess import binarize
from detris.processing import ProcessingConfig
from detris.utils import atomic_write
from model_fixtures import random_tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return random_tiny_model().save_pretrained(tmp_path_factory.mktemp("model"))


def test_config_json_holds_the_preprocessing_contract(saved):
    meta = json.loads((saved / "config.json").read_text())
    assert meta["processing"] == {
        "input_size": 112, "word_len": 17, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
        "resize": "letterbox", "threshold": 0.35,
    }
    model = detris.from_pretrained(saved)
    assert model.processing == ProcessingConfig(input_size=112, word_len=17)


def _with_config(saved: Path, directory: Path, change) -> Path:
    """A model directory holding ``saved``'s weights and its config.json after ``change(meta)``."""
    meta = json.loads((saved / "config.json").read_text())
    change(meta)
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(meta))
    os.symlink(saved / "model.safetensors", directory / "model.safetensors")
    return directory


def test_a_stored_threshold_is_what_predictor_and_export_use(saved, tmp_path):
    from detris.export import export_metadata

    changed = _with_config(saved, tmp_path / "model", lambda meta: meta["processing"].update(threshold=0.5))
    model = detris.from_pretrained(changed)
    predictor = detris.Predictor(model)
    assert predictor.processing.threshold == 0.5
    rgb = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    (p,) = predictor.predict(rgb, ["the red circle"])
    assert np.array_equal(p.mask, p.probability > 0.5)
    assert export_metadata(model.config, None, model.processing)["threshold"] == "0.5"


def test_older_config_json_without_the_contract_loads(saved, tmp_path):
    def older(meta: dict) -> None:
        del meta["processing"]
        meta["config"]["neck_heads"] = 4  # a field older files carry, which never changed the model

    model = detris.from_pretrained(_with_config(saved, tmp_path / "old", older))
    assert model.processing == ProcessingConfig.for_model(model.config)


def test_a_contract_disagreeing_with_the_model_is_refused(saved, tmp_path):
    bad = _with_config(saved, tmp_path / "bad", lambda meta: meta["processing"].update(input_size=224))
    with pytest.raises(ValueError, match=r"config\.json.*input_size"):
        detris.from_pretrained(bad)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_are_written_with_the_users_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda p: Path(p).write_text("x"))
        model = random_tiny_model()
        model.save_pretrained(tmp_path / "model")
        export_model(model, "torch-export", tmp_path / "model.pt2")
    finally:
        os.umask(old)
    expected = 0o666 & ~mask
    for f in (path, tmp_path / "model" / "config.json", tmp_path / "model" / "model.safetensors",
              tmp_path / "model.pt2"):
        assert stat.S_IMODE(f.stat().st_mode) == expected, (f, oct(f.stat().st_mode))


def test_segment_equals_the_protocol_written_out():
    """The one inference path against its steps written out by hand (letterbox, forward, sigmoid,
    bicubic, inverse letterbox, strict threshold)."""
    model = random_tiny_model()
    rgb = np.random.default_rng(1).integers(0, 255, (70, 150, 3), dtype=np.uint8)
    tokens = detris.tokenize(["the small red square", "the star"], context_length=17)
    pixels, box = prepare_image(rgb, 112)
    warped, _mat, inv = letterbox_image(rgb, 112)
    assert torch.equal(pixels, normalize_image(warped)) and np.array_equal(box.inverse, inv)
    assert box.orig_size == (70, 150) and box.input_size == (112, 112)
    images = pixels.unsqueeze(0).expand(2, -1, -1, -1)
    probs, masks = segment(model, images, tokens, [box] * 2)
    with torch.no_grad():
        logits = model.eval()(images, tokens).logits
    for i in range(2):
        up = F.interpolate(torch.sigmoid(logits[i : i + 1]), size=(112, 112), mode="bicubic", align_corners=True)
        ref = inverse_warp(up[0, 0].numpy(), inv, 70, 150)
        assert np.array_equal(probs[i], ref)
        assert np.array_equal(masks[i], binarize(ref, 0.35)) and masks[i].shape == (70, 150)


def test_a_model_built_from_its_parts_saves_loads_predicts_and_exports(tmp_path):
    """No factory needed: the constructor gives a model with its config and preprocessing contract, which
    every service then takes as it is."""
    from detris.modeling import DETRIS, CLIPTextTransformer, Decoder, DinoVisionTransformer, Neck, Projector
    from detris.variants import get_variant

    cfg = get_variant("detris-tiny", image_size=112, vision_adapter_layers=(), text_adapter_layers=())
    torch.manual_seed(0)
    vision = DinoVisionTransformer(dim=cfg.vision_width, depth=cfg.vision_depth, num_heads=cfg.vision_heads,
                                   patch_size=cfg.patch_size, num_register_tokens=cfg.num_register_tokens,
                                   pretrained_grid=cfg.pretrained_grid)
    text = CLIPTextTransformer(vocab_size=cfg.vocab_size, context_length=cfg.text_context_length,
                               width=cfg.text_width, depth=cfg.text_depth, num_heads=cfg.text_heads,
                               embed_dim=cfg.text_embed_dim)
    model = DETRIS(cfg, text, vision, Neck([cfg.vision_width] * 3, cfg.fusion_dim, cfg.text_embed_dim),
                   Decoder(cfg.decoder_layers, cfg.fusion_dim, cfg.decoder_heads, cfg.decoder_ffn_dim,
                           cfg.decoder_dropout),
                   Projector(cfg.text_embed_dim, cfg.projector_dim, cfg.head_kernel_size)).eval()
    assert model.processing == ProcessingConfig.for_model(cfg)
    rgb = np.random.default_rng(2).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    expected = detris.Predictor(model, device="cpu").predict(rgb, "the thing")[0]

    loaded = detris.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.config == cfg and loaded.processing == model.processing
    got = detris.Predictor(loaded, device="cpu").predict(rgb, "the thing")[0]
    assert np.array_equal(got.probability, expected.probability)

    program = torch.export.load(export_model(model, "torch-export", tmp_path / "m.pt2"))
    pixels, _ = prepare_image(rgb, cfg.image_size)
    tokens = detris.tokenize(["the thing"], context_length=cfg.word_len)
    with torch.no_grad():
        diff = (program.module()(pixels[None], tokens) - model(pixels[None], tokens).logits).abs().max()
    assert diff.item() < 1e-5


def test_a_model_whose_parts_disagree_with_its_config_is_refused():
    from detris.modeling import DETRIS

    model = detris.build_model("detris-tiny")
    with pytest.raises(ValueError, match="no-target head"):
        DETRIS(model.config.replace(no_target_head=True), model.txt_backbone, model.dinov2, model.neck,
               model.decoder, model.proj)
    with pytest.raises(ValueError, match="word_len 224/22 disagree"):
        DETRIS(model.config, model.txt_backbone, model.dinov2, model.neck, model.decoder, model.proj,
               processing=ProcessingConfig(input_size=model.config.image_size, word_len=22))
