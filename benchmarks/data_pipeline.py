"""Throughput of the training data pipeline: decode + letterbox + mask + tokenize.

Measures samples/s of `ReferSegDataset` in train mode (one random sentence per ref, the official
training item) at the official input size 448 through a ``DataLoader`` (batch 8, the official
per-GPU batch) with 0, 1 and 2 worker processes, on a synthetic REFER dataset of COCO-like JPEGs
(640x480 by default, polygon masks) that the script writes first. It also splits one item's cost into
its stages (in this process, no DataLoader) to show where the time goes.

Usage::

    python benchmarks/data_pipeline.py                      # 200 images, workers 0 1 2, table only
    python benchmarks/data_pipeline.py --json data_pipeline.json --epochs 2
    python benchmarks/data_pipeline.py --data-dir /tmp/bench-refer   # keep / reuse the generated data

Numbers: "samples/s" counts items after the first batch has arrived, over the time from the first batch
to the last (steady state); "startup" is the time to the first batch (worker start-up + first items);
"epoch samples/s" is items over the whole epoch including start-up.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from _bench import cpu_model_name as cpu_model  # benchmarks/ is on sys.path when run as a script
from detris.data import ReferSegDataset, collate, load_refer
from detris.data.images import load_image
from detris.data.synthetic import write_refer_layout
from detris.data.transforms import letterbox_image, letterbox_mask, normalize_image
from detris.tokenizer import tokenize

DATASET = "refcoco"  # folder name, so that `load_refer(root, "refcoco")` reads it with refs(unc).p


def make_data(root: Path, num_images: int, height: int, width: int, seed: int) -> Path:
    """Write (or reuse) a REFER-layout train split of ``num_images`` JPEGs; returns the image root."""
    marker = root / DATASET / "instances.json"
    images = root / "images"
    if marker.is_file():
        n = len(json.loads(marker.read_text())["images"])
        if n == num_images:
            print(f"reusing {n} images in {root}")
            return images
        raise SystemExit(f"{root} holds {n} images, not {num_images}; pick another --data-dir or delete it")
    t = time.perf_counter()
    lay = write_refer_layout(
        root, DATASET, splits={"train": num_images}, seed=seed, image_size=(height, width),
        image_format="jpg", segmentation="polygon",  # COCO: JPEG images, mostly polygon masks
    )
    print(f"wrote {lay.num_images} images ({height}x{width} JPEG), {lay.num_refs} refs, "
          f"{lay.num_sentences} sentences to {root} in {time.perf_counter() - t:.1f} s")
    return lay.image_root


def time_loader(dataset: ReferSegDataset, batch_size: int, workers: int, epochs: int, seed: int) -> dict[str, Any]:
    """Iterate ``epochs`` epochs; returns the median steady-state and whole-epoch throughput."""
    steady, whole, startup = [], [], []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
            generator=torch.Generator().manual_seed(seed + epoch), drop_last=False,
        )
        t0 = time.perf_counter()
        t_first: float | None = None
        n_first = n_total = 0
        for batch in loader:
            n = batch["image"].shape[0]
            n_total += n
            if t_first is None:
                t_first, n_first = time.perf_counter(), n
        t_end = time.perf_counter()
        assert t_first is not None, "empty dataset"
        steady.append((n_total - n_first) / max(t_end - t_first, 1e-9))
        whole.append(n_total / (t_end - t0))
        startup.append(t_first - t0)
    return {
        "workers": workers,
        "samples_per_s": round(statistics.median(steady), 1),
        "epoch_samples_per_s": round(statistics.median(whole), 1),
        "startup_s": round(statistics.median(startup), 3),
        "items_per_epoch": len(dataset),
        "epochs": epochs,
    }


def stage_breakdown(dataset: ReferSegDataset, items: int, input_size: int, word_len: int) -> dict[str, float]:
    """Milliseconds per item of each stage, run directly (one process, no DataLoader)."""
    refer = dataset.refer
    totals = {"decode": 0.0, "mask": 0.0, "letterbox_image": 0.0, "letterbox_mask": 0.0,
              "normalize": 0.0, "tokenize": 0.0}
    ref_ids = list(refer.refs)[:items]
    for ref_id in ref_ids:
        path = refer.image_path(ref_id, dataset.image_root)
        t = time.perf_counter(); img = load_image(path); totals["decode"] += time.perf_counter() - t
        t = time.perf_counter(); mask = refer.get_mask(ref_id); totals["mask"] += time.perf_counter() - t
        t = time.perf_counter(); warped, mat, _ = letterbox_image(img, input_size)
        totals["letterbox_image"] += time.perf_counter() - t
        t = time.perf_counter(); letterbox_mask(mask, mat, input_size); totals["letterbox_mask"] += time.perf_counter() - t
        t = time.perf_counter(); normalize_image(warped); totals["normalize"] += time.perf_counter() - t
        sent = refer.refs[ref_id]["sentences"][0]["sent"]
        t = time.perf_counter(); tokenize([sent], context_length=word_len); totals["tokenize"] += time.perf_counter() - t
    out = {k: round(1000 * v / len(ref_ids), 3) for k, v in totals.items()}
    out["total"] = round(sum(out.values()), 3)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=200, help="synthetic images to generate (default 200)")
    p.add_argument("--image-size", default="480x640", help="HxW of the generated JPEGs (default 480x640)")
    p.add_argument("--input-size", type=int, default=448, help="model input side (official 448)")
    p.add_argument("--word-len", type=int, default=17, help="token length (official 17)")
    p.add_argument("--batch-size", type=int, default=8, help="DataLoader batch (official 8 per GPU)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to time")
    p.add_argument("--epochs", type=int, default=1, help="epochs per worker count (median reported)")
    p.add_argument("--stage-items", type=int, default=50, help="items for the per-stage breakdown (0: skip)")
    p.add_argument("--data-dir", default=None, help="where to write / reuse the data (default: a temp dir)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of this process (matters for --workers 0; workers use 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        height, width = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--image-size must be HxW, e.g. 480x640; got {args.image_size!r}") from None
    if args.num_images < 1 or args.batch_size < 1 or args.epochs < 1 or min(args.workers) < 0:
        raise SystemExit("need --num-images, --batch-size, --epochs >= 1 and --workers >= 0")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="detris-bench-")
        root = Path(tmp.name)
    else:
        root = Path(args.data_dir)
    try:
        image_root = make_data(root, args.num_images, height, width, args.seed)
        refer = load_refer(root, DATASET)
        dataset = ReferSegDataset(refer, "train", mode="train", image_root=image_root,
                                  input_size=args.input_size, word_len=args.word_len, seed=args.seed)
        tokenize(["warm up the tokenizer"], context_length=args.word_len)  # vocabulary load is not per item
        stages = stage_breakdown(dataset, args.stage_items, args.input_size, args.word_len) if args.stage_items else {}
        rows: list[dict[str, Any]] = []
        for w in args.workers:
            row = time_loader(dataset, args.batch_size, w, args.epochs, args.seed)
            rows.append(row)
            print(f"workers={w}: {row['samples_per_s']} samples/s", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    info = {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(["python benchmarks/data_pipeline.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    config = {"num_images": args.num_images, "image_size": [height, width], "input_size": args.input_size,
              "word_len": args.word_len, "batch_size": args.batch_size, "items_per_epoch": len(dataset)}

    print()
    print(f"{info['cpu']} ({info['cpu_count']} CPUs), torch {info['torch']}, opencv {info['opencv']}, "
          f"load avg {info['load_average_1m']}")
    print(f"{args.num_images} JPEGs {height}x{width} -> {args.input_size}x{args.input_size}, batch {args.batch_size}, "
          f"{len(dataset)} items/epoch")
    print(f"{'workers':>8}{'samples/s':>12}{'epoch samples/s':>17}{'startup s':>11}")
    for r in rows:
        print(f"{r['workers']:>8}{r['samples_per_s']:>12.1f}{r['epoch_samples_per_s']:>17.1f}{r['startup_s']:>11.3f}")
    if stages:
        print("per-item stages (ms, one process): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": info, "config": config, "results": rows, "stages_ms": stages},
                                  indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
