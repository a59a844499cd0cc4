"""Our DETRIS against the official implementation, on the same random weights, in one run.

For each variant both models are built with identical weights (the official one from backbone files
written in the official formats, then given every tensor of our state dict; see ``_official.py``) and:

- **eval forward** and **training step** (the engine's training task: forward with loss, backward,
  Adam on the trainable parameters; ``_bench.train_step_fn``) are timed ALTERNATELY (ours, official, ours, official, ...), so that a change of machine load hits
  both alike; the ratio is ours / official of the medians (and the median of the per-round ratios);
- the **logits** of both (float32, eval) are compared: max abs difference, and the logits' spread;
- the **peak RSS of a training step** of each is measured in a fresh subprocess (RSS high-water mark
  reset once the model, inputs and optimizer exist and one step has allocated the optimizer state).

The official code is not part of this repository: pass a checkout of it with ``--official PATH``
(https://github.com/jiaqihuang01/DETRIS). Its model package imports ``loguru`` and ``fvcore``, which
building and running the model does not use; where they are missing they are replaced by empty
stand-ins (``pip install loguru fvcore`` to use the real ones). It needs nothing else beyond torch,
numpy and PyYAML (for its config files); xFormers is optional. Run from the repository root with the
project's environment::

    python benchmarks/compare_official.py --official /path/to/DETRIS --json compare.json

or with another environment that has the official dependencies, putting ``src`` on the path::

    PYTHONPATH=src /path/to/venv/bin/python benchmarks/compare_official.py --official /path/to/DETRIS
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from typing import Any

import torch
from torch import Tensor, nn

import _bench as B
import _official as O

HERE = os.path.abspath(__file__)


def build_ours(variant: str, seed: int, state_file: str | None = None) -> nn.Module:
    """Our ``variant`` with random weights (``_bench.randomize_``) or the weights in ``state_file``."""
    from detris import build_model

    torch.manual_seed(seed)
    model = build_model(variant)
    if state_file is None:
        return B.randomize_(model, seed)
    model.load_state_dict(torch.load(state_file, weights_only=True), strict=True)
    return model


def data(variant: str, batch: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Images, token rows of the variant's ``word_len`` and target masks, the same for both models."""
    from detris import get_variant

    images = B.smooth_images(batch, size, seed=0)
    tokens = B.sample_tokens(batch, get_variant(variant).word_len)
    masks = B.sample_masks(batch, size, seed=1)
    return images, tokens, masks


def checkpointed_step(model: nn.Module, step, scope: str):
    """``step`` with our gradient checkpointing switched on (``scope``) for its duration."""

    def run() -> None:
        model.set_grad_checkpointing(True, scope=scope)
        try:
            step()
        finally:
            model.set_grad_checkpointing(False)

    return run


