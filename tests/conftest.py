"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch

from official_formats import write_clip_state_dict, write_clip_torchscript, write_dinov2_pth

TINY_CLIP = dict(
    embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
    text_width=64, text_heads=4, text_layers=4,
)
TINY_DINO = dict(embed_dim=96, depth=4, num_heads=4, pretrained_grid=8)


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    clip_ts = root / "ViT-tiny.pt"
    clip_sd = root / "ViT-tiny-state.pt"
    dino = root / "dinov2_tiny_reg4_pretrain.pth"
    clip_values = write_clip_torchscript(clip_ts, seed=1, dtype=torch.float32, **TINY_CLIP)
    write_clip_state_dict(clip_sd, seed=1, dtype=torch.float32, **TINY_CLIP)
    dino_values = write_dinov2_pth(dino, seed=2, **TINY_DINO)
    return {"root": root, "clip_ts": clip_ts, "clip_sd": clip_sd, "dino": dino,
            "clip_values": clip_values, "dino_values": dino_values}
