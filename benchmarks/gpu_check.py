"""The GPU check: every speed and memory question that needs a GPU, in one command of a few minutes.

Sections (each guarded: a failure is recorded in the JSON with its message and the others still run;
each has its own time budget and all share one overall deadline):

- ``compare``: our DETRIS against the official implementation on the same random weights
  (``_official.py``): eval forward and training step (forward, loss, backward, Adam on the trainable
  parameters; ``_bench.train_step_fn``) in float32, bfloat16 autocast and float16 autocast (with a
  GradScaler when training; ``detris.precision.autocast``), timed
  alternately (ours, official, ours, ...) after warm-up with the device synchronised around every call,
  medians; the peak memory of every case with only that model on the device
  (``torch.cuda.max_memory_allocated``, reset between cases); the float32 logits' max abs difference.
  Without ``--official`` the official side is skipped with a line saying so and ours is still timed.
- ``microbatch``: the largest training micro-batch of the large variant (DETRIS-L) in float32 and bfloat16,
  found by doubling then bisecting, an out-of-memory error caught and the cache emptied after each try.
- ``ddp``: a 2-step training run through the project's engine under ``torchrun --nproc_per_node 1``:
  once as ``detris train`` (at world size 1 the engine uses no process group) and once with the
  engine's DDP path forced (process group, DDP wrapper, SyncBatchNorm, all-reduces) on nccl, through
  ``detris.engine.loop.run_training``.
- ``predict``: ``benchmarks/predict_throughput.py`` on the device, one process: images/s and the share
  of the wall time the model's forward is busy, for the per-image loop and for the ``detris predict
  --input`` pipeline (exact and batched), detris-tiny first, then DETRIS-B.
- ``compile``: ``torch.compile`` on against off for our eval forward (float32, bfloat16) and, when the
  budget allows, our float32 training step; the first call's time (the compilation) is reported apart.

Random weights throughout (no pretrained files are needed). ``--device cuda`` (the default where a GPU
exists) runs DETRIS-B at 448², batch 2; ``--device cpu`` runs every section at a tiny scale (detris-tiny,
56², gloo, a micro-batch search against a fake memory cap on the bytes autograd saves, torch.compile's
``aot_eager`` backend) in about a minute, so that the script is exercised without a GPU. Run from the
repository root (``benchmarks/gpu_check.sh`` sets the paths up)::

    PYTHONPATH=src python benchmarks/gpu_check.py --official .official/DETRIS --json gpu_check.json \\
        --table gpu_check.md

The JSON holds the machine (torch, CUDA, GPU, CPU flags), the settings and every measurement; it and the
markdown table are rewritten after every section, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import _bench as B
import _official as O
import compare_official as C
from detris.engine.task import SegmentationTask
from detris.precision import DTYPES, autocast, precision_name

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))
TINY_CONFIG = os.path.join(REPO, "configs", "synthetic-tiny.yaml")
SECTIONS = ("compare", "microbatch", "ddp", "predict", "compile")
GIB = 2**30


@dataclass
class Scale:
    """What one device runs: model sizes, repetitions, budgets (seconds) and back-ends."""

    variant: str
    size: int
    batch: int
    large_variant: str
    repeats: int
    train_repeats: int
    warmup: int
    max_batch: int
    compile_backend: str
    ddp_backend: str
    deadline_s: float
    budgets: dict[str, float] = field(default_factory=dict)
    fake_cap_mib: float | None = None  # CPU only: the micro-batch search's stand-in for device memory
    predict_variants: tuple[str, ...] = ("detris-tiny",)  # the predict section's models, cheapest first
    predict_images: tuple[int, ...] = (6,)  # images per model (1-3 expressions each)
    predict_size: tuple[int, int] = (96, 128)  # (H, W) of the generated JPEGs


# The CUDA budgets add up to 455 s, under the 8 minutes the check is meant to take on an H200 with the
# interpreter's start and the model construction on the CPU included; compile runs last because a
# compilation cannot be interrupted once it has started.
SCALES = {
    "cuda": Scale("detris-b", 448, 2, "detris-l", repeats=20, train_repeats=10, warmup=3, max_batch=512,
                  compile_backend="inductor", ddp_backend="nccl", deadline_s=455,
                  budgets={"compare": 115, "microbatch": 95, "ddp": 65, "predict": 55, "compile": 125},
                  predict_variants=("detris-tiny", "detris-b"), predict_images=(96, 24), predict_size=(480, 640)),
    # Inductor's C++ code generation takes minutes on a small CPU; aot_eager exercises the same capture.
    "cpu": Scale("detris-tiny", 56, 2, "detris-tiny", repeats=3, train_repeats=2, warmup=1, max_batch=64,
                 compile_backend="aot_eager", ddp_backend="gloo", deadline_s=220,
                 budgets={"compare": 25, "microbatch": 20, "ddp": 60, "predict": 40, "compile": 60},
                 fake_cap_mib=24.0),
}


# ------------------------------------------------------------------------------------------ helpers
def left(deadline: float) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value)."""
    return deadline - time.monotonic()


