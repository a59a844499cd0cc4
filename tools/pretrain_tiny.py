"""Pretrain the ``detris-tiny`` image and text towers on synthetic scenes, then keep only the towers.

DETRIS freezes towers that were pretrained elsewhere (DINOv2, CLIP) and tunes adapters inside them.
The demo mirrors that in miniature, so its towers need a pretraining of their own on the synthetic
domain. The objective is the task itself, end to end: the whole tiny model (towers, adapters, neck,
decoder, head) learns referring segmentation on scenes of a seed the demo never uses; afterwards only
the towers are kept (adapters, neck, decoder and head are discarded), exactly the parts the demo then
freezes. Each tower is written in its own official key layout as fp16 safetensors, so
``build_model("detris-tiny", dinov2_weights=..., clip_weights=...)`` loads them like the real
backbone files.

    python tools/pretrain_tiny.py --minutes 40 --out runs/pretrain-tiny
    python tools/pretrain_tiny.py --install      # also copy the towers into src/detris/assets/
    python tools/pretrain_tiny.py --init-towers DIR   # start from earlier towers (another geometry too)

``--init-towers`` starts the towers from the two files of an earlier pretraining; when that one used
another patch size or grid, the patch embedding and the position table are resized to this model's
(`detris.weights.tiny_towers.fit_tiny_towers`), the rest is copied.

Writes into ``--out``: the training run (``metrics.jsonl``, ``best/``, ...), the two tower files and
``provenance.json`` (command, seed, minutes, steps, machine, validation quality of the whole model).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from detris.bundled import assets_dir
from detris.demo import demo_settings
from detris.engine.config import apply_overrides, config_from_dict
from detris.engine.loop import train
from detris.pretrained import from_pretrained
from detris.variants import get_variant
from detris.weights.tiny_towers import fit_tiny_towers, save_tiny_towers

# Scenes of this seed are never used by the demo (seed 0 by default) or by the bundled model's checks.
PRETRAIN_SEED = 20261201


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                return " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pretrain_spec(out_dir: Path, minutes: float, seed: int, train_images: int) -> dict:
    """The demo's settings with every tower weight trained, on ``train_images`` scenes of ``seed``."""
    spec = demo_settings()
    spec["model"].update(train_backbones=True, dinov2_weights=None, clip_weights=None)
    spec["data"]["synthetic"].update(train_images=train_images, val_images=100, test_images=0, seed=seed)
    spec["train"].update(seed=seed, max_minutes=minutes, epochs=1000)
    spec["output"].update(dir=str(out_dir), tensorboard=False)
    return spec


def _init_record(source: Path | None) -> dict | str | None:
    """What the towers started from: the earlier run's provenance record when it has one."""
    if source is None:
        return None
    record = source / "provenance.json"
    return json.loads(record.read_text()) if record.is_file() else str(source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pretrain-tiny", help="output directory")
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-time budget of the training")
    parser.add_argument("--seed", type=int, default=PRETRAIN_SEED, help="seed of the scenes and the training")
    parser.add_argument("--train-images", type=int, default=6000, help="number of training scenes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a setting, as `detris train --set`")
    parser.add_argument("--init-towers", type=Path, default=None, metavar="DIR",
                        help="start the towers from the two tower files in DIR (resized to this geometry)")
    parser.add_argument("--install", action="store_true", help="copy the towers into the package's assets")
    args = parser.parse_args(argv)

    out_dir = Path(args.out)
    spec = apply_overrides(pretrain_spec(out_dir, args.minutes, args.seed, args.train_images), args.overrides)
    if args.init_towers is not None:
        config = get_variant(spec["model"]["variant"], **spec["model"]["overrides"])
        paths = fit_tiny_towers(args.init_towers, config, out_dir)
        spec["model"].update(dinov2_weights=str(paths["dinov2"]), clip_weights=str(paths["clip"]))
    start = time.time()
    summary = train(config_from_dict(spec))
    model = from_pretrained(out_dir / "best")
    provenance = {
        "command": "python tools/pretrain_tiny.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "init_towers": _init_record(args.init_towers),
        "train_images": args.train_images,
        "minutes": round(summary["train_minutes"], 2),
        "wall_minutes": round((time.time() - start) / 60, 2),
        "steps": summary["global_step"],
        "best_val": summary["best"],
        "last_val": summary["last_val"],
        "machine": f"{_cpu_model()}, {torch.get_num_threads()} threads, flags: {_cpu_flags()}",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    meta = {"provenance": json.dumps(provenance, sort_keys=True)}
    paths = save_tiny_towers(model, out_dir, meta)
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))
    if args.install:
        for path in paths.values():
            shutil.copyfile(path, assets_dir() / path.name)
        shutil.copyfile(out_dir / "provenance.json", assets_dir() / "detris-tiny-synthetic-towers.json")
        print(f"installed the towers into {assets_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