# ------------------------------------------------------------------------------------------ memory
def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one training step of one implementation, in its own process."""
    torch.set_num_threads(spec["threads"])
    ours = build_ours(spec["variant"], spec["seed"], spec["state_file"])
    if spec["impl"] == "official":
        with tempfile.TemporaryDirectory() as tmp:
            model, _ = O.build_official(spec["official"], spec["variant"], ours, tmp)
        del ours
    else:
        model = ours
        if spec["checkpointing"]:
            model.set_grad_checkpointing(True, scope=spec["checkpointing"])
    model.train()
    images, tokens, masks = data(spec["variant"], spec["batch"], spec["size"])
    step = B.train_step_fn(model, images, tokens, masks, official=spec["impl"] == "official")
    step()  # allocates the optimizer state
    gc.collect()
    B.trim_heap()
    resident = B.current_rss_bytes()
    reset = B.reset_peak_rss()
    times = [B.time_call(step, torch.device("cpu")) for _ in range(spec["steps"])]
    return {"peak_rss_gib": B.gib(B.peak_rss_bytes()), "rss_before_step_gib": B.gib(resident),
            "peak_is_lifetime": not reset, "step_s": B.median(times)}


# ------------------------------------------------------------------------------------------ compare
def compare_variant(args, variant: str, workdir: str) -> dict[str, Any]:
    cpu = torch.device("cpu")
    ours = build_ours(variant, args.seed)
    state_file = os.path.join(workdir, f"ours_{variant}.pt")
    torch.save(ours.state_dict(), state_file)
    official, stubbed = O.build_official(args.official, variant, ours, workdir)
    weight_diff = O.max_weight_difference(ours, official)
    images, tokens, masks = data(variant, args.batch, args.size)
    result: dict[str, Any] = {"variant": variant, "stubbed_modules": stubbed, "max_weight_difference": weight_diff}

    # --- eval: logits and alternating timing
    ours.eval(), official.eval()
    with torch.no_grad():
        mine, theirs = ours(images, tokens).logits, official(images, tokens)
    result["logits_max_abs_diff"] = (mine.double() - theirs.double()).abs().max().item()
    result["logits_std"] = theirs.std().item()
    result["logits_max_abs"] = theirs.abs().max().item()
    print(f"  {variant}: weights identical: {weight_diff == 0.0}; logits max |ours - official| "
          f"{result['logits_max_abs_diff']:.2e} (logit std {result['logits_std']:.2f})", flush=True)

    def forward(model: nn.Module):
        def run() -> Tensor:
            with torch.no_grad():
                return model(images, tokens)
        return run

    load = B.load_average()
    eval_times = B.alternate_timed({"ours": forward(ours), "official": forward(official)}, cpu, args.repeats,
                                   **quiet_rounds(args))
    result["eval"] = summarize(eval_times, load)
    print(f"  eval forward: ours {result['eval']['ours_s']:.3f} s, official {result['eval']['official_s']:.3f} s, "
          f"ratio {result['eval']['ratio']:.3f}", flush=True)

    # --- training step: alternating timing
    if not args.skip_train:
        ours.train(), official.train()
        steps = {"ours": B.train_step_fn(ours, images, tokens, masks),
                 "official": B.train_step_fn(official, images, tokens, masks, official=True)}
        for scope in args.ours_checkpointing:
            steps[f"ours_ckpt_{scope}"] = checkpointed_step(ours, steps["ours"], scope)
        steps["official"] = steps.pop("official")  # keep the official step last in each round
        load = B.load_average()
        train_times = B.alternate_timed(steps, cpu, args.train_repeats, **quiet_rounds(args))
        result["train"] = summarize(train_times, load)
        print(f"  train step: ours {result['train']['ours_s']:.2f} s, official {result['train']['official_s']:.2f} s, "
              f"ratio {result['train']['ratio']:.3f}", flush=True)
    del ours, official
    gc.collect()

    # --- peak memory of a training step, one process per implementation
    if not args.skip_memory:
        memory = {}
        impls = [("ours", None), ("official", None)] + [(f"ours_ckpt_{s}", s) for s in args.ours_checkpointing]
        for name, scope in impls:
            spec = {"variant": variant, "impl": "official" if name == "official" else "ours",
                    "checkpointing": scope, "seed": args.seed, "state_file": state_file,
                    "official": args.official, "threads": args.threads, "batch": args.batch,
                    "size": args.size, "steps": args.memory_steps}
            memory[name] = B.run_worker(HERE, {"kind": "memory", **spec})
            print(f"  peak RSS of a training step, {name}: {memory[name]['peak_rss_gib']:.2f} GiB "
                  f"(resident before the step {memory[name]['rss_before_step_gib']:.2f} GiB)", flush=True)
        for name in memory:
            if name != "official":
                memory[name]["ratio"] = memory[name]["peak_rss_gib"] / memory["official"]["peak_rss_gib"]
        result["memory"] = memory
    return result


def quiet_rounds(args) -> dict[str, Any]:
    """Keyword arguments of ``_bench.alternate_timed`` that discard rounds disturbed by other jobs."""
    return {"max_foreign_cores": args.max_foreign_cores, "max_discarded": args.max_discarded}


def summarize(times: dict[str, Any], load_before: list[float]) -> dict[str, Any]:
    """Medians, min, ratios to the official medians, and the median of the per-round ratios."""
    out: dict[str, Any] = {"rounds": len(times["official"]), "load_before": load_before,
                           "load_after": B.load_average(), "times": times,
                           "foreign_cores_max": max(times["foreign_cores"]), "discarded": times["discarded"]}
    official = B.median(times["official"])
    for name, values in times.items():
        if name in ("foreign_cores", "discarded"):
            continue
        out[f"{name}_s"] = B.median(values)
        out[f"{name}_min_s"] = min(values)
        if name != "official":
            suffix = "" if name == "ours" else f"_{name}"
            out[f"ratio{suffix}"] = B.median(values) / official
            out[f"paired_ratio{suffix}"] = B.median([a / b for a, b in zip(values, times["official"])])
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=False, help="checkout of the official DETRIS code")
    p.add_argument("--variants", nargs="+", default=["detris-b"], choices=sorted(O.OFFICIAL_CONFIGS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds of eval forwards")
    p.add_argument("--train-repeats", type=int, default=3, help="alternating rounds of training steps")
    p.add_argument("--ours-checkpointing", nargs="*", default=[], choices=["mlp", "block"],
                   help="also time (and measure) our training step with these gradient checkpointing scopes")
    p.add_argument("--memory-steps", type=int, default=1, help="training steps in each memory subprocess")
    p.add_argument("--max-foreign-cores", type=float, default=0.2,
                   help="discard (and repeat) a timing round during which other processes used more "
                        "than this many cores on average (shared machines)")
    p.add_argument("--max-discarded", type=int, default=10, help="discard at most this many rounds")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where the backbone files are written (default: a temporary folder)")
    p.add_argument("--json", help="write the machine, configuration and results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker and not args.official:
        p.error("--official PATH is required (a checkout of the official DETRIS code)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return
    torch.set_num_threads(args.threads)
    machine = B.machine_info(torch.device("cpu"))
    print(f"{machine['cpu']}, {machine['logical_cpus']} CPUs, {args.threads} threads, torch {machine['torch']}, "
          f"load {machine['load_average']}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        for variant in args.variants:
            results.append(compare_variant(args, variant, workdir))
    machine["load_average_end"] = B.load_average()

    rows = []
    for r in results:
        for what in ("eval", "train"):
            if what in r:
                s = r[what]
                rows.append({"variant": r["variant"], "measure": f"{what} (batch {args.batch})",
                             "ours_s": s["ours_s"], "official_s": s["official_s"], "ratio": s["ratio"],
                             "paired_ratio": s["paired_ratio"], "rounds": s["rounds"],
                             "discarded": s["discarded"], "foreign_cores_max": s["foreign_cores_max"]})
                for scope in args.ours_checkpointing if what == "train" else ():
                    name = f"ours_ckpt_{scope}"
                    rows.append({"variant": r["variant"], "measure": f"{what}, ours with {scope} checkpointing",
                                 "ours_s": s[f"{name}_s"], "official_s": s["official_s"],
                                 "ratio": s[f"ratio_{name}"], "paired_ratio": s[f"paired_ratio_{name}"],
                                 "rounds": s["rounds"]})
        for name, m in r.get("memory", {}).items():
            if name != "official":
                rows.append({"variant": r["variant"], "measure": f"peak RSS GiB, train step ({name})",
                             "ours_s": m["peak_rss_gib"], "official_s": r["memory"]["official"]["peak_rss_gib"],
                             "ratio": m["ratio"]})
    B.print_table("Ours / official (same weights; times alternated in one run)", rows,
                  ["variant", "measure", "ours_s", "official_s", "ratio", "paired_ratio", "rounds", "discarded",
                   "foreign_cores_max"])
    B.print_table("Logits (float32, eval)", results,
                  ["variant", "max_weight_difference", "logits_max_abs_diff", "logits_std", "logits_max_abs"])
    print(f"\nload average: start {machine['load_average']}, end {machine['load_average_end']}")
    stubbed = sorted({s for r in results for s in r["stubbed_modules"]})
    if stubbed:
        print(f"stand-ins used for the unused official imports: {', '.join(stubbed)}")
    B.write_json(args.json, {"machine": machine, "args": vars(args), "results": results})


if __name__ == "__main__":
    sys.exit(main())