def free(device: torch.device) -> None:
    """Drop garbage and, on a GPU, hand cached blocks back so the next case starts from what is live."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def case_fn(model: nn.Module, official: bool, mode: str, precision: str, device: torch.device,
            batch: tuple[Tensor, Tensor, Tensor]) -> Callable[[], Any]:
    """One eval forward or one training step (``_bench.train_step_fn``: the engine's training task,
    backward, Adam, a GradScaler in float16) of ``model`` on ``batch`` = (images, tokens, masks)."""
    images, tokens, masks = batch
    if mode == "eval":
        def forward() -> Tensor:
            with torch.no_grad(), autocast(precision, device.type):
                return model(images, tokens)
        return forward
    return B.train_step_fn(model, images, tokens, masks, precision, official=official)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory of one call of ``fn``: the CUDA allocator's high-water mark (reset first), or on
    CPU the process's RSS high-water mark (a coarse stand-in: it also counts what was resident)."""
    if device.type == "cuda":
        free(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_gib": torch.cuda.max_memory_allocated(device) / GIB, "resident_gib": resident / GIB,
                "memory_kind": "torch.cuda.max_memory_allocated"}
    gc.collect()
    B.trim_heap()
    resident = B.current_rss_bytes()
    reset = B.reset_peak_rss()
    fn()
    return {"peak_gib": B.peak_rss_bytes() / GIB, "resident_gib": resident / GIB,
            "memory_kind": "process RSS high-water mark" + ("" if reset else " (lifetime)")}


