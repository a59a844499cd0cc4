"""The tiny tower files (what tools/pretrain_tiny.py writes): towers of an earlier pretraining fitted to
another patch size and grid (`detris.weights.tiny_towers`)."""

from __future__ import annotations

import torch

import detris
from detris import bundled
from detris.build import build_model
from detris.weights import load_state_file
from detris.weights.dinov2 import resize_dinov2_weights
from detris.weights.tiny_towers import fit_tiny_towers, save_tiny_towers


def _tower(patch: int, grid: int, width: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"patch_embed.proj.weight": torch.randn(width, 3, patch, patch),
            "pos_embed": torch.randn(1, 1 + grid * grid, width), "cls_token": torch.randn(1, 1, width)}


def test_constant_kernel_gives_the_same_embedding_of_a_flat_patch():
    """A kernel constant over the patch resamples to the same constant; with the area factor, a patch
    of one colour then embeds to the same vector at 14 px and at 8 px."""
    sd = _tower(14, 8)
    per_channel = torch.randn(6, 3, 1, 1)
    sd["patch_embed.proj.weight"] = per_channel.expand(6, 3, 14, 14).clone()
    out = resize_dinov2_weights(sd, patch_size=8, grid=8)
    colour = torch.tensor([0.3, -1.2, 0.7])
    before = torch.einsum("ocij,c->o", sd["patch_embed.proj.weight"], colour)
    after = torch.einsum("ocij,c->o", out["patch_embed.proj.weight"], colour)
    assert out["patch_embed.proj.weight"].shape == (6, 3, 8, 8)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pos_embed"], sd["pos_embed"])  # same grid: untouched


def test_position_table_resized_with_the_class_row_kept():
    sd = _tower(14, 8)
    sd["pos_embed"][:, 1:] = 0.25  # a flat table stays flat under bicubic resampling
    out = resize_dinov2_weights(sd, patch_size=14, grid=14)
    assert out["pos_embed"].shape == (1, 1 + 14 * 14, 6)
    torch.testing.assert_close(out["pos_embed"][:, :1], sd["pos_embed"][:, :1])
    torch.testing.assert_close(out["pos_embed"][:, 1:], torch.full((1, 196, 6), 0.25))
    torch.testing.assert_close(out["cls_token"], sd["cls_token"])
    torch.testing.assert_close(out["patch_embed.proj.weight"], sd["patch_embed.proj.weight"])


def test_initial_towers_load_strictly_into_another_geometry(tmp_path):
    """Towers of one geometry, fitted to another, load key for key (strict) into that model."""
    source = tmp_path / "earlier"
    source.mkdir()
    geometry = {"patch_size": 14, "pretrained_grid": 8}
    earlier = build_model(detris.get_variant("detris-tiny", **geometry))
    save_tiny_towers(earlier, source, {})
    target = detris.get_variant("detris-tiny", image_size=112, patch_size=8, pretrained_grid=14)
    paths = fit_tiny_towers(source, target, tmp_path / "init")
    model = build_model(target, dinov2_weights=paths["dinov2"], clip_weights=paths["clip"])
    assert model.dinov2.patch_embed.proj.weight.shape[-1] == 8
    assert model.dinov2.pos_embed.shape[1] == 1 + 14 * 14
    blocks = load_state_file(paths["dinov2"])
    torch.testing.assert_close(model.dinov2.blocks[0].attn.qkv.weight, blocks["blocks.0.attn.qkv.weight"])
    clip = load_state_file(paths["clip"])
    torch.testing.assert_close(model.txt_backbone.token_embedding.weight, clip["token_embedding.weight"].float())
    assert set(bundled.TINY_TOWER_FILES) == set(paths)
