"""DETRIS model behaviour: shapes, freezing, gradients, dtypes, parameter counts, input errors."""

import json
import subprocess
import sys

import pytest
import torch

import detris
from detris import build_model
from detris.engine.task import SegmentationTask
from model_fixtures import make_tokens, training_loss


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("detris-tiny")


def test_output_shape_square_and_non_square(tiny):
    tiny.eval()
    with torch.no_grad():
        assert tiny(torch.randn(2, 3, 224, 224), make_tokens(2)).logits.shape == (2, 1, 64, 64)
        assert tiny(torch.randn(1, 3, 168, 308), make_tokens(1)).logits.shape == (1, 1, 48, 88)


def test_exactly_the_trainable_parts_get_gradients(tiny):
    tiny.train()
    images, tokens = torch.randn(2, 3, 112, 112), make_tokens(2)
    mask = (torch.rand(2, 1, 112, 112) > 0.5).float()
    tiny.zero_grad(set_to_none=True)
    training_loss(tiny, images, tokens, mask).backward()
    with_grad = {n for n, p in tiny.named_parameters() if p.grad is not None}
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    # Independently of requires_grad: the parameters living under adapters, neck, decoder and head.
    expected = {
        n
        for n, _ in tiny.named_parameters()
        if ".adapter." in n or n.startswith(("neck.", "decoder.", "proj."))
    }
    assert with_grad == trainable == expected
    assert all(tiny.get_parameter(n).grad.abs().sum() > 0 for n in expected if "in_proj" not in n)
    assert not any(p.grad is not None for n, p in tiny.named_parameters() if n not in expected)


def test_loss_is_bce_against_nearest_resized_mask(tiny):
    tiny.train()
    torch.manual_seed(1)
    images, tokens = torch.randn(1, 3, 112, 112), make_tokens(1)
    mask = (torch.rand(1, 1, 112, 112) > 0.5).float()
    torch.manual_seed(2)
    step = SegmentationTask(tiny)(images, tokens, mask)
    logits, loss = step.output.logits, step.loss.total
    # Legacy nearest: target pixel i reads source pixel floor(i * 112 / 32) = floor(3.5 i).
    idx = torch.floor(torch.arange(32) * 3.5).long()
    target = mask[:, :, idx][:, :, :, idx]
    p = torch.sigmoid(logits.double())
    ref = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert abs(loss.item() - ref.item()) < 1e-5


def test_float64_runs_and_agrees_with_float32():
    torch.manual_seed(0)
    model = build_model("detris-tiny").eval()
    images, tokens = torch.randn(2, 3, 112, 140), make_tokens(2)
    with torch.no_grad():
        out32 = model(images, tokens).logits
        model64 = model.double()
        out64 = model64(images.double(), tokens).logits
    assert out64.dtype == torch.float64
    assert (out32.double() - out64).abs().max() < 1e-3 * max(1.0, out64.abs().max().item())


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model("detris-tiny").train()
    # Dropout draws differ between the two runs; compare without it.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) or hasattr(m, "dropout"):
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            elif isinstance(m.dropout, float):
                m.dropout = 0.0
    images, tokens = torch.randn(2, 3, 112, 112), make_tokens(2)
    mask = (torch.rand(2, 1, 112, 112) > 0.5).float()
    grads = []
    for enabled in (False, True):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enabled)
        training_loss(model, images, tokens, mask).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert max((grads[0][k] - grads[1][k]).abs().max().item() for k in grads[0]) < 1e-5


@pytest.mark.parametrize(
    "images, tokens, match",
    [
        (torch.randn(1, 3, 100, 112), make_tokens(1), "not a multiple of the patch size 14"),
        (torch.randn(1, 3, 112, 112), make_tokens(1).float(), "int64"),
        (torch.randn(1, 3, 112, 112), make_tokens(1)[0], r"\(N, L\)"),
        (torch.randn(1, 3, 112, 112), make_tokens(1, word_len=20), "word_len=17"),
        (torch.randn(2, 3, 112, 112), make_tokens(1), "batch sizes differ"),
        (torch.randn(1, 1, 112, 112), make_tokens(1), r"\(N, 3, H, W\)"),
        (torch.randint(0, 255, (1, 3, 112, 112), dtype=torch.uint8), make_tokens(1), "floating point"),
    ],
)
def test_bad_inputs_give_clear_errors(tiny, images, tokens, match):
    tiny.eval()
    with pytest.raises((ValueError, TypeError), match=match):
        tiny(images, tokens)


# Official counts, from the official code: total / trainable / adapters, and adapter share of backbones.
OFFICIAL_COUNTS = {"detris-b": (175.53, 25.52, 2.72, 1.78), "detris-l": (394.11, 26.31, 3.11, 0.84)}


@pytest.mark.parametrize("variant", sorted(OFFICIAL_COUNTS))
def test_parameter_counts_match_the_official_model(variant):
    with torch.device("meta"):
        counts = build_model(variant).parameter_counts()
    total, trainable, adapters, share = OFFICIAL_COUNTS[variant]
    assert round(counts["total"] / 1e6, 2) == total
    assert round(counts["trainable"] / 1e6, 2) == trainable
    assert round(counts["adapters"] / 1e6, 2) == adapters
    assert round(100 * counts["adapters"] / counts["backbones"], 2) == share


def test_info_command_prints_the_counts():
    out = subprocess.run(
        [sys.executable, "-m", "detris.cli", "info", "--variant", "detris-b", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    row = json.loads(out)
    assert row["total"] == 175_529_778 and row["adapter_share_percent"] == 1.78


def test_variants_are_json_round_trippable():
    for name in detris.list_variants():
        cfg = detris.get_variant(name)
        assert detris.DetrisConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown DETRIS config keys"):
        detris.DetrisConfig.from_dict({"vision_widht": 3})
    with pytest.raises(ValueError, match="unknown DETRIS variant"):
        detris.get_variant("detris-xl")


@pytest.mark.full_size
def test_detris_b_full_size_forward_batch_1():
    torch.manual_seed(0)
    model = build_model("detris-b").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 448, 448), make_tokens(1)).logits
    assert out.shape == (1, 1, 128, 128) and torch.isfinite(out).all()
