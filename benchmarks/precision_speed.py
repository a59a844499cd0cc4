"""Eval speed and mask agreement of every inference precision, against the official float32 code.

For one variant (DETRIS-B by default) on random weights at a realistic scale (``_bench.randomize_``),
the eval forward of batch ``--batch`` at ``--size`` is timed ALTERNATELY (one round = one call of each)
for:

- ``official float32``: the official implementation on the same weights (with ``--official PATH``);
- ``float32``: ours, the protocol;
- ``bfloat16 vision``: what ``--dtype bfloat16`` / ``auto`` runs (`DETRIS.low_precision`): the
  DINOv2 tower under bfloat16 autocast, the rest in float32;
- ``bfloat16 autocast``: the whole forward under ``detris.precision.autocast("bfloat16", "cpu")``;
- ``bfloat16 cast``: the model cast with ``model.to(torch.bfloat16)`` (weights cast once; every
  activation bfloat16);
- ``int8 all``: ours with every ``nn.Linear`` but the head's kernel generator dynamically quantised
  (``detris.precision.quantize_int8(model, "all")``: ``torch.ao`` int8 weights, per-batch activation
  scales), the rest float32 -- measured here, not shipped (see docs/benchmarks.md); ``int8 vision``:
  the same for the vision tower's Linear layers only, what ``--dtype int8`` runs.

Ratios are to the official float32 time of the same run (to our float32 time without ``--official``).
The dense-GEMM rates of float32 and bfloat16 are measured in the same run. Mask agreement: the mean IoU
(``_bench.mask_agreement``) of each precision's masks with our float32 masks after the official
post-processing (sigmoid, bicubic, inverse letterbox to a 640x480 original, ``> 0.35``) over
``--images`` smooth images x ``--texts`` token rows. ``--train`` times the training step instead
(``_bench.train_step_fn``: the engine's training task, backward, Adam on the trained parameters) in
float32 and under bfloat16 autocast (``train.precision: bfloat16``), against the official float32 step. Example (the tables in docs/benchmarks.md)::

    python benchmarks/precision_speed.py --official /path/to/DETRIS --json precision.json
    python benchmarks/precision_speed.py --official /path/to/DETRIS --train --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import _bench as B
import _official as O
from detris import build_model
from detris.data.transforms import Letterbox
from detris.inference import forward_logits
from detris.postprocess import binarize, logits_to_probability
from detris.precision import autocast, quantize_int8

ORIGINAL_HW = (480, 640)


def build(variant: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return B.randomize_(build_model(variant), seed).eval()


def variants_of(model: nn.Module) -> dict[str, tuple[nn.Module, Callable[[], Any]]]:
    """name -> (model to run, context manager factory) for each of our precisions."""
    return {
        "float32": (model, contextlib.nullcontext),
        "bfloat16 vision": (model, lambda: model.low_precision(torch.bfloat16)),
        "bfloat16 autocast": (model, lambda: autocast("bfloat16", "cpu")),
        "bfloat16 cast": (copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext),
        "int8 all": (quantize_int8(model, "all"), contextlib.nullcontext),
        "int8 vision": (quantize_int8(model, "vision"), contextlib.nullcontext),
    }


def forward_fn(model: nn.Module, context: Callable[[], Any], images: Tensor, tokens: Tensor) -> Callable[[], Tensor]:
    def run() -> Tensor:
        with torch.inference_mode(), context():
            return forward_logits(model, images, tokens).logits

    return run


def mask_agreement(runs: dict[str, tuple[nn.Module, Callable[[], Any]]], args) -> dict[str, float]:
    """Mean IoU of each precision's masks with the float32 masks (official post-processing)."""
    size = args.size
    images = B.smooth_images(args.images, size, seed=7)
    tokens = B.sample_tokens(args.texts, runs["float32"][0].word_len, offset=3)
    # Every image with every token row, mapped back to a 4:3 original as the letterbox would.
    box = Letterbox.fit(*ORIGINAL_HW, size)
    masks: dict[str, list[np.ndarray]] = {}
    for name, (model, context) in runs.items():
        out = []
        for i in range(args.images):
            logits = forward_fn(model, context, images[i : i + 1].expand(args.texts, -1, -1, -1), tokens)()
            for k in range(args.texts):
                prob = logits_to_probability(logits[k : k + 1].float(), [box])[0]
                out.append(binarize(prob, 0.35))
        masks[name] = out
    ious = {}
    for name, got in masks.items():
        values = [B.mask_agreement(a, b) for a, b in zip(got, masks["float32"])]
        ious[name] = float(np.mean(values))
    ious["float32 foreground share"] = float(np.mean([m.mean() for m in masks["float32"]]))
    return ious


