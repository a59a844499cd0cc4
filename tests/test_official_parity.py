"""Logit parity with the official implementation, on reference outputs it produced.

The reference files cannot live in the repository (they hold ~700 MB checkpoints), so this check runs
only when ``DETRIS_PARITY_DIR`` points at a folder made by running the official code on random weights
written in the official formats (see docs/parity.md): ``detris_{b,l}.pth`` (DDP checkpoints as the
official ``train.py`` writes them) and ``ref_{b,l}.pt`` (inputs, and the official logits and
intermediate stages in float32 and float64).
"""

import os
from pathlib import Path

import pytest
import torch

from detris import load_official_checkpoint

PARITY_DIR = os.environ.get("DETRIS_PARITY_DIR")
pytestmark = pytest.mark.skipif(not PARITY_DIR, reason="set DETRIS_PARITY_DIR to run the official parity check")

VARIANTS = {"b": "detris-b", "l": "detris-l"}


def _max_diff(ours, theirs) -> float:
    return (ours.double() - theirs.double()).abs().max().item()


@pytest.mark.parametrize("tag", sorted(VARIANTS))
def test_logits_match_the_official_model(tag):
    root = Path(PARITY_DIR)
    if not (root / f"ref_{tag}.pt").is_file():
        pytest.skip(f"no reference for {tag} in {root}")
    ref = torch.load(root / f"ref_{tag}.pt", weights_only=True)
    model = load_official_checkpoint(root / f"detris_{tag}.pth", variant=VARIANTS[tag])
    images, tokens = ref["inputs"]["images"], ref["inputs"]["tokens"]
    report = {}
    for dtype, key, bound in ((torch.float32, "fp32", 2e-4), (torch.float64, "fp64", 1e-5)):
        model = model.to(dtype)
        with torch.no_grad():
            stages = model.encode(images.to(dtype), tokens)
            logits = model.proj(stages["decoder"], stages["sentence"])
        theirs = ref[key]
        report[key] = {
            "word": _max_diff(stages["words"], theirs["word"]),
            "sentence": _max_diff(stages["sentence"], theirs["state"]),
            **{f"map{i}": _max_diff(m, t) for i, (m, t) in enumerate(zip(stages["maps"], theirs["vis"]))},
            "neck": _max_diff(stages["neck"], theirs["neck"]),
            "decoder": _max_diff(stages["decoder"], theirs["decoder"]),
            "logits": _max_diff(logits, theirs["logits"]),
        }
        if key == "fp32":
            # How far each float32 run is from the float64 truth: ours should sit at the official floor.
            report[key]["ours_vs_official_fp64"] = _max_diff(logits, ref["fp64"]["logits"])
            report[key]["official_fp32_vs_fp64"] = _max_diff(theirs["logits"], ref["fp64"]["logits"])
        print(f"{VARIANTS[tag]} {key}: " + ", ".join(f"{k} {v:.2e}" for k, v in report[key].items()))
        assert report[key]["logits"] <= bound, report[key]