def device_batch(variant: str, batch: int, size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(t.to(device) for t in C.data(variant, batch, size))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ compare
def official_skip_reason(args: argparse.Namespace, variant: str) -> str | None:
    """Why the official side is not run (None: it is)."""
    if not args.official:
        return "no --official PATH given: the official implementation is not timed, ours is"
    if variant not in O.OFFICIAL_CONFIGS:
        return f"the official code has no config for {variant} (it has {', '.join(sorted(O.OFFICIAL_CONFIGS))})"
    return None


def compare_section(args: argparse.Namespace, scale: Scale, device: torch.device, deadline: float) -> dict[str, Any]:
    """Ours against the official implementation (or ours alone): timings, peak memory, logits."""
    variant, size, batch = scale.variant, scale.size, scale.batch
    result: dict[str, Any] = {"variant": variant, "size": size, "batch": batch, "precisions": args.precisions}
    ours = C.build_ours(variant, args.seed)
    models: dict[str, nn.Module] = {"ours": ours}
    reason = official_skip_reason(args, variant)
    if reason is None:
        with tempfile.TemporaryDirectory() as tmp:
            models["official"], result["stubbed_modules"] = O.build_official(args.official, variant, ours, tmp)
        result["max_weight_difference"] = O.max_weight_difference(ours, models["official"])
    else:
        result["official_skipped"] = reason
        print(f"  official side skipped: {reason}", flush=True)
    for model in models.values():
        model.to(device)
    data = device_batch(variant, batch, size, device)
    if "official" in models:
        result["logits"] = logits_difference(models["ours"], models["official"], data)
        print(f"  logits float32: max |ours - official| {result['logits']['max_abs_diff']:.2e} "
              f"(logit std {result['logits']['logits_std']:.2f})", flush=True)
    # The timings may use 70 % of what is left; the rest is kept for the memory measurements.
    timing_deadline = time.monotonic() + 0.7 * left(deadline)
    result["timing"] = timed_cases(models, data, args.precisions, scale, device, timing_deadline)
    result["memory"] = memory_cases(models, data, args.precisions, device, deadline)
    return result


@torch.no_grad()
def logits_difference(ours: nn.Module, official: nn.Module, data: tuple[Tensor, Tensor, Tensor]) -> dict[str, float]:
    images, tokens, _ = data
    ours.eval(), official.eval()
    mine, theirs = ours(images, tokens).logits.double(), official(images, tokens).double()
    return {"max_abs_diff": (mine - theirs).abs().max().item(), "logits_std": theirs.std().item(),
            "logits_max_abs": theirs.abs().max().item()}


def timed_cases(models: dict[str, nn.Module], data: tuple[Tensor, Tensor, Tensor], precisions: list[str],
                scale: Scale, device: torch.device, deadline: float) -> list[dict[str, Any]]:
    """Every (mode, precision) case, the implementations timed alternately; medians in ms."""
    rows = []
    for mode in ("eval", "train"):
        for precision in precisions:
            row: dict[str, Any] = {"mode": mode, "precision": precision}
            rows.append(row)
            if left(deadline) < 1:
                row["skipped"] = "time budget"
                continue
            for model in models.values():
                model.train(mode == "train")
            fns = {name: case_fn(m, name == "official", mode, precision, device, data) for name, m in models.items()}
            # The first warm-up round is timed to fit the rounds into what is left of the budget.
            round_s = max(sum(B.time_call(fn, device) for fn in fns.values()), 1e-6)
            repeats = scale.repeats if mode == "eval" else scale.train_repeats
            repeats = max(1, min(repeats, int(left(deadline) / round_s) - (scale.warmup - 1)))
            times = B.alternate_timed(fns, device, repeats, warmup=scale.warmup - 1)
            row["rounds"] = repeats
            for name in models:
                row[f"{name}_ms"] = 1e3 * B.median(times[name])
                row[f"{name}_times_s"] = times[name]
            if "official" in models:
                row["ratio"] = row["ours_ms"] / row["official_ms"]
                row["paired_ratio"] = B.median([a / b for a, b in zip(times["ours"], times["official"])])
            print(f"  {mode} {precision}: " + ", ".join(f"{n} {row[f'{n}_ms']:.1f} ms" for n in models)
                  + (f", ratio {row['ratio']:.3f}" if "ratio" in row else ""), flush=True)
            del fns
            free(device)
    return rows


def memory_cases(models: dict[str, nn.Module], data: tuple[Tensor, Tensor, Tensor], precisions: list[str],
                 device: torch.device, deadline: float) -> list[dict[str, Any]]:
    """Peak memory of every case, with only the measured model on the device (on a GPU the other one
    waits on the CPU, so its weights do not count)."""
    rows = {(mode, p): {"mode": mode, "precision": p} for mode in ("eval", "train") for p in precisions}
    for name, model in models.items():
        if device.type == "cuda":
            for other in models.values():
                other.to("cpu" if other is not model else device)
        for (mode, precision), row in rows.items():
            if left(deadline) < 3:
                row.setdefault("skipped", "time budget")
                continue
            model.train(mode == "train")
            fn = case_fn(model, name == "official", mode, precision, device, data)
            fn()  # allocates the optimizer state and the kernels' workspaces: the peak is the steady state's
            memory = peak_memory(fn, device)
            row[f"{name}_peak_gib"], row["memory_kind"] = memory["peak_gib"], memory["memory_kind"]
            row[f"{name}_resident_gib"] = memory["resident_gib"]
            del fn
            free(device)
    for row in rows.values():
        if "official_peak_gib" in row and "ours_peak_gib" in row:
            row["ratio"] = row["ours_peak_gib"] / row["official_peak_gib"]
    return list(rows.values())


# ------------------------------------------------------------------------------------------ micro-batch
class SavedTensorBytes:
    """Bytes of the distinct storages autograd saves for the backward pass inside the block: what the
    CPU run's fake memory cap is compared with (a deterministic measure of activation memory). Tensors
    saved under an inner pair of hooks (the head's recomputed upsampling) are not seen: a slight undercount."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        with contextlib.suppress(RuntimeError, NotImplementedError):  # tensors without a storage
            storage = t.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def try_batch(model: nn.Module, optimizer: torch.optim.Optimizer, precision: str, batch: int, size: int,
              device: torch.device, cap_bytes: float | None) -> dict[str, Any]:
    """One training step at micro-batch ``batch``: does it fit? Out-of-memory is caught; with
    ``cap_bytes`` (CPU) a step whose saved activations exceed the cap counts as not fitting."""
    row: dict[str, Any] = {"batch": batch}
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        images = torch.randn(batch, 3, size, size, device=device)
        tokens = B.sample_tokens(batch, model.word_len).to(device)
        masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
        saved = SavedTensorBytes()
        with autocast(precision, device.type), saved:
            loss = SegmentationTask(model)(images, tokens, masks).loss.total
        loss.backward()
        optimizer.step()
        B.synchronize(device)
        row["fits"] = cap_bytes is None or saved.nbytes <= cap_bytes
        row["saved_activation_mib"] = saved.nbytes / 2**20
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    except torch.cuda.OutOfMemoryError:
        row["fits"], row["oom"] = False, True
    finally:
        optimizer.zero_grad(set_to_none=True)
    row["seconds"] = time.perf_counter() - start
    return row


def largest_fitting(fits: Callable[[int], dict[str, Any]], max_batch: int, deadline: float) -> dict[str, Any]:
    """Largest batch in [1, max_batch] for which ``fits`` says yes: doubling from 1 until a failure,
    then bisecting between the last success and the first failure. A try whose predicted time (the
    last one's, scaled by the batch) would pass ``deadline`` is not started; the result says so."""
    tries: list[dict[str, Any]] = []
    lo, hi, stop = 0, None, None

    def attempt(batch: int) -> bool | None:
        if tries and left(deadline) < tries[-1]["seconds"] * batch / tries[-1]["batch"] * 1.5:
            return None
        tries.append(fits(batch))
        return tries[-1]["fits"]

    batch = 1
    while hi is None:
        ok = attempt(batch)
        if ok is None:
            stop = "time budget"
            break
        if ok:
            lo = batch
            if batch >= max_batch:
                stop = f"max_batch {max_batch} reached"
                break
            batch = min(2 * batch, max_batch)
        else:
            hi = batch
    while stop is None and hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        ok = attempt(mid)
        if ok is None:
            stop = "time budget"
        elif ok:
            lo = mid
        else:
            hi = mid
    exact = hi is not None and hi - lo == 1
    return {"largest": lo, "first_failure": hi, "exact": exact, "stopped": stop, "tries": tries}


def search_check(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`largest_fitting` against stand-in limits, without a model (``--search-check``: the test suite
    runs the script so). Each case: ``limit`` (the largest batch that fits), ``max_batch``, ``budget_s``
    and ``try_s`` (what each try says it took)."""
    results = []
    for case in cases:
        def fits(batch: int, case: dict[str, Any] = case) -> dict[str, Any]:
            return {"batch": batch, "fits": batch <= case["limit"], "seconds": case.get("try_s", 0.0)}

        results.append(largest_fitting(fits, case["max_batch"], time.monotonic() + case.get("budget_s", 60.0)))
    return results


def microbatch_section(args: argparse.Namespace, scale: Scale, device: torch.device, deadline: float) -> dict[str, Any]:
    """Largest training micro-batch of the large variant, per precision (float32, bfloat16)."""
    from detris import build_model

    torch.manual_seed(args.seed)
    # The default initialisation: memory does not depend on the weights' values, and drawing
    # realistic ones (``_bench.randomize_``) for DETRIS-L would take a sizeable share of the budget.
    model = build_model(scale.large_variant).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cap = None if device.type == "cuda" else scale.fake_cap_mib * 2**20 if scale.fake_cap_mib else None
    result: dict[str, Any] = {"variant": scale.large_variant, "size": scale.size, "max_batch": scale.max_batch,
                              "fake_cap_mib": None if cap is None else scale.fake_cap_mib, "searches": []}
    if device.type != "cuda":
        result["note"] = ("CPU smoke run: a try 'does not fit' when the activations autograd saves exceed "
                          "the fake cap; no real out-of-memory is involved")
    precisions = [p for p in ("float32", "bfloat16") if p in args.precisions]
    for i, precision in enumerate(precisions):
        share = time.monotonic() + left(deadline) / (len(precisions) - i)  # what is left, split evenly

        def fits(batch: int, precision: str = precision) -> dict[str, Any]:
            row = try_batch(model, optimizer, precision, batch, scale.size, device, cap)
            free(device)
            return row

        search = {"precision": precision, **largest_fitting(fits, scale.max_batch, share)}
        result["searches"].append(search)
        print(f"  {scale.large_variant} {precision}: largest micro-batch {search['largest']} "
              f"(first failure {search['first_failure']}, {len(search['tries'])} tries"
              + (f", stopped: {search['stopped']}" if search["stopped"] else "") + ")", flush=True)
    return result


# ------------------------------------------------------------------------------------------ ddp
def ddp_overrides(device: torch.device, run_dir: str) -> list[str]:
    """``--set`` items for a 2-step run of the synthetic-tiny config on a handful of small scenes."""
    items = [
        "model.overrides.image_size=56", "data.synthetic.train_images=8", "data.synthetic.val_images=2",
        "data.synthetic.test_images=0", "data.synthetic.image_size=[64, 64]", "data.synthetic.max_objects=3",
        "train.epochs=1", "train.batch_size=4", "train.micro_batch_size=2", "train.max_steps=2", "train.max_minutes=null",
        "output.tensorboard=false", "output.plot=false", "output.progress=false",
        f"train.device={device.type}", f"output.dir={run_dir}",
    ]
    if device.type == "cpu":
        items.append("train.num_threads=1")  # one thread per process on a shared machine
    return items


def child_env() -> dict[str, str]:
    """The environment of a child process: this checkout's ``src`` first on the import path."""
    src = os.path.join(REPO, "src")
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=src + (os.pathsep + path if path else ""), OMP_NUM_THREADS="1")


def run_torchrun(target: list[str], run_dir: str, timeout_s: float) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node 1 TARGET``; its return code, time, summary.json and the
    last JSON line it printed (the forced-DDP worker's report)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *target]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 1), env=child_env(),
                              cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"finished": False, "error": f"timed out after {timeout_s:.0f} s", "command": cmd[2:]}
    result: dict[str, Any] = {"returncode": proc.returncode, "seconds": time.perf_counter() - start,
                              "command": cmd[2:]}
    summary_file = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_file):
        with open(summary_file) as f:
            summary = json.load(f)
        result["summary"] = {k: summary.get(k) for k in ("stop_reason", "global_step", "world_size",
                                                         "global_batch", "micro_batch", "accumulation",
                                                         "last_val")}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            result["worker"] = json.loads(line)
            break
    steps = result.get("summary", {}).get("global_step")
    result["finished"] = proc.returncode == 0 and steps == 2
    if not result["finished"]:
        result["error"] = f"return code {proc.returncode}, {steps} steps: {proc.stderr[-2000:]}"
    return result


def ddp_section(args: argparse.Namespace, scale: Scale, device: torch.device, deadline: float) -> dict[str, Any]:
    """The two 2-step runs under torchrun: ``detris train`` and the engine's DDP path forced."""
    work = args.workdir or tempfile.mkdtemp(prefix="gpu_check_")
    result: dict[str, Any] = {"backend": scale.ddp_backend, "runs": {}}
    cli_dir = os.path.join(work, "ddp_cli")
    sets = [x for item in ddp_overrides(device, cli_dir) for x in ("--set", item)]
    run = run_torchrun(["-m", "detris.cli", "train", TINY_CONFIG, *sets], cli_dir, left(deadline) / 2)
    run["note"] = "torchrun with one process: WORLD_SIZE=1, so the engine joins no process group"
    result["runs"]["detris_train"] = run
    forced_dir = os.path.join(work, "ddp_forced")
    spec = {"config": TINY_CONFIG, "overrides": ddp_overrides(device, forced_dir), "backend": scale.ddp_backend,
            "device": device.type}
    run = run_torchrun([HERE, "--ddp-worker", json.dumps(spec)], forced_dir, left(deadline))
    run["note"] = f"the engine's DDP path forced at world size 1 ({scale.ddp_backend} process group, DDP wrapper)"
    result["runs"]["engine_ddp"] = run
    for name, r in result["runs"].items():
        print(f"  {name}: {'finished' if r['finished'] else 'FAILED'}"
              + (f" in {r['seconds']:.1f} s" if "seconds" in r else "")
              + (f", backend {r['worker']['backend']}" if "worker" in r else ""), flush=True)
    result["finished"] = all(r["finished"] for r in result["runs"].values())
    return result


def ddp_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run under torchrun: join a ``spec['backend']`` process group, then train through the engine with
    its DDP path on although the world has one process (the engine skips DDP for one process, which
    would leave the collective back-end and the DDP wrapper untested on a single GPU)."""
    import torch.distributed as dist

    from detris.engine import loop
    from detris.engine.config import load_config
    from detris.engine.distributed import DistInfo

    class ForcedDDP(DistInfo):
        @property
        def distributed(self) -> bool:
            return True

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device("cuda", local) if spec["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=spec["backend"])
    try:
        probe = torch.full((1,), 1.0 + rank, device=device)
        dist.all_reduce(probe)
        summary = loop.run_training(load_config(spec["config"], spec["overrides"]),
                                    ForcedDDP(rank, world, local, device))
        report = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "all_reduce": probe.item(),
                  "global_step": summary["global_step"], "stop_reason": summary["stop_reason"]}
        if spec["backend"] == "nccl":
            version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
            report["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        return report
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ predict
def predict_section(args: argparse.Namespace, scale: Scale, device: torch.device, deadline: float) -> dict[str, Any]:
    """``benchmarks/predict_throughput.py`` in one process on this device (each configuration in a fresh
    process of its own, as the script runs them); the rows it printed before the deadline are kept."""
    work = args.workdir or tempfile.mkdtemp(prefix="gpu_check_")
    out = os.path.join(work, "predict_throughput.json")
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "predict_throughput.py"), "--device", device.type,
           "--variants", *scale.predict_variants, "--images", *map(str, scale.predict_images),
           "--size", *map(str, scale.predict_size), "--processes", "1", "--workers", "2", "--json", out]
    env = child_env()
    if "OMP_NUM_THREADS" in os.environ:  # the pipeline's own CPU work runs with torch's default threads
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    else:
        env.pop("OMP_NUM_THREADS")
    result: dict[str, Any] = {"command": cmd[1:]}
    # A session of its own: at the deadline the script and the configuration it is running are stopped
    # together (a configuration left running would hold the GPU during the next section).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        printed, errors = proc.communicate(timeout=max(left(deadline), 1))
        result["returncode"] = proc.returncode
        if proc.returncode != 0:
            result["error"] = errors[-2000:]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        printed, _ = proc.communicate()
        result["stopped"] = "time budget"
    if os.path.isfile(out):
        with open(out) as f:
            result["rows"] = json.load(f)["results"]
    else:  # stopped early: the rows printed so far (one JSON line per configuration)
        result["rows"] = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    for row in result["rows"]:
        print(f"  {row['model']} {row['mode']}: {float(row['images/s']):.2f} images/s, "
              f"forward busy {float(row['forward busy %']):.1f} %", flush=True)
    return result


# ------------------------------------------------------------------------------------------ compile
def compile_section(args: argparse.Namespace, scale: Scale, device: torch.device, deadline: float) -> dict[str, Any]:
    """``torch.compile`` on against off for our eval forward (float32, bfloat16) and, if the budget
    allows, our float32 training step; eager and compiled are timed alternately after the compiling call."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = C.build_ours(scale.variant, args.seed).to(device)
    data = device_batch(scale.variant, scale.batch, scale.size, device)
    result: dict[str, Any] = {"variant": scale.variant, "size": scale.size, "batch": scale.batch,
                              "backend": args.compile_backend, "cases": []}
    plan = [("eval", p) for p in ("float32", "bfloat16") if p in args.precisions] + [("train", "float32")]
    first_compile_s = 0.0
    for mode, precision in plan:
        row: dict[str, Any] = {"mode": mode, "precision": precision}
        result["cases"].append(row)
        # A training step compiles forward and backward graphs: about twice an eval forward's work.
        estimate = first_compile_s * (2.5 if mode == "train" else 1.0) + 5
        if left(deadline) < estimate:
            row["skipped"] = f"time budget ({left(deadline):.0f} s left, compiling needs about {estimate:.0f} s)"
            print(f"  compile {mode} {precision}: skipped, {row['skipped']}", flush=True)
            continue
        torch._dynamo.reset()
        counters.clear()
        model.train(mode == "train")
        compiled = torch.compile(model, backend=args.compile_backend)
        eager_fn = case_fn(model, False, mode, precision, device, data)
        compiled_fn = case_fn(compiled, False, mode, precision, device, data)
        row["compile_s"] = B.time_call(compiled_fn, device)  # the first call traces and compiles
        first_compile_s = first_compile_s or row["compile_s"]
        repeats = scale.repeats if mode == "eval" else scale.train_repeats
        times = B.alternate_timed({"eager": eager_fn, "compiled": compiled_fn}, device, repeats, warmup=scale.warmup)
        row.update(eager_ms=1e3 * B.median(times["eager"]), compiled_ms=1e3 * B.median(times["compiled"]),
                   rounds=repeats, graph_breaks=sum(counters["graph_break"].values()),
                   graph_break_reasons=[r[:300] for r in sorted(counters["graph_break"])[:10]], eager_times_s=times["eager"],
                   compiled_times_s=times["compiled"])
        row["speedup"] = row["eager_ms"] / row["compiled_ms"]
        print(f"  compile {mode} {precision}: eager {row['eager_ms']:.1f} ms, compiled {row['compiled_ms']:.1f} ms "
              f"(x{row['speedup']:.2f}; compiling {row['compile_s']:.1f} s, {row['graph_breaks']} graph breaks)",
              flush=True)
        del compiled, eager_fn, compiled_fn
        free(device)
    torch._dynamo.reset()
    return result


# ------------------------------------------------------------------------------------------ report
# Distributions detris imports at run time that a bare GPU image may lack (ftfy: the tokenizer;
# pycocotools: the REFER reader of the training runs).
DEPENDENCIES = ("ftfy", "pycocotools", "opencv-python-headless", "regex", "safetensors", "pyyaml", "numpy")


def dependency_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (None: missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_facts(device: torch.device) -> dict[str, Any]:
    """``_bench.machine_info`` plus the CUDA build, the GPU and the settings that change float32 numbers."""
    info = B.machine_info(device)
    info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                else None, matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    info["dependencies"] = {name: dependency_version(name) for name in DEPENDENCIES}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=props.total_memory / GIB, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_multiprocessors=props.multi_processor_count)
    return info


def section_rows(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"section": name, "status": s["status"], "seconds": s.get("seconds"), "budget_s": s.get("budget_s"),
             "note": "".join((s.get("error") or s.get("reason") or s.get("official_skipped") or "").splitlines()[:1])[:160]}
            for name, s in sections.items()]


