"""``detris demo``: the synthetic end-to-end demo (no downloads, CPU only).

Generates procedural referring scenes, trains ``detris-tiny`` on them (its towers, pretrained on other
synthetic scenes, frozen; adapters, neck, decoder and head trained, as DETRIS-B is), segments validation
scenes through `Predictor` (the official pre- and post-processing), then writes overlays
(``overlay_*.png``: image, expression, predicted mask tinted, true mask outlined) into ``out_dir``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from .bundled import packaged_config
from .data.datasets import ReferSegDataset
from .data.refer import ReferAnnotations, load_refer
from .data.synthetic import Scene, SyntheticScenes
from .evaluate import METRIC_KEYS, evaluate
from .metrics import PR_KEYS
from .modeling import DETRIS
from .predictor import Predictor
from .visualize import save_overlay

__all__ = ["run_demo", "demo_settings", "write_overlays"]


def write_overlays(model: DETRIS, scenes: list[Scene], out_dir: Path, max_items: int = 8) -> list[Path]:
    """Segment the first expression of every object of ``scenes`` and write ``overlay_*.png`` files."""
    predictor = Predictor(model, device="cpu")
    paths: list[Path] = []
    for scene in scenes:
        texts = [obj.expressions[0] for obj in scene.objects]
        masks = [p.mask for p in predictor.predict(scene.image, texts)]
        for k, (obj, pred) in enumerate(zip(scene.objects, masks, strict=True)):
            if len(paths) >= max_items:
                return paths
            name = f"overlay_{scene.index:03d}_{k}.png"
            paths.append(save_overlay(out_dir / name, scene.image, pred, obj.expressions[0], obj.mask))
    return paths


def score_held_out(model: DETRIS, refer: ReferAnnotations, image_root: Path, batch_size: int,
                   progress: bool = True) -> dict | None:
    """Score ``model`` on the synthetic set's ``test`` split with the official test protocol (every
    sentence of every ref): ``{mIoU, oIoU, Pr@50..90, expressions, scenes}``, or None when the set has no
    test split.

    The validation during training reads the first sentence of each ref of a few dozen scenes, and the
    best of its epochs is kept: a number that varies by a few points with the scenes drawn. The held-out
    split is larger and is read once, after training, so it is the demo's measure of quality.
    """
    if "test" not in refer.splits:
        return None
    cfg = model.config
    test_ds = ReferSegDataset(refer, "test", "test", image_root, input_size=cfg.image_size, word_len=cfg.word_len)
    scores = evaluate(model, test_ds, batch_size=batch_size, device="cpu", progress=progress, batch_invariant=False)
    return {k: scores[k] for k in (*METRIC_KEYS, "expressions")} | {"scenes": len(test_ds.image_paths())}


#: The demo's run: the packaged ``configs/synthetic-tiny.yaml`` (also ``detris train synthetic-tiny``).
#: Why these settings, and what each was measured to give: docs/demo.md.
DEMO_CONFIG = "synthetic-tiny"
#: The one-minute version the tests run: tiny scenes, ~120 small steps; it learns enough to beat both
#: baselines. ``model.overrides.*`` keys keep the config's other overrides (the towers' geometry).
QUICK_OVERRIDES = (
    "model.overrides.image_size=64",
    "data.synthetic.train_images=48", "data.synthetic.val_images=6", "data.synthetic.test_images=6",
    "data.synthetic.image_size=[64, 64]", "data.synthetic.max_objects=3",
    "train.epochs=4", "train.batch_size=4", "train.lr=2.0e-3",
)


def demo_settings(quick: bool = False) -> dict:
    """A fresh copy of the demo's run settings as plain data (``quick``: the test's one-minute version)."""
    from .engine.config import apply_overrides

    spec = yaml.safe_load(packaged_config(DEMO_CONFIG).read_text(encoding="utf-8"))
    return apply_overrides(spec, list(QUICK_OVERRIDES)) if quick else spec


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and k != "overrides" else v
    return out


def _baselines(val_ds) -> dict[str, float]:
    """mIoU of predicting nothing (0) and of predicting the whole image (mean object share)."""
    ious = []
    for i in range(len(val_ds)):
        m = val_ds[i]["mask_orig"].numpy()
        ious.append(float(m.sum()) / (m.size + 1e-6))
    return {"empty_mask_mIoU": 0.0, "whole_image_mIoU": float(np.mean(ious)) if ious else float("nan")}


def run_demo(
    out_dir: Path = Path("runs/demo"),
    seed: int = 0,
    minutes: float = 10.0,
    quick: bool = False,
    overrides: Sequence[str] = (),
) -> dict:
    """Train ``detris-tiny`` on synthetic scenes (CPU), validate, score the held-out scenes, and write
    results into ``out_dir``.

    Writes ``overlay_*.png`` (validation scenes: expression, predicted mask tinted, true mask outlined),
    ``metrics.json`` (``test``: mIoU/oIoU/Pr@ of the best model on the held-out scenes; ``val``: of the
    best epoch on the validation scenes; baselines, timings), ``curves.png`` and the run files
    (``metrics.jsonl``, ``checkpoints/``, ``best/`` model directory, ``data/`` scenes).

    Args:
        out_dir: output folder (created; must be writable).
        seed: seeds the scenes and the training.
        minutes: wall-time budget of the training loop.
        quick: a one-minute version on tiny images (for tests).
        overrides: ``section.key=value`` changes to the demo's settings (as ``detris train --set``),
            e.g. to compare settings with ``benchmarks/demo_quality.py``.
    """
    from .engine.config import apply_overrides, config_from_dict
    from .engine.loop import train
    from .pretrained import from_pretrained
    from .utils import check_output_dir

    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    spec = _merge(demo_settings(quick), {"train": {"seed": seed, "max_minutes": minutes},
                         "data": {"synthetic": {"seed": seed}},
                         "output": {"dir": str(out_dir), "tensorboard": False}})
    cfg = config_from_dict(apply_overrides(spec, list(overrides)))
    summary = train(cfg)

    model = from_pretrained(out_dir / "best")
    refer = load_refer(out_dir / "data", "refcoco")
    size = model.config.image_size
    val_ds = ReferSegDataset(refer, "val", "val", out_dir / "data" / "images", input_size=size,
                             word_len=model.config.word_len)
    s = cfg.data.synthetic
    scenes = SyntheticScenes(s.train_images + s.val_images, seed=s.seed, image_size=tuple(s.image_size),
                             min_objects=s.min_objects, max_objects=s.max_objects, max_expressions=s.max_expressions)
    val_scenes = [scenes[s.train_images + i] for i in range(min(3, s.val_images))]
    paths = write_overlays(model, val_scenes, out_dir, max_items=8)
    test = score_held_out(model, refer, out_dir / "data" / "images", cfg.train.val_batch_size, cfg.output.progress)

    losses = [json.loads(l)["loss"] for l in (out_dir / "metrics.jsonl").read_text().splitlines()
              if '"kind": "train"' in l]
    result = {
        "test": test,
        "val": summary["best"] | {"metrics_of": "best epoch"},
        "last_val": summary["last_val"],
        "baselines": _baselines(val_ds),
        "train_minutes": summary["train_minutes"],
        "steps": summary["global_step"],
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-5:])) if losses else None,
        "overlays": [str(p) for p in paths],
        "curves": summary.get("curves"),
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if test is not None:
        print(f"demo: held-out test mIoU {test['mIoU']:.3f}, oIoU {test['oIoU']:.3f}, "
              + ", ".join(f"{k} {test[k]:.3f}" for k in PR_KEYS)
              + f" ({test['expressions']} expressions of {test['scenes']} scenes no training saw)")
    print(f"demo: val mIoU {summary['last_val'].get('mIoU', float('nan')):.3f} (best {summary['best']['mIoU']:.3f}; "
          f"whole-image baseline {result['baselines']['whole_image_mIoU']:.3f}) after {summary['global_step']} steps "
          f"/ {summary['train_minutes']:.1f} min; overlays, metrics.json and curves.png in {out_dir}")
    return result
