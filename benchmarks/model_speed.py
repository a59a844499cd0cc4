"""Model speed: eval latency / throughput, FLOP/s against the machine's dense-GEMM rate, training steps
and their peak memory, and how far bfloat16 autocast masks are from float32 masks.

Random weights (drawn at a realistic scale by ``_bench.randomize_``), a fixed token length (the
variant's ``word_len``, 17) and square inputs (``--size``, default 448). Sections:

1. **GEMM limit**: FLOP/s of a dense square matmul in float32 and bfloat16 on the same device, in the
   same run (both operand layouts; the best is the practical limit).
2. **Eval forward**: median latency per variant, precision (``float32`` or ``bfloat16`` autocast) and batch
   size; throughput in images/s; FLOPs of one forward (``torch.utils.flop_counter.FlopCounterMode``,
   counted once per batch size) and the achieved FLOP/s as a share of the GEMM rate of the same dtype.
   That GEMM is timed right after every forward and the share is the median over these pairs: on a
   shared or virtualised machine whose speed drifts by up to 2x within minutes, a GEMM rate measured
   once at the start would make the share meaningless.
3. **Training step**: forward, loss, backward and an Adam step on the trainable parameters only (as
   training does), per precision, without gradient checkpointing and with each checkpointing scope
   (``mlp``: the ViT MLPs' hidden layers; ``block``: whole backbone blocks); the step is
   ``_bench.train_step_fn`` (the engine's training task under ``detris.precision.autocast``).
   Each configuration runs in a fresh subprocess, so that its peak memory is its own: the RSS
   high-water mark on CPU (reset after the model, inputs and optimizer are built and one step has
   allocated the optimizer state), the allocator peak on GPU.
4. **Profile**: op self time of one eval forward (``--profile-precision``: float32, or what
   ``--dtype bfloat16`` / ``int8`` run) by kind of op (matmul, convolution, attention, normalization,
   copies, other), and the top single ops.
5. **bfloat16 mask agreement**: mean IoU between bfloat16-autocast masks and float32 masks after the official
   post-processing (sigmoid, bicubic resize, inverse letterbox to a 640x480 original, ``> 0.35``).

Example (the tables in docs/benchmarks.md)::

    python benchmarks/model_speed.py --variants detris-b detris-l --json model_speed.json

Everything runs with ``--threads`` torch threads (default 2). ``--device cuda`` runs on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import _bench as B
from detris.precision import ALIASES, DTYPES, INT8, autocast, precision_name, quantize_vision_int8, resolve_dtype

HERE = os.path.abspath(__file__)
#: The precisions this benchmark times (float16 has no fast CPU kernels).
PRECISIONS = ("float32", "bfloat16")
aten = torch.ops.aten


# ------------------------------------------------------------------------------------------ models
def build(variant: str, seed: int, device: torch.device, fast: bool = True) -> nn.Module:
    """A ``variant`` DETRIS with random weights (``_bench.randomize_``), frozen backbones.

    ``fast=False`` turns off the model's optional fast paths (``DETRIS.set_fast_paths``; used by the
    fast-path comparisons; the defaults are what a user gets)."""
    from detris import build_model

    torch.manual_seed(seed)
    model = B.randomize_(build_model(variant), seed)
    if not fast:
        model.set_fast_paths(False)
    return model.to(device)


def inputs(model: nn.Module, batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    images = B.smooth_images(batch, size, seed).to(device)
    tokens = B.sample_tokens(batch, model.word_len, offset=seed).to(device)
    return images, tokens


# ------------------------------------------------------------------------------------------ FLOPs
def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter has formulas for the CUDA attention kernels but not for the CPU flash kernel that
# scaled_dot_product_attention dispatches to on CPU; without these the attention FLOPs would be missed.
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (matmuls, convolutions, attention), as ``FlopCounterMode`` counts them."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------ sections
def eval_section(args, device: torch.device, gemm: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for variant in args.variants:
        model = build(variant, args.seed, device).eval()
        flops_by_batch = {}
        for batch in args.batch_sizes:
            images, tokens = inputs(model, batch, args.size, device)
            with torch.no_grad():
                flops = flops_by_batch[batch] = count_flops(lambda: model(images, tokens))
            for precision in args.precisions:
                def forward() -> Tensor:
                    with torch.no_grad(), autocast(precision, device.type):
                        return model(images, tokens)

                # The GEMM is timed right after each forward: on a machine whose speed drifts, each
                # forward is compared with the GEMM rate of the same moment (median of the pairs).
                gemm_fn, gemm_flops = B.gemm_callable(
                    DTYPES[precision], device, gemm[precision]["size"], gemm[precision]["layout"]
                )
                load_before = B.load_average()
                # The first (untimed) call warms up and sizes the run to the time budget.
                repeats = max(1, min(args.repeats, int(args.budget_s / max(B.time_call(forward, device), 1e-9))))
                gemm_fn()
                timed = B.alternate_timed({"forward": forward, "gemm": gemm_fn}, device, repeats, warmup=0,
                                          max_foreign_cores=args.max_foreign_cores, max_discarded=args.max_discarded)
                times, gemm_times = timed["forward"], timed["gemm"]
                latency = B.median(times)
                rate = flops / latency
                gemm_rate = gemm_flops / B.median(gemm_times)
                row = {
                    "variant": variant, "precision": precision, "batch": batch,
                    "latency_s": latency, "min_s": min(times), "runs": len(times),
                    "images_per_s": batch / latency, "gflop": flops / 1e9,
                    "achieved_gflop_per_s": rate / 1e9,
                    "gemm_gflop_per_s": gemm_rate / 1e9,
                    "share_of_gemm": B.median([(flops / t) / (gemm_flops / g) for t, g in zip(times, gemm_times)]),
                    "times": times, "gemm_times": gemm_times, "discarded": timed["discarded"],
                    "foreign_cores_max": max(timed["foreign_cores"]),
                    "load_before": load_before, "load_after": B.load_average(),
                }
                rows.append(row)
                print(f"  eval {variant} {precision} batch {batch}: {latency:.3f} s "
                      f"({row['achieved_gflop_per_s']:.0f} GFLOP/s, {100 * row['share_of_gemm']:.0f}% of GEMM)",
                      flush=True)
        if args.compile:
            rows.extend(compile_rows(args, device, model, flops_by_batch, gemm, variant))
        del model
        gc.collect()
    return rows


def compile_rows(args, device: torch.device, model: nn.Module, flops_by_batch: dict[int, int],
                 gemm: dict[str, dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """The same eval forwards through ``torch.compile(model)`` (float32), with the compile time."""
    import time

    compiled = torch.compile(model)
    rows = []
    for batch in args.batch_sizes:
        images, tokens = inputs(model, batch, args.size, device)
        with torch.no_grad():
            start = time.perf_counter()
            compiled(images, tokens)
            compile_s = time.perf_counter() - start
            times = B.repeat_timed(lambda: compiled(images, tokens), device, args.repeats, budget_s=args.budget_s)
        latency = B.median(times)
        rate = flops_by_batch[batch] / latency
        rows.append({
            "variant": variant, "precision": "float32+compile", "batch": batch, "latency_s": latency,
            "min_s": min(times), "runs": len(times), "images_per_s": batch / latency,
            "gflop": flops_by_batch[batch] / 1e9, "achieved_gflop_per_s": rate / 1e9,
            "gemm_gflop_per_s": gemm["float32"]["flops_per_s"] / 1e9, "share_of_gemm": rate / gemm["float32"]["flops_per_s"],
            "compile_s": compile_s, "load_before": B.load_average(),
        })
        print(f"  eval {variant} float32+compile batch {batch}: {latency:.3f} s (first call {compile_s:.0f} s)", flush=True)
    return rows


# Profiler op names by kind of work, for the "where the time goes" breakdown.
OP_KINDS = {
    "matmul (linear)": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"),
    "convolution": ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution",
                    "aten::slow_conv", "aten::thnn_conv", "aten::_slow_conv"),
    "attention (SDPA)": ("aten::_scaled_dot_product", "aten::_flash_attention"),
    "softmax": ("aten::_softmax", "aten::softmax"),
    "normalization": ("aten::native_layer_norm", "aten::native_batch_norm", "aten::_native_batch_norm",
                      "aten::batch_norm"),
    "copies / layout": ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::_to_copy"),
}


def profiled_model(model: nn.Module, precision: str, device: torch.device):
    """The model and the context of one ``--profile-precision`` forward: what ``--dtype float32`` /
    ``bfloat16`` / ``int8`` run (`DETRIS.low_precision`, `detris.precision.quantize_vision_int8`)."""
    dtype = resolve_dtype(precision, device)
    if dtype == INT8:
        return quantize_vision_int8(model).eval(), contextlib.nullcontext()
    return model, model.low_precision(dtype)


def profile_section(args, device: torch.device) -> list[dict[str, Any]]:
    """Self time by kind of op for one eval forward per variant (batch ``--profile-batch``, precision
    ``--profile-precision``)."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for variant in args.variants:
        model, scope = profiled_model(build(variant, args.seed, device).eval(), args.profile_precision, device)
        images, tokens = inputs(model, args.profile_batch, args.size, device)
        with torch.no_grad(), scope:
            model(images, tokens)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(images, tokens)
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        kinds: dict[str, float] = {k: 0.0 for k in OP_KINDS}
        kinds["other (elementwise, ...)"] = 0.0
        for e in events:
            kind = next((k for k, prefixes in OP_KINDS.items() if e.key.startswith(prefixes)), "other (elementwise, ...)")
            kinds[kind] += e.self_cpu_time_total
        for kind, us in kinds.items():
            rows.append({"variant": variant, "batch": args.profile_batch, "kind": kind, "self_s": us / 1e6,
                         "share": us / total})
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.profile_top]
        for e in top:
            rows.append({"variant": variant, "batch": args.profile_batch, "kind": f"op {e.key}",
                         "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
                         "calls": e.count})
        print(f"  profiled {variant}: {total / 1e6:.2f} s of op self time", flush=True)
        del model
        gc.collect()
    return rows


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training configuration, in its own process: time per step and peak memory."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model = build(spec["variant"], spec["seed"], device).train()
    if spec["checkpointing"] != "off":
        model.set_grad_checkpointing(True, scope=spec["checkpointing"])
    images, tokens = inputs(model, spec["batch"], spec["size"], device)
    masks = B.sample_masks(spec["batch"], spec["size"], seed=1).to(device)
    step = B.train_step_fn(model, images, tokens, masks, spec["precision"])
    step()  # allocates the optimizer state; what follows is the steady state
    gc.collect()
    B.trim_heap()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resident = B.current_rss_bytes()
    reset = B.reset_peak_rss()
    flops = count_flops(step) if spec.get("count_flops") else None
    timed = B.alternate_timed({"step": step}, device, spec["repeats"], warmup=0,
                              max_foreign_cores=spec["max_foreign_cores"], max_discarded=spec["max_discarded"])
    times = timed["step"]
    result = {
        "step_s": B.median(times), "min_s": min(times), "runs": len(times), "discarded": timed["discarded"],
        "foreign_cores_max": max(timed["foreign_cores"]),
        "peak_rss_gib": B.gib(B.peak_rss_bytes()), "rss_before_step_gib": B.gib(resident),
        "peak_is_lifetime": not reset, "train_gflop": None if flops is None else flops / 1e9,
    }
    if device.type == "cuda":
        result["peak_allocated_gib"] = B.gib(torch.cuda.max_memory_allocated(device))
    return result


