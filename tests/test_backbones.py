"""Our DINOv2 and CLIP text towers against transformers' implementations on the same random weights."""

import pytest
import torch

from detris.modeling import CLIPTextTransformer, DinoVisionTransformer
from detris.weights import load_strict, read_clip_text_weights
from detris.weights.clip import clip_text_from_transformers
from detris.weights.dinov2 import dinov2_from_transformers
from hf_formats import clip_text_to_transformers, dinov2_to_transformers

transformers = pytest.importorskip("transformers")

DIM, DEPTH, HEADS, GRID, PATCH = 64, 3, 4, 6, 14


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Well-scaled random values everywhere (LayerNorm/LayerScale too) so every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and ("norm" in name or "layer_scale" in name or name.endswith(("gamma", "lambda1"))):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _hf_dinov2():
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        image_size=GRID * PATCH,
        patch_size=PATCH,
        num_register_tokens=4,
        layer_norm_eps=1e-6,
    )
    model = transformers.Dinov2WithRegistersModel(cfg).eval()
    _randomize(model, 0)
    return model


def _our_dinov2(**kw) -> DinoVisionTransformer:
    return DinoVisionTransformer(
        dim=DIM, depth=DEPTH, num_heads=HEADS, patch_size=PATCH, num_register_tokens=4, pretrained_grid=GRID, **kw
    ).eval()