def render_tables(payload: dict[str, Any]) -> str:
    """Markdown tables of every section that has results (``_bench.print_table``, captured)."""
    sections, m = payload["sections"], payload["machine"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print(f"{m.get('gpu') or m['cpu']}; torch {m['torch']}, CUDA {m['cuda']}; {m['date']}; "
              f"device {payload['args']['device']}")
        B.print_table("Sections", section_rows(sections), ["section", "status", "seconds", "budget_s", "note"])
        c = sections.get("compare", {})
        if c.get("timing"):
            B.print_table(f"Ours vs official: {c['variant']} {c['size']}², batch {c['batch']} (medians, ms)",
                          c["timing"], ["mode", "precision", "ours_ms", "official_ms", "ratio", "paired_ratio",
                                        "rounds", "skipped"])
        if c.get("memory"):
            B.print_table(f"Peak memory per case, GiB ({c['memory'][0].get('memory_kind', '-')})", c["memory"],
                          ["mode", "precision", "ours_peak_gib", "official_peak_gib", "ratio", "skipped"])
        if c.get("logits"):
            B.print_table("Logits, float32 eval", [c["logits"]], ["max_abs_diff", "logits_std", "logits_max_abs"])
        mb = sections.get("microbatch", {})
        if mb.get("searches"):
            rows = []
            for s in mb["searches"]:
                best = next((t for t in s["tries"] if t["batch"] == s["largest"]), {})
                rows.append({**s, "variant": mb["variant"], "tries": len(s["tries"]), "peak_gib": best.get("peak_gib"),
                             "saved_activation_mib": best.get("saved_activation_mib")})
            B.print_table(f"Largest training micro-batch, {mb['variant']} {mb['size']}² (memory at the largest)", rows,
                          ["variant", "precision", "largest", "first_failure", "exact", "tries", "peak_gib",
                           "saved_activation_mib", "stopped"])
        d = sections.get("ddp", {})
        if d.get("runs"):
            rows = [{"run": name, "finished": r["finished"], "seconds": r.get("seconds"),
                     "steps": r.get("summary", {}).get("global_step"),
                     "backend": r.get("worker", {}).get("backend", "none (world size 1)"),
                     "note": r.get("note")} for name, r in d["runs"].items()]
            B.print_table("2-step training run under torchrun --nproc_per_node 1", rows,
                          ["run", "finished", "steps", "backend", "seconds", "note"])
        pr = sections.get("predict", {})
        if pr.get("rows"):
            B.print_table("Segmenting a collection, one process (benchmarks/predict_throughput.py)", pr["rows"],
                          ["model", "mode", "images", "wall s", "images/s", "expr/s", "forward busy %"])
        k = sections.get("compile", {})
        if k.get("cases"):
            B.print_table(f"torch.compile ({k['backend']}) on vs off: {k['variant']} {k['size']}², batch {k['batch']}",
                          k["cases"], ["mode", "precision", "eager_ms", "compiled_ms", "speedup", "compile_s",
                                       "graph_breaks", "skipped"])
    return out.getvalue()


def write_outputs(args: argparse.Namespace, payload: dict[str, Any]) -> str:
    """Write the JSON and the table (both rewritten after every section); returns the table."""
    if args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2, default=str)
    try:
        table = render_tables(payload)
    except Exception as err:  # the JSON is written already: a table bug must not end the run
        table = f"(the tables could not be rendered: {type(err).__name__}: {err})\n"
    if args.table:
        with open(args.table, "w") as f:
            f.write(table)
    return table


