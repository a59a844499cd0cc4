"""Per-step time of two-process DDP training with and without `detris.engine.distributed.keep_grad_layouts`.

Without it, oneDNN hands back some convolution weight gradients channels-last; DDP then warns "Grad
strides do not match bucket view strides" and copies those gradients into its buckets on every step.
With it, a hook re-lays them out once before they are accumulated. Both configurations train
``configs/synthetic-tiny.yaml`` for the same number of optimizer steps under
``torch.distributed.run --standalone --nproc-per-node 2`` (gloo, one thread per process), alternated
over the rounds so that a change in the machine's load hits both.

Reported per configuration: the median over the rounds of the per-step time (from the ``minutes`` of
``metrics.jsonl``, first ``--warmup`` steps left out) and whether torch printed the stride warning.

Usage::

    python benchmarks/ddp_grad_layout.py --steps 120 --rounds 3 --json ddp-layout.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from _bench import fmt, machine_info, median, print_table, write_json  # benchmarks/ is on sys.path

REPO = Path(__file__).resolve().parent.parent
WARNING = "Grad strides do not match bucket view strides"
CONFIGS = ("keep_grad_layouts", "without")


def worker(config: str, train_args: list[str]) -> None:
    """One rank: train, with the library's hook or with it replaced by a no-op."""
    import detris.engine.loop as loop
    from detris.cli import main as cli_main

    if config == "without":
        loop.keep_grad_layouts = lambda module: 0  # type: ignore[assignment]
    sys.exit(cli_main(["train", *train_args]))


def step_ms(metrics: Path, warmup: int) -> float:
    """Mean time per optimizer step after the first ``warmup`` steps, from the logged minutes."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    first, last = train[warmup], train[-1]
    return 60_000 * (last["minutes"] - first["minutes"]) / (last["global_step"] - first["global_step"])


def run_round(config: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    train_args = ["configs/synthetic-tiny.yaml", "--set", f"output.dir={out}"]
    for item in [f"train.max_steps={args.steps}", "train.max_minutes=null", "train.evaluate=false",
                 "train.num_threads=1", f"train.batch_size={args.batch_size}", "output.progress=false",
                 "output.plot=false", "output.tensorboard=false", *args.set]:
        train_args += ["--set", item]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), "--worker", config, "--", *train_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{config} round failed:\n{done.stderr[-3000:]}")
    return {"config": config, "step ms": step_ms(out / "metrics.jsonl", args.warmup),
            "stride warning": WARNING in done.stderr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (8 a process)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides for both configurations (repeatable)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(args.worker, [a for a in rest if a != "--"])
        return
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ddp-layout-") as tmp:
        for r in range(args.rounds):
            for config in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
                rounds.append(run_round(config, args, Path(tmp) / f"{config}-{r}"))
                print(json.dumps({k: fmt(v) for k, v in rounds[-1].items()}), flush=True)
    rows = [{"config": c, "step ms (median)": median([x["step ms"] for x in rounds if x["config"] == c]),
             "rounds": args.rounds, "stride warning": any(x["stride warning"] for x in rounds if x["config"] == c)}
            for c in CONFIGS]
    print_table("DDP (gloo, 2 processes x 1 thread), synthetic-tiny", rows, list(rows[0]))
    write_json(args.json, {"machine": machine_info(torch.device("cpu")), "args": vars(args),
                           "rounds": rounds, "results": rows})


if __name__ == "__main__":
    main()
