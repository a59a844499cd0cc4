"""Throughput of segmenting a collection: the per-image loop against the ``detris predict --input`` pipeline.

For each model (random weights at the real sizes: detris-tiny, DETRIS-B at 448) and each number of
processes (1, or 2 under ``torch.distributed.run`` on this host), the same manifest of JPEG images
(640x480 by default, 1-3 expressions each) is segmented three ways:

* ``loop``: what ``detris predict`` did before collections: per image, `Predictor.predict` (read,
  letterbox, one forward for the image's expressions, post-processing), then the records (RLE, box,
  score) written in the same thread; with 2 processes each takes every other image;
* ``pipeline``: `detris.collection.segment_collection` as ``detris predict --input`` runs it (loader
  workers, forwards filled across images, a writer thread), batch-invariant (one expression per
  forward, masks equal to ``--image``'s);
* ``pipeline-batched``: the same with ``batch_invariant=False`` (one forward per batch).

Reported: images/s and expressions/s over the wall time of the segmentation (model loading excluded;
loader start-up, writing and, for the pipeline, the final merge included), and "busy": the share of
that wall time during which the model's forward was running (summed over the forward calls of each
process, averaged over the processes).

Usage::

    python benchmarks/predict_throughput.py                                 # both models, 1 and 2 processes
    python benchmarks/predict_throughput.py --variants detris-tiny --images 64 --json tiny.json

Each configuration runs in a fresh process (``torch.distributed.run`` for two), so that one does not
warm the caches of the next.

``--stages`` also times each stage alone in one process (``read``: decoding and letterboxing an image;
the forward per expression at batch 1 and at ``--batch-size``; ``post``: probability map, inverse
letterbox and threshold of an expression; ``record``: its RLE, box, score and JSON line; with one
thread and with torch's default) and derives the most any pipeline can gain over the loop on this machine:
with every stage on one thread and the ``os.cpu_count()`` cores all busy, the expressions per second
cannot exceed ``cores / (sum of the stages' one-thread times)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from _bench import (  # benchmarks/ is on sys.path
    SENTENCES,
    fmt,
    machine_info,
    print_table,
    randomize_,
    repeat_timed,
    write_json,
)
from detris.build import build_model
from detris.collection import (
    CollectionOptions,
    ManifestEntry,
    Ranks,
    join_ranks,
    leave_ranks,
    prediction_record,
    read_manifest,
    segment_collection,
)
from detris.data.images import load_image
from detris.inference import forward_logits, prepare_image
from detris.postprocess import binarize, logits_to_probability
from detris.predictor import Prediction, Predictor
from detris.tokenizer import tokenize

MODES = ("loop", "pipeline", "pipeline-batched")


def write_manifest(root: Path, images: int, height: int, width: int, seed: int) -> Path:
    """``root/manifest.jsonl`` over ``images`` smooth JPEG pictures with 1-3 expressions each."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    lines = []
    for i in range(images):
        phase = rng.uniform(0, 6, 3)
        img = np.stack([128 + 100 * np.sin(7 * xx + p) * np.cos(5 * yy - p) for p in phase], -1)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"img{i:04d}.jpg", quality=90)
        texts = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 3)]
        lines.append(json.dumps({"image": f"img{i:04d}.jpg", "expressions": texts}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def save_model(variant: str, out: Path, seed: int) -> Path:
    """``variant`` with random weights at a trained model's scale, saved with ``save_pretrained``."""
    torch.manual_seed(seed)
    model = randomize_(build_model(variant).eval(), seed)
    model.save_pretrained(out)
    return out


class ForwardClock:
    """Adds up the wall time spent inside ``model.forward`` (hooks before and after each call; on a GPU
    the hooks wait for the device, so that the time is the forward's and not its launch's)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        model.register_forward_pre_hook(self._before)
        model.register_forward_hook(self._after)

    def _before(self, *_: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _after(self, *_: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def per_image_loop(predictor: Predictor, manifest_path: Path, out: Path, ranks: Ranks) -> tuple[int, int]:
    """The loop ``detris predict`` ran before collections, with the records written inline."""
    manifest = read_manifest(manifest_path, predictor.word_len)
    images = expressions = 0
    with open(out / f"loop.rank{ranks.rank}.jsonl", "w", encoding="utf-8") as f:
        for entry in manifest.entries[ranks.rank :: ranks.world_size]:
            # One forward for the image's expressions, as that loop ran them.
            for pred in predictor.predict(entry.path, list(entry.expressions), batch_invariant=False):
                f.write(json.dumps(prediction_record(entry.image, pred)) + "\n")
                expressions += 1
            images += 1
    return images, expressions


def worker(spec: dict[str, Any]) -> None:
    """One rank of one configuration: time the mode, append a JSON line to ``spec["result"]``."""
    ranks = join_ranks()
    device = spec["device"]
    if device == "cuda" and ranks.world_size > 1:
        device = f"cuda:{ranks.local_rank}"
    predictor = Predictor.from_pretrained(spec["model"], device=device, dtype=spec["dtype"])
    clock = ForwardClock(predictor.model, predictor.device)
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    start = time.perf_counter()
    if spec["mode"] == "loop":
        images, expressions = per_image_loop(predictor, Path(spec["manifest"]), out, ranks)
    else:
        options = CollectionOptions(batch_size=spec["batch_size"], workers=spec["workers"], progress=False,
                                    batch_invariant=spec["mode"] == "pipeline")
        summary = segment_collection(predictor, spec["manifest"], out, options, ranks)
        images, expressions = summary["images"], summary["expressions"]
    wall = time.perf_counter() - start
    ranks.barrier()
    total_wall = time.perf_counter() - start
    row = {"rank": ranks.rank, "images": images, "expressions": expressions, "wall_s": wall,
           "total_wall_s": total_wall, "forward_s": clock.seconds, "forwards": clock.calls,
           "threads": torch.get_num_threads()}
    with open(spec["result"], "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    leave_ranks()


def _ms_each(fn: Any, count: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``fn()``, in milliseconds per one of the ``count`` things it does."""
    return 1000 * min(repeat_timed(fn, torch.device("cpu"), repeats, warmup=0)) / count


def stage_costs(model_dir: str, entries: list[ManifestEntry], batch_size: int, threads: int) -> dict[str, Any]:
    """Milliseconds of each stage alone with ``threads`` torch threads (best of 3 passes)."""
    torch.set_num_threads(threads)
    predictor = Predictor.from_pretrained(model_dir, device="cpu")
    model, size = predictor.model, predictor.image_size
    prepared = [prepare_image(load_image(e.path), size) for e in entries]
    texts = [t for e in entries for t in e.expressions][:batch_size]
    images = torch.stack([prepared[i % len(prepared)][0] for i in range(len(texts))])
    tokens = tokenize(texts, context_length=predictor.word_len)
    boxes = [prepared[i % len(prepared)][1] for i in range(len(texts))]
    with torch.inference_mode():
        forward_logits(model, images, tokens)  # warm-up
        batch1 = _ms_each(lambda: [forward_logits(model, images[i : i + 1], tokens[i : i + 1])
                                   for i in range(len(texts))], len(texts))
        batched = _ms_each(lambda: forward_logits(model, images, tokens), len(texts))
        logits = forward_logits(model, images, tokens).logits
    probs = logits_to_probability(logits, boxes)
    preds = [Prediction(t, binarize(p), p) for t, p in zip(texts, probs)]
    return {
        "threads": threads,
        "read ms/image": _ms_each(lambda: [prepare_image(load_image(e.path), size) for e in entries],
                                              len(entries)),
        "forward b1 ms/expr": batch1,
        f"forward b{len(texts)} ms/expr": batched,
        "post ms/expr": _ms_each(lambda: [binarize(p) for p in logits_to_probability(logits, boxes)],
                                         len(texts)),
        "record ms/expr": _ms_each(lambda: [json.dumps(prediction_record("x.jpg", p)) for p in preds], len(preds)),
    }


def pipeline_ceiling(stages: dict[str, Any], expressions_per_image: float, cores: int) -> dict[str, float]:
    """Most expressions/s any pipeline can reach when every stage runs on one thread and all cores are
    busy: ``cores / (sum of the one-thread costs of one expression)``, batched and batch-invariant."""
    shared = stages["read ms/image"] / expressions_per_image + stages["post ms/expr"] \
        + stages["record ms/expr"]
    batched = next(v for k, v in stages.items() if k.startswith("forward") and not k.startswith("forward b1 "))
    return {"ceiling batched expr/s": 1000 * cores / (shared + batched),
            "ceiling invariant expr/s": 1000 * cores / (shared + stages["forward b1 ms/expr"])}


def run_config(spec: dict[str, Any], processes: int, tmp: Path) -> dict[str, Any]:
    """Run one configuration in fresh processes and combine the ranks' rows."""
    name = f"{Path(spec['model']).name}-{spec['mode']}-{processes}p"
    spec = {**spec, "out": str(tmp / "out" / name), "result": str(tmp / f"{name}.jsonl")}
    spec_file = tmp / f"{name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    script = [str(Path(__file__).resolve()), "--worker", str(spec_file)]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               *script]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in Path(spec["result"]).read_text().splitlines()]
    wall = max(r["total_wall_s"] for r in rows)
    images, expressions = sum(r["images"] for r in rows), sum(r["expressions"] for r in rows)
    busy = sum(r["forward_s"] / r["total_wall_s"] for r in rows) / len(rows)
    return {"model": Path(spec["model"]).name, "mode": spec["mode"], "processes": processes,
            "threads/process": rows[0]["threads"], "images": images, "wall s": wall, "images/s": images / wall,
            "expr/s": expressions / wall, "forward busy %": 100 * busy, "forwards": sum(r["forwards"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["detris-tiny", "detris-b"])
    parser.add_argument("--images", type=int, nargs="+", default=[48, 8],
                        help="images per variant (one number for all, or one per variant)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="loader workers per process (pipeline modes)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (each rank takes cuda:LOCAL_RANK)")
    parser.add_argument("--stages", action="store_true", help="also time each stage alone (see above)")
    parser.add_argument("--json", default=None, help="write machine, configuration and results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return
    counts = args.images if len(args.images) == len(args.variants) else args.images[:1] * len(args.variants)
    rows: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="predict-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        for variant, n in zip(args.variants, counts):
            manifest = write_manifest(tmp / f"data-{variant}", n, *args.size, seed=0)
            model = save_model(variant, tmp / variant, seed=0)
            for processes in args.processes:
                for mode in args.modes:
                    spec = {"model": str(model), "manifest": str(manifest), "mode": mode, "dtype": args.dtype,
                            "device": args.device, "batch_size": args.batch_size, "workers": args.workers}
                    rows.append(run_config(spec, processes, tmp))
                    print(json.dumps({k: fmt(v) for k, v in rows[-1].items()}), flush=True)
            if args.stages:
                stages.extend(_stage_rows(variant, str(model), manifest, args.batch_size, rows))
    columns = ["model", "processes", "mode", "images", "wall s", "images/s", "expr/s", "forward busy %"]
    print_table(f"segmenting a collection ({args.device})", rows, columns)
    if stages:
        print_table("each stage alone (cpu)", stages, list(stages[0]))
    write_json(args.json, {"machine": machine_info(torch.device(args.device)), "args": vars(args), "results": rows,
                           "stages": stages})


def _stage_rows(variant: str, model: str, manifest: Path, batch_size: int,
                rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`stage_costs` at one thread and at torch's default, with the one-thread ceiling against the loop
    row of one process measured above (when there is one)."""
    entries = read_manifest(manifest).entries[:16]
    per_image = sum(len(e.expressions) for e in entries) / len(entries)
    default_threads = torch.get_num_threads()
    out = []
    for threads in sorted({1, default_threads}):
        row = {"model": variant, **stage_costs(model, entries, batch_size, threads)}
        if threads == 1:
            loop = [r["expr/s"] for r in rows if r["model"] == variant and r["mode"] == "loop" and r["processes"] == 1]
            for name, value in pipeline_ceiling(row, per_image, os.cpu_count() or 1).items():
                row[name] = value
                row[name.replace("expr/s", "x loop")] = value / loop[0] if loop else float("nan")
        out.append(row)
    torch.set_num_threads(default_threads)
    return out


if __name__ == "__main__":
    main()