# ------------------------------------------------------------------------------------------ main
RUNNERS: dict[str, Callable[[argparse.Namespace, Scale, torch.device, float], dict[str, Any]]] = {
    "compare": compare_section, "microbatch": microbatch_section, "ddp": ddp_section, "predict": predict_section,
    "compile": compile_section,
}


def run_section(name: str, args: argparse.Namespace, scale: Scale, device: torch.device,
                overall: float) -> dict[str, Any]:
    """One section within min(its budget, the overall deadline); an exception becomes its record."""
    budget = scale.budgets[name]
    if name not in args.sections:
        return {"status": "skipped", "reason": "not in --sections", "budget_s": budget}
    if left(overall) < 10:
        return {"status": "skipped", "reason": f"overall deadline ({scale.deadline_s:.0f} s) reached", "budget_s": budget}
    print(f"\n[{name}] budget {budget:.0f} s", flush=True)
    start = time.monotonic()
    try:
        record = {"status": "ok", **RUNNERS[name](args, scale, device, min(start + budget, overall))}
        if name == "ddp" and not record["finished"]:
            record["status"], record["error"] = "error", "a torchrun run did not finish its 2 steps"
        if name == "predict" and record.get("returncode", 0) != 0:
            record["status"] = "error"
    except (Exception, SystemExit) as err:  # SystemExit: _official's message for a wrong checkout path
        record = {"status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
        print(f"  {name} failed: {record['error']}", flush=True)
    record.update(seconds=time.monotonic() - start, budget_s=budget)
    free(device)
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"],
                   help="cuda: the full check; cpu: every section at a tiny scale (a smoke run)")
    p.add_argument("--official", help="checkout of the official DETRIS code (without it, ours alone is timed)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--precisions", nargs="+", type=precision_name, choices=list(DTYPES), default=list(DTYPES),
                   help="float32, bfloat16, float16 (fp32, bf16, fp16 are read as the same)")
    p.add_argument("--variant", help="model of the compare and compile sections (default: the device's scale)")
    p.add_argument("--size", type=int, help="square input side, a multiple of 14 (default: the device's scale)")
    p.add_argument("--batch", type=int, help="batch of the compare and compile sections")
    p.add_argument("--max-batch", type=int, help="upper end of the micro-batch search")
    p.add_argument("--budget", action="append", default=[], metavar="SECTION=SECONDS",
                   help="time budget of one section (repeatable)")
    p.add_argument("--deadline-s", type=float, help="overall time limit; sections not started by then are skipped")
    p.add_argument("--compile-backend", help="torch.compile back-end (default: inductor on cuda, aot_eager on cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where the training runs write (default: a temporary folder)")
    p.add_argument("--json", help="write the machine, the settings and every measurement here")
    p.add_argument("--table", help="write the markdown tables here (they are printed too)")
    p.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    p.add_argument("--search-check", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def scale_for(args: argparse.Namespace) -> Scale:
    """The device's scale with the command line's replacements."""
    scale = Scale(**asdict(SCALES[args.device]))
    for key in ("variant", "size", "batch", "max_batch"):
        if getattr(args, key) is not None:
            setattr(scale, key, getattr(args, key))
    if args.deadline_s is not None:
        scale.deadline_s = args.deadline_s
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS or not seconds:
            raise SystemExit(f"--budget {item!r}: expected SECTION=SECONDS with SECTION one of {', '.join(SECTIONS)}")
        scale.budgets[name] = float(seconds)
    args.compile_backend = args.compile_backend or scale.compile_backend
    return scale


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        print(json.dumps(ddp_worker(json.loads(args.ddp_worker))), flush=True)
        return 0
    if args.search_check:
        print(json.dumps(search_check(json.loads(args.search_check))), flush=True)
        return 0
    start = time.monotonic()
    scale = scale_for(args)
    overall = start + scale.deadline_s
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = machine_facts(device)
    print(f"{machine.get('gpu') or machine['cpu']}; torch {machine['torch']}, CUDA {machine['cuda']}; "
          f"scale {args.device}: {scale.variant} {scale.size}², batch {scale.batch}; deadline {scale.deadline_s:.0f} s",
          flush=True)
    missing = [name for name, v in machine["dependencies"].items() if v is None]
    if missing:
        print(f"missing distributions (sections that need them will fail): {', '.join(missing)}", flush=True)
    payload: dict[str, Any] = {"machine": machine, "args": vars(args), "scale": asdict(scale), "sections": {}}
    for name in SECTIONS:
        # Written before the section starts: a run stopped from outside then shows where it stopped.
        payload["sections"][name] = {"status": "running", "reason": "started but never finished (process stopped)"}
        write_outputs(args, payload)
        payload["sections"][name] = run_section(name, args, scale, device, overall)
        payload["total_s"] = time.monotonic() - start
        write_outputs(args, payload)
    machine["load_average_end"] = B.load_average()
    table = write_outputs(args, payload)
    print("\n" + table)
    print(f"total {payload['total_s']:.0f} s" + (f"; wrote {args.json}" if args.json else ""))
    return 0 if all(s["status"] != "error" for s in payload["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
