"""Ship a demo run's model as the bundled ``detris-tiny-synthetic`` and record reference outputs.

    detris demo --out runs/demo                      # trains on top of the bundled towers
    python tools/bundle_demo_model.py --run runs/demo

Copies ``<run>/best`` (an adapter-only model recording the bundled tower files by name) into
``src/detris/assets/detris-tiny-synthetic/`` and writes ``tests/fixtures/bundled_reference.json``: the
towers' features and the bundled model's logits on fixed inputs, which tests/test_bundled.py
reproduces from the installed files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import detris
from detris.build import build_model
from detris.bundled import DEMO_MODEL_NAME, TINY_TOWER_FILES, assets_dir, tiny_tower_paths
from detris.data.synthetic import SyntheticScenes
from detris.data.transforms import letterbox_image, normalize_image
from detris.weights.detris_format import BaseFile

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "bundled_reference.json"
# Scenes of this seed are used nowhere else: not by the towers' pretraining, not by the demo.
REFERENCE_SEED = 777001


def reference_inputs(size: int, word_len: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Two synthetic scenes (seed REFERENCE_SEED) and the first expression of their first object."""
    scenes = [SyntheticScenes(2, seed=REFERENCE_SEED, image_size=(size, size), max_objects=4)[i] for i in range(2)]
    texts = [s.objects[0].expressions[0] for s in scenes]
    images = torch.stack([normalize_image(letterbox_image(s.image, size)[0]) for s in scenes])
    return images, detris.tokenize(texts, context_length=word_len), texts


@torch.no_grad()
def record(model_dir: Path) -> dict:
    model = detris.from_pretrained(model_dir)
    size, word_len = model.config.image_size, model.config.word_len
    images, tokens, texts = reference_inputs(size, word_len)
    towers = build_model(model.config.replace(vision_adapter_layers=(), text_adapter_layers=()),
                         **{f"{k}_weights": v for k, v in tiny_tower_paths().items()}).eval()
    words, sentence = towers.txt_backbone(tokens)
    final, _ = towers.dinov2(images, words, ())
    logits = model(images, tokens).logits
    return {
        "seed": REFERENCE_SEED, "image_size": size, "word_len": word_len, "texts": texts,
        "patch_size": model.config.patch_size, "pretrained_grid": model.config.pretrained_grid,
        "sentence": sentence[:, :8].tolist(),
        "vision_final_cls": final[:, 0, :8].tolist(),
        "vision_final_mean_abs": final.abs().mean().item(),
        "logits_corner": logits[:, 0, :4, :4].flatten(1).tolist(),
        "logits_mean": logits.mean().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="a `detris demo` output directory")
    args = parser.parse_args(argv)
    source = Path(args.run) / "best"
    meta = json.loads((source / "config.json").read_text())
    names = {BaseFile.read(v).name for v in meta.get("base_weights", {}).values()}
    if not meta.get("adapter_only") or names != set(TINY_TOWER_FILES.values()):
        raise SystemExit(f"{source} is not an adapter-only model on the bundled towers: {meta.get('base_weights')}")
    target = assets_dir() / DEMO_MODEL_NAME
    # Loaded and saved again rather than copied: the asset is then in the current format, and its base
    # files are recorded by their bare names.
    detris.from_pretrained(source).save_pretrained(target, adapter_only=True)
    REFERENCE.write_text(json.dumps(record(target), indent=2) + "\n")
    print(f"bundled {source} as {target}; reference outputs in {REFERENCE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