def train_section(args, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for variant in args.variants:
        for precision in args.train_precisions:
            for checkpointing in args.train_checkpointing:
                spec = {
                    "variant": variant, "precision": precision, "checkpointing": checkpointing,
                    "batch": args.train_batch, "size": args.size, "device": str(device),
                    "threads": args.threads, "seed": args.seed, "repeats": args.train_repeats,
                    "budget_s": args.budget_s, "count_flops": args.train_flops,
                    "max_foreign_cores": args.max_foreign_cores, "max_discarded": args.max_discarded,
                }
                load_before = B.load_average()
                result = B.run_worker(HERE, {"kind": "train", **spec})
                row = {"variant": variant, "precision": precision, "checkpointing": checkpointing,
                       "batch": args.train_batch, **result, "load_before": load_before,
                       "load_after": B.load_average()}
                rows.append(row)
                print(f"  train {variant} {precision} ckpt {checkpointing}: {row['step_s']:.2f} s/step, "
                      f"peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
    return rows


def iou_section(args, device: torch.device) -> list[dict[str, Any]]:
    """bfloat16-autocast vs float32 masks after the official post-processing, per variant."""
    from detris.data.transforms import Letterbox
    from detris.postprocess import binarize, logits_to_probability

    orig_h, orig_w = args.iou_original_size
    box = Letterbox.fit(orig_h, orig_w, args.size)
    rows = []
    for variant in args.variants:
        model = build(variant, args.seed, device).eval()
        ious, fg = [], []
        for k in range(args.iou_samples):
            images, tokens = inputs(model, 1, args.size, device, seed=100 + k)
            with torch.no_grad():
                ref = model(images, tokens).logits
                with autocast("bfloat16", device.type):
                    low = model(images, tokens).logits
            masks = []
            for logits in (ref, low):
                prob = logits_to_probability(logits, [box])[0]
                masks.append(binarize(prob))
            ious.append(B.mask_agreement(*masks))
            fg.append(float(masks[0].mean()))
        rows.append({"variant": variant, "samples": len(ious), "mean_iou": float(np.mean(ious)),
                     "min_iou": float(np.min(ious)), "float32_foreground_share": float(np.mean(fg))})
        print(f"  bfloat16 vs float32 masks {variant}: mean IoU {rows[-1]['mean_iou']:.4f} "
              f"(min {rows[-1]['min_iou']:.4f}, foreground {100 * rows[-1]['float32_foreground_share']:.0f}%)",
              flush=True)
        del model
        gc.collect()
    return rows


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["detris-b", "detris-l"])
    p.add_argument("--size", type=int, default=448, help="square input side (multiple of 14)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 8],
                   help="eval batch sizes: 1 for latency, larger ones for throughput")
    p.add_argument("--precisions", nargs="+", type=precision_name, choices=PRECISIONS, default=list(PRECISIONS),
                   help="float32, bfloat16 (fp32, bf16 are read as the same)")
    p.add_argument("--repeats", type=int, default=5, help="timed eval forwards per configuration")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="stop repeating a configuration once its timed runs took this long (>= 1 run)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) in float32")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-precisions", nargs="+", type=precision_name, choices=PRECISIONS, default=None,
                   help="default: --precisions")
    p.add_argument("--train-checkpointing", nargs="+", choices=["off", "block", "mlp"], default=["off", "mlp", "block"],
                   help="gradient checkpointing scopes to measure (see DETRIS.set_grad_checkpointing)")
    p.add_argument("--train-repeats", type=int, default=3)
    p.add_argument("--train-flops", action="store_true", help="also count the FLOPs of one training step")
    p.add_argument("--iou-samples", type=int, default=4)
    p.add_argument("--iou-original-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--gemm-max-size", type=int, default=4096)
    p.add_argument("--skip", nargs="*", default=[], choices=["eval", "train", "iou", "profile"])
    p.add_argument("--profile-batch", type=int, default=2, help="batch of the profiled forward")
    p.add_argument("--profile-top", type=int, default=12, help="single ops listed in the profile")
    p.add_argument("--profile-precision", type=lambda name: ALIASES.get(name, name),
                   choices=["float32", "bfloat16", "int8"], default="float32",
                   help="what the profiled forward runs: float32, --dtype bfloat16 or --dtype int8")
    p.add_argument("--max-foreign-cores", type=float, default=0.2,
                   help="discard (and repeat) a timed run during which other processes used more than "
                        "this many cores on average (shared machines)")
    p.add_argument("--max-discarded", type=int, default=10, help="discard at most this many runs per configuration")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the configuration, machine and results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.train_precisions is None:
        args.train_precisions = args.precisions
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(train_worker(spec)))
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = B.machine_info(device)
    print(f"{machine['cpu']}, {machine['logical_cpus']} CPUs ({machine['cpu_capability']}), "
          f"{args.threads} threads, torch {machine['torch']}, load {machine['load_average']}", flush=True)

    gemm_rows = [B.gemm_rate(DTYPES[p], device, args.gemm_max_size) for p in args.precisions]
    gemm = dict(zip(args.precisions, gemm_rows))
    for p, r in zip(args.precisions, gemm_rows):
        print(f"  GEMM {p}: {r['flops_per_s'] / 1e9:.1f} GFLOP/s (NN {r['nn_flops_per_s'] / 1e9:.1f} at "
              f"{r['nn_size']}, NT {r['nt_flops_per_s'] / 1e9:.1f} at {r['nt_size']})", flush=True)

    results: dict[str, Any] = {"gemm": gemm_rows}
    if "eval" not in args.skip:
        results["eval"] = eval_section(args, device, gemm)
    if "train" not in args.skip:
        results["train"] = train_section(args, device)
    if "profile" not in args.skip:
        results["profile"] = profile_section(args, device)
    if "iou" not in args.skip and "bfloat16" in args.precisions:
        results["bfloat16_masks"] = iou_section(args, device)
    machine["load_average_end"] = B.load_average()

    B.print_table("Dense GEMM (practical limit)", [
        {"dtype": r["dtype"], "GFLOP/s": r["flops_per_s"] / 1e9, "NN GFLOP/s": r["nn_flops_per_s"] / 1e9,
         "NT GFLOP/s": r["nt_flops_per_s"] / 1e9, "size": max(r["nn_size"], r["nt_size"])} for r in gemm_rows
    ], ["dtype", "GFLOP/s", "NN GFLOP/s", "NT GFLOP/s", "size"])
    if "eval" in results:
        B.print_table("Eval forward", [
            {**r, "% of GEMM": 100 * r["share_of_gemm"], "GFLOP/s": r["achieved_gflop_per_s"]}
            for r in results["eval"]
        ], ["variant", "precision", "batch", "latency_s", "images_per_s", "gflop", "GFLOP/s", "% of GEMM", "runs",
            "discarded", "foreign_cores_max"])
    if "train" in results:
        B.print_table("Training step", results["train"],
                      ["variant", "precision", "checkpointing", "batch", "step_s", "peak_rss_gib",
                       "rss_before_step_gib", "train_gflop", "runs", "discarded", "foreign_cores_max"])
    if "profile" in results:
        B.print_table(f"Where the time goes (one {args.profile_precision} eval forward, op self time)", results["profile"],
                      ["variant", "batch", "kind", "self_s", "share", "calls"])
    if "bfloat16_masks" in results:
        B.print_table("bfloat16 autocast vs float32 masks", results["bfloat16_masks"],
                      ["variant", "samples", "mean_iou", "min_iou", "float32_foreground_share"])
    print(f"\nload average: start {machine['load_average']}, end {machine['load_average_end']}")
    B.write_json(args.json, {"machine": machine, "args": vars(args), **results})


if __name__ == "__main__":
    sys.exit(main())