@pytest.mark.parametrize("hw", [(GRID * PATCH, GRID * PATCH), (8 * PATCH, 8 * PATCH), (5 * PATCH, 9 * PATCH)])
def test_dinov2_matches_transformers_from_hf_weights(hw):
    hf = _hf_dinov2()
    ours = _our_dinov2(interpolate_offset=0.0, interpolate_antialias=True)  # transformers' resizing
    load_strict(ours, dinov2_from_transformers(hf.state_dict()), what="converted transformers DINOv2")
    images = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(pixel_values=images).last_hidden_state
        got, _ = ours(images)
    assert got.shape == expected.shape == (2, 5 + (hw[0] // PATCH) * (hw[1] // PATCH), DIM)
    assert (got - expected).abs().max().item() < 1e-4


def test_dinov2_matches_transformers_from_our_weights():
    ours = _our_dinov2(interpolate_offset=0.0, interpolate_antialias=True)
    _randomize(ours, 3)
    hf = _hf_dinov2()
    hf.load_state_dict(dinov2_to_transformers(ours.state_dict()), strict=True)
    images = torch.randn(1, 3, 4 * PATCH, 7 * PATCH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(pixel_values=images).last_hidden_state
        got, _ = ours(images)
    assert (got - expected).abs().max().item() < 1e-4


def test_dinov2_intermediate_taps_are_raw_block_outputs():
    hf = _hf_dinov2()
    ours = _our_dinov2(interpolate_offset=0.0, interpolate_antialias=True)
    load_strict(ours, dinov2_from_transformers(hf.state_dict()), what="converted transformers DINOv2")
    images = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        hidden = hf(pixel_values=images, output_hidden_states=True).hidden_states  # embeddings + each block
        _, taps = ours(images, taps=(0, 2))
    assert (taps[0] - hidden[1]).abs().max() < 1e-4
    assert (taps[1] - hidden[3]).abs().max() < 1e-4


def test_default_position_resizing_is_the_official_scale_factor_one():
    """DETRIS resizes with scale (grid + 0.1) / pretrained and no antialias; a target size differs."""
    ours = _our_dinov2()
    _randomize(ours, 4)
    grid = (8, 8)
    pos = ours.pos_embed[:, 1:].reshape(1, GRID, GRID, DIM).permute(0, 3, 1, 2)
    # Bicubic sampling at source coordinate (dst + 0.5) / s - 0.5 with s = (8 + 0.1) / 6, written out here.
    s = (grid[0] + 0.1) / GRID
    src = (torch.arange(grid[0], dtype=torch.float64) + 0.5) / s - 0.5

    def cubic_weights(t):
        a = -0.75
        d = torch.stack([t + 1, t, 1 - t, 2 - t])
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return torch.where(d <= 1, near, far)

    def resample_matrix():
        mat = torch.zeros(grid[0], GRID, dtype=torch.float64)
        for i, x in enumerate(src):
            base = torch.floor(x)
            w = cubic_weights(x - base)
            for k in range(4):
                j = int(min(max(base + k - 1, 0), GRID - 1))
                mat[i, j] += w[k]
        return mat

    r = resample_matrix()
    expected = torch.einsum("ij,bcjk,lk->bcil", r, pos.double(), r).permute(0, 2, 3, 1).reshape(1, -1, DIM)
    with torch.no_grad():
        got = ours.interpolate_pos_encoding(grid)[:, 1:]
        by_size = _our_dinov2(interpolate_offset=0.0)
        by_size.load_state_dict(ours.state_dict())
        other = by_size.interpolate_pos_encoding(grid)[:, 1:]
    assert (got.double() - expected).abs().max() < 1e-5
    assert (other.double() - expected).abs().max() > 1e-3  # the setting matters


def _hf_clip_text():
    cfg = transformers.CLIPTextConfig(
        vocab_size=49408,
        hidden_size=DIM,
        intermediate_size=4 * DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=32,
        layer_norm_eps=1e-5,
        eos_token_id=49407,
        bos_token_id=49406,
        pad_token_id=0,
    )
    model = transformers.CLIPTextModelWithProjection(cfg).eval()
    _randomize(model, 5)
    return model


def _tokens():
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(3, 17, dtype=torch.long)
    for row, n in enumerate((4, 9, 17)):
        tokens[row, :n] = torch.randint(1, 49000, (n,), generator=g)
        tokens[row, 0] = 49406
        tokens[row, n - 1] = 49407
    return tokens


def _our_text() -> CLIPTextTransformer:
    return CLIPTextTransformer(width=DIM, depth=DEPTH, num_heads=HEADS, embed_dim=32).eval()


def _assert_same_text_outputs(hf, ours) -> None:
    tokens = _tokens()
    with torch.no_grad():
        out = hf(input_ids=tokens)
        words, sentence = ours(tokens)
    assert (words - out.last_hidden_state).abs().max() < 1e-4
    assert (sentence - out.text_embeds).abs().max() < 1e-4


def test_clip_text_matches_transformers_from_hf_weights():
    hf = _hf_clip_text()
    ours = _our_text()
    sd = read_clip_text_weights(hf.state_dict(), round_fp16=False)
    load_strict(ours, sd, what="converted transformers CLIP", skip_missing=["logit_scale"])
    _assert_same_text_outputs(hf, ours)


def test_clip_text_matches_transformers_from_our_weights():
    ours = _our_text()
    _randomize(ours, 6)
    hf = _hf_clip_text()
    hf.load_state_dict(clip_text_to_transformers(ours.state_dict()), strict=True)
    _assert_same_text_outputs(hf, ours)


def test_clip_round_trip_through_transformers_names_is_lossless():
    ours = _our_text()
    _randomize(ours, 7)
    sd = ours.state_dict()
    back = clip_text_from_transformers(clip_text_to_transformers(sd))
    assert set(back) == set(sd) - {"logit_scale"}
    assert all(torch.equal(back[k], sd[k]) for k in back)


def test_clip_loader_rounds_like_the_official_fp16_loader():
    ours = _our_text()
    _randomize(ours, 8)
    sd = {k: v.clone() for k, v in ours.state_dict().items()}
    rounded = read_clip_text_weights(sd)
    w = "transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(rounded[w], sd[w].half().float()) and not torch.equal(rounded[w], sd[w])
    assert torch.equal(rounded["text_projection"], sd["text_projection"].half().float())
    # LayerNorms and embeddings are kept in float32 by the official loader.
    assert torch.equal(rounded["ln_final.weight"], sd["ln_final.weight"])
    assert torch.equal(rounded["token_embedding.weight"], sd["token_embedding.weight"])
