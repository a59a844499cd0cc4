"""Quality of the synthetic demo: validation mIoU against training time and steps.

Runs the training of ``detris demo`` (the same settings, the same code path: `detris.demo.run_demo`)
once per seed with a given wall-time budget, then prints one table row per validation (every epoch
and at the stop) and a summary per seed, and writes everything as JSON.

The demo's budget is wall time, so the result depends on how busy the machine is: the script records
the load average (1 minute) before and after every run, and the CPU and thread settings.

Usage::

    python benchmarks/demo_quality.py                          # seed 0, 10 minutes
    python benchmarks/demo_quality.py --minutes 2 --seeds 0 1 2 --json demo_quality.json
    python benchmarks/demo_quality.py --minutes 3 --set train.batch_size=8   # try another setting
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from _bench import cpu_model_name as cpu_model  # benchmarks/ is on sys.path when run as a script
from _bench import load_average
from detris.demo import run_demo
from detris.engine.tracking import read_metrics


def run_one(out_dir: Path, seed: int, minutes: float, quick: bool, overrides: Sequence[str]) -> dict[str, Any]:
    """Train the demo once; return its summary and the validation curve."""
    load_before = (load_average() or [None])[0]  # 1-minute
    result = run_demo(out_dir=out_dir, seed=seed, minutes=minutes, quick=quick, overrides=list(overrides))
    load_after = (load_average() or [None])[0]
    curve = [
        {"epoch": r["epoch"], "step": r["global_step"], "minutes": r.get("minutes"), "mIoU": r["mIoU"],
         "oIoU": r["oIoU"], "Pr@50": r["Pr@50"], "Pr@90": r["Pr@90"]}
        for r in read_metrics(out_dir / "metrics.jsonl") if r.get("kind") == "val"
    ]
    return {
        "seed": seed,
        "out_dir": str(out_dir),
        "steps": result["steps"],
        "train_minutes": result["train_minutes"],
        "test_mIoU": (result["test"] or {}).get("mIoU", float("nan")),
        "test_oIoU": (result["test"] or {}).get("oIoU", float("nan")),
        "val_mIoU": result["last_val"].get("mIoU"),
        "val_oIoU": result["last_val"].get("oIoU"),
        "best_mIoU": result["val"].get("mIoU"),
        "whole_image_mIoU": result["baselines"]["whole_image_mIoU"],
        "loss_first": result["loss_first"],
        "loss_last": result["loss_last"],
        "load_before": load_before,
        "load_after": load_after,
        "curve": curve,
    }


def print_tables(runs: list[dict[str, Any]]) -> None:
    print()
    print("| seed | epoch | step | minutes | val mIoU | oIoU | Pr@50 | Pr@90 |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        for p in run["curve"]:
            mins = f"{p['minutes']:.2f}" if p["minutes"] is not None else "-"
            print(f"| {run['seed']} | {p['epoch']} | {p['step']} | {mins} | {p['mIoU']:.3f} | {p['oIoU']:.3f} "
                  f"| {p['Pr@50']:.3f} | {p['Pr@90']:.3f} |")
    print()
    print("| seed | steps | training min | held-out test mIoU | oIoU | val mIoU (last) | best | whole-image baseline "
          "| loss first -> last | load before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['seed']} | {run['steps']} | {run['train_minutes']:.2f} | {run['test_mIoU']:.3f} "
              f"| {run['test_oIoU']:.3f} | {run['val_mIoU']:.3f} "
              f"| {run['best_mIoU']:.3f} | {run['whole_image_mIoU']:.3f} "
              f"| {run['loss_first']:.3f} -> {run['loss_last']:.3f} | {run['load_before']} / {run['load_after']} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per run (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the runs (seed_<n>/ each); default a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="the test's quick version (56 px, tiny data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a demo setting (repeatable), e.g. train.lr=2e-3")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="demo_quality_") as tmp:
        root = args.out if args.out is not None else Path(tmp)
        runs = []
        for seed in args.seeds:
            run = run_one(root / f"seed_{seed}", seed, args.minutes, args.quick, args.overrides)
            runs.append(run)
            print(f"seed {seed}: held-out test mIoU {run['test_mIoU']:.3f}, val mIoU {run['val_mIoU']:.3f} after {run['steps']} steps / "
                  f"{run['train_minutes']:.2f} min (load {run['load_before']} -> {run['load_after']})", flush=True)
    print_tables(runs)
    ious = [r["test_mIoU"] for r in runs]
    print(f"\nheld-out test mIoU over {len(ious)} seed(s): min {min(ious):.3f}, mean {sum(ious) / len(ious):.3f}, "
          f"max {max(ious):.3f}; budget {args.minutes} min")
    if args.json is not None:
        report = {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "minutes": args.minutes,
            "quick": args.quick,
            "overrides": args.overrides,
            "runs": runs,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
