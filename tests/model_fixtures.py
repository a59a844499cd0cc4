"""A small random DETRIS whose masks are neither empty nor full, shared by the inference tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from detris.build import build_model


def random_tiny_model(image_size: int = 112, seed: int = 0) -> torch.nn.Module:
    """DETRIS-tiny at ``image_size`` px with random weights, non-trivial BN statistics, eval mode.

    Random weights give logits far below the 0.35 threshold (all-empty masks); the dynamic kernel's
    bias is shifted so that about 30 % of the pixels of a random input are foreground.
    """
    torch.manual_seed(seed)
    model = build_model("detris-tiny", image_size=image_size).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        # Non-trivial BN statistics so that eval-mode BN is not the identity.
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(0.3 * torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
    size = model.config.image_size
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, size, size, generator=gen),
                       torch.randint(1, 400, (2, model.config.word_len), generator=gen))
        shift = math.log(0.35 / 0.65) - torch.quantile(logits.flatten().float(), 0.7).item()
        model.proj.txt.bias[-1] += shift
    return model


def save_random_tiny(directory: Path, image_size: int = 112, seed: int = 0) -> Path:
    """`random_tiny_model` written with ``save_pretrained`` into ``directory``; returns it."""
    random_tiny_model(image_size, seed).save_pretrained(directory)
    return directory
