"""A small random DETRIS whose masks are neither empty nor full, shared by the inference tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from detris.build import build_model
from detris.engine.task import SegmentationTask
from detris.modeling import DETRIS
from official_formats import randomize_detris_state


def training_loss(model: DETRIS, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The training objective of one forward (what the engine's step back-propagates)."""
    return SegmentationTask(model)(images, tokens, mask).loss.total


def random_tiny_model(image_size: int = 112, seed: int = 0, no_target_head: bool = False) -> DETRIS:
    """DETRIS-tiny at ``image_size`` px with random weights, non-trivial BN statistics, eval mode
    (optionally with the no-target head).

    Random weights give logits far below the 0.35 threshold (all-empty masks); the dynamic kernel's
    bias is shifted so that about 30 % of the pixels of a random input are foreground.
    """
    torch.manual_seed(seed)
    model = build_model("detris-tiny", image_size=image_size, no_target_head=no_target_head).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        # Non-trivial BN statistics so that eval-mode BN is not the identity.
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(0.3 * torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
    size = model.config.image_size
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, size, size, generator=gen),
                       torch.randint(1, 400, (2, model.config.word_len), generator=gen)).logits
        shift = math.log(0.35 / 0.65) - torch.quantile(logits.flatten().float(), 0.7).item()
        model.proj.txt.bias[-1] += shift
    return model


def save_random_tiny(directory: Path, image_size: int = 112, seed: int = 0, no_target_head: bool = False) -> Path:
    """`random_tiny_model` written with ``save_pretrained`` into ``directory``; returns it."""
    random_tiny_model(image_size, seed, no_target_head).save_pretrained(directory)
    return directory


EOT, SOT = 49407, 49406


def make_tokens(n: int, word_len: int = 17, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, word_len, dtype=torch.long)
    for row in range(n):
        length = int(torch.randint(3, word_len + 1, (1,), generator=g))
        tokens[row, :length] = torch.randint(1, 49000, (length,), generator=g)
        tokens[row, 0], tokens[row, length - 1] = SOT, EOT
    return tokens


def official_inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 112, 126, generator=g), make_tokens(n, seed=3)


def trained_tiny(files: dict, seed: int = 0) -> DETRIS:
    """detris-tiny built from the official-format backbone files of the ``files`` fixture, every weight random."""
    torch.manual_seed(seed)
    model = build_model("detris-tiny", dinov2_weights=files["dino"], clip_weights=files["clip_ts"])
    model.load_state_dict(randomize_detris_state(model.state_dict(), seed=seed))
    return model.eval()