def train_section(args, model: nn.Module) -> None:
    """The training step in float32 and bfloat16 autocast, alternated with the official float32 step."""
    from compare_official import data

    model.train()
    images, tokens, masks = data(args.variant, args.batch, args.size)
    fns = {"float32": B.train_step_fn(model, images, tokens, masks, "float32"),
           "bfloat16 autocast": B.train_step_fn(model, images, tokens, masks, "bfloat16")}
    if args.official:
        with tempfile.TemporaryDirectory() as tmp:
            official, _ = O.build_official(args.official, args.variant, model, tmp)
        fns = {"official float32": B.train_step_fn(official.train(), images, tokens, masks, official=True), **fns}
    times = B.alternate_timed(fns, torch.device("cpu"), args.repeats, warmup=1,
                              max_foreign_cores=args.max_foreign_cores, max_discarded=args.max_discarded)
    base = B.median(times["official float32" if args.official else "float32"])
    rows = [{"step": name, "seconds": round(B.median(times[name]), 2), "x base": round(B.median(times[name]) / base, 3)}
            for name in fns]
    B.print_table(f"{args.variant} training step, batch {args.batch}, {args.size}²", rows, ["step", "seconds", "x base"])
    print(f"foreign cores per round {times['foreign_cores']}; load {B.load_average()}")
    B.write_json(args.json, {"args": vars(args), "times": times, "rows": rows})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", help="checkout of the official DETRIS code (times its float32 forward)")
    p.add_argument("--variant", default="detris-b")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--texts", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-foreign-cores", type=float, default=0.3)
    p.add_argument("--max-discarded", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", action="store_true", help="time the training step instead of the eval forward")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    machine = B.machine_info(device)
    print(f"{machine['cpu']}, flags {' '.join(machine['cpu_flags'])}, torch {torch.__version__}, "
          f"{args.threads} threads, load {B.load_average()}", flush=True)
    gemm = {name: B.gemm_rate(dtype, device, 2048) for name, dtype in (("float32", torch.float32),
                                                                         ("bfloat16", torch.bfloat16))}
    model = build(args.variant, args.seed)
    if args.train:
        return train_section(args, model)
    runs = variants_of(model)
    images, tokens = B.smooth_images(args.batch, args.size, seed=0), B.sample_tokens(args.batch, model.word_len)
    fns = {name: forward_fn(m, ctx, images, tokens) for name, (m, ctx) in runs.items()}
    if args.official:
        with tempfile.TemporaryDirectory() as tmp:
            official, _ = O.build_official(args.official, args.variant, model, tmp)
        official.eval()

        def official_run() -> None:
            with torch.inference_mode():
                official(images, tokens)

        fns = {"official float32": official_run, **fns}
    times = B.alternate_timed(fns, device, args.repeats, warmup=1, max_foreign_cores=args.max_foreign_cores,
                              max_discarded=args.max_discarded)
    base = "official float32" if args.official else "float32"
    medians = {name: B.median(times[name]) for name in fns}
    ious = mask_agreement(runs, args)
    rows = [{"precision": name, "seconds": round(medians[name], 3), f"x {base}": round(medians[name] / medians[base], 3),
             "mask_IoU_vs_float32": round(ious[name], 4) if name in ious else None} for name in fns]
    B.print_table(f"{args.variant} eval, batch {args.batch}, {args.size}², {args.threads} threads", rows,
                  ["precision", "seconds", f"x {base}", "mask_IoU_vs_float32"])
    gemm_rows = [{"dtype": k, "GFLOP/s": round(v["flops_per_s"] / 1e9), "size": v["size"], "layout": v["layout"]}
                 for k, v in gemm.items()]
    B.print_table("dense GEMM", gemm_rows, ["dtype", "GFLOP/s", "size", "layout"])
    print(f"float32 masks' foreground share {ious['float32 foreground share']:.3f}; rounds discarded {times['discarded']}, "
          f"foreign cores per round {times['foreign_cores']}; load {B.load_average()}")
    B.write_json(args.json, {"machine": machine, "args": vars(args), "times": times, "rows": rows, "gemm": gemm,
                             "mask_iou": ious})


if __name__ == "__main__":
    main()
