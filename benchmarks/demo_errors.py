"""Where a demo model goes wrong, and how much a score on a few dozen scenes can move.

Scores a model (a run's ``best/`` folder, or the bundled ``detris-tiny-synthetic``) through `Predictor`
on freshly generated scenes with the demo's generator settings, one expression per object (its first,
as the training loop's validation reads it), and prints:

* mIoU, the share of wrong picks (IoU <= 0.5) and the mean IoU of the right picks, by expression kind
  (attribute, superlative, side, relation) and by object size (thirds of the object areas);
* the mIoU of consecutive blocks of ``--block`` scenes (40 = the demo's validation set) and their
  spread: how far one validation number may sit from the model's quality.

Usage::

    python benchmarks/demo_errors.py --model runs/demo/best --seed 0 --first 1540 --scenes 400
    python benchmarks/demo_errors.py --model detris-tiny-synthetic --seed 4242 --scenes 400
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch

from _bench import cpu_flags, cpu_model_name
from detris.data.synthetic import SyntheticScenes
from detris.data.synthetic.expressions import RELATIONS, SIDES, SUPERLATIVES
from detris.demo import demo_settings
from detris.metrics import sample_iou
from detris.predictor import Predictor

KINDS = ("attribute", "superlative", "side", "relation")


def expression_kind(text: str) -> str:
    """The grammar's kind of an expression, read off its words (relations name a second object)."""
    for kind, words in (("relation", RELATIONS), ("superlative", SUPERLATIVES), ("side", SIDES)):
        if any(f" {w} " in f" {text} " for w in words):
            return kind
    return "attribute"


def score(model: str, seed: int, first: int, count: int) -> list[dict]:
    """One record per object of scenes ``first .. first + count - 1``: kind, area, IoU, scene index."""
    s = demo_settings()["data"]["synthetic"]
    scenes = SyntheticScenes(first + count, seed=seed, image_size=tuple(s["image_size"]),
                             max_objects=s["max_objects"])
    predictor = Predictor.from_pretrained(model, device="cpu", dtype="float32")
    records = []
    for index in range(first, first + count):
        scene = scenes[index]
        texts = [obj.expressions[0] for obj in scene.objects]
        for obj, pred, text in zip(scene.objects, predictor.predict(scene.image, texts), texts, strict=True):
            records.append({"kind": expression_kind(text), "area": int(obj.mask.sum()),
                            "iou": sample_iou(pred.mask, obj.mask), "scene": index})
    return records


def summary_row(name: str, ious: np.ndarray) -> str:
    right = ious[ious > 0.5]
    return (f"| {name} | {len(ious)} | {ious.mean():.3f} | {1 - len(right) / len(ious):.3f} "
            f"| {right.mean() if len(right) else float('nan'):.3f} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="detris-tiny-synthetic", help="model folder or name")
    parser.add_argument("--seed", type=int, default=4242, help="scene seed")
    parser.add_argument("--first", type=int, default=0, help="index of the first scene (skip training scenes)")
    parser.add_argument("--scenes", type=int, default=400, help="number of scenes")
    parser.add_argument("--block", type=int, default=40, help="scenes per block for the spread")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    records = score(args.model, args.seed, args.first, args.scenes)
    ious = np.array([r["iou"] for r in records])
    print(f"{args.model} on scenes {args.first}..{args.first + args.scenes - 1} of seed {args.seed}; "
          f"{cpu_model_name()}, flags {' '.join(cpu_flags())}")
    print("\n| expressions | count | mIoU | wrong picks | IoU of right picks |\n|---|---|---|---|---|")
    print(summary_row("all", ious))
    for kind in KINDS:
        sel = np.array([r["kind"] == kind for r in records])
        if sel.any():
            print(summary_row(kind, ious[sel]))
    areas = np.array([r["area"] for r in records])
    edges = np.quantile(areas, [1 / 3, 2 / 3])
    for name, sel in (("small third", areas < edges[0]), ("middle third", (areas >= edges[0]) & (areas < edges[1])),
                      ("large third", areas >= edges[1])):
        print(summary_row(name, ious[sel]))
    scene_of = np.array([r["scene"] for r in records])
    blocks = [ious[(scene_of >= b) & (scene_of < b + args.block)].mean()
              for b in range(args.first, args.first + args.scenes, args.block)]
    print(f"\nmIoU of blocks of {args.block} scenes: {' '.join(f'{b:.3f}' for b in blocks)}; "
          f"min {min(blocks):.3f}, max {max(blocks):.3f}, sd {np.std(blocks):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
