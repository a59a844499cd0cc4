"""Helpers shared by the model benchmarks (``model_speed.py``, ``compare_official.py``).

Nothing here is part of the library: machine description, timing, memory high-water marks, random
weights at a realistic scale, inputs, tables and JSON. What is measured comes from the library: the
training step is `detris.engine.task.SegmentationTask` under `detris.precision.autocast`, mask
agreement is `detris.metrics.intersection_union`. The scripts import this file as a sibling module
(``python benchmarks/<script>.py`` puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detris.engine.task import SegmentationTask
from detris.metrics import intersection_union
from detris.precision import autocast, autocast_dtype

# Sentences of the kind RefCOCO holds; token rows are built from them with the model's word_len.
SENTENCES = (
    "the man on the left in a red shirt",
    "the tall woman standing behind the wooden table on the far right side of the picture holding a cup",
    "blue car",
    "second zebra from the right",
    "a dog lying on the sofa next to the lamp",
    "bottom left plate with a slice of cake",
    "the person in white",
    "umbrella closest to the camera",
)


# ------------------------------------------------------------------------------------------ machine
def cpu_model_name() -> str:
    """``lscpu``'s model name (falls back to ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD / matrix-unit flags of the first CPU (what decides whether bf16 has hardware support)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    wanted = ("avx", "amx", "fma", "bf16", "vnni", "fp16")
                    return sorted({flag for flag in line.split(":", 1)[1].split() if flag.startswith(wanted)})
    except OSError:
        pass
    return []


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a reader needs to compare a result: CPU, cores, threads, torch build, GPU, date, load."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model_name(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of one call, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def repeat_timed(
    fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1, budget_s: float = math.inf
) -> list[float]:
    """``warmup`` untimed calls, then up to ``repeats`` timed ones; stops early (after at least one)
    once ``budget_s`` seconds of timed calls are spent, so that slow configurations stay bounded."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        times.append(time_call(fn, device))
        if sum(times) >= budget_s:
            break
    return times


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its waited-for
    children), from ``/proc/stat`` and ``os.times``; (nan, nan) where ``/proc/stat`` is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


class ForeignLoad:
    """CPU time used by other processes (and by the hypervisor, as steal) while a block runs: on a
    shared machine this tells a clean measurement from one that competed for the cores."""

    def __enter__(self) -> ForeignLoad:
        self.start = _cpu_seconds()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = _cpu_seconds()
        self.wall = time.perf_counter() - self.wall
        self.cpu_s = max(0.0, (end[0] - self.start[0]) - (end[1] - self.start[1]))

    @property
    def cores(self) -> float:
        """Average number of cores the others used (nan if unknown)."""
        return self.cpu_s / self.wall if self.wall > 0 else math.nan


def alternate_timed(
    fns: Mapping[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    max_foreign_cores: float = math.inf,
    max_discarded: int = 0,
) -> dict[str, Any]:
    """Time several callables in turn (a, b, a, b, ...), so that a change of machine load hits all of
    them alike; ``warmup`` untimed rounds first.

    A round during which other processes used more than ``max_foreign_cores`` cores on average is
    discarded and run again, at most ``max_discarded`` times in all (then it is kept). Returns
    ``{name: [seconds per round]}`` plus ``"foreign_cores"`` (per kept round) and ``"discarded"``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, Any] = {name: [] for name in fns}
    times["foreign_cores"], times["discarded"] = [], 0
    while len(times["foreign_cores"]) < repeats:
        with ForeignLoad() as load:
            round_times = {name: time_call(fn, device) for name, fn in fns.items()}
        if load.cores > max_foreign_cores and times["discarded"] < max_discarded:
            times["discarded"] += 1
            time.sleep(10)  # let a competing job finish or settle
            continue
        for name, seconds in round_times.items():
            times[name].append(seconds)
        times["foreign_cores"].append(round(load.cores, 3))
    return times


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


# ------------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so that the RSS reflects live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux ``/proc/self/clear_refs``); False if unsupported,
    in which case ``peak_rss_bytes`` is the lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """RSS high-water mark in bytes (``VmHWM``, else ``ru_maxrss``)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return (kib or 0) * 1024


def run_worker(script: str, spec: Mapping[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``script --worker JSON`` in a fresh interpreter and return the JSON object it prints last.

    A fresh process per measurement is what makes a peak-RSS number belong to one configuration.
    """
    cmd = [sys.executable, script, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"worker {spec} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


# ------------------------------------------------------------------------------------------ GEMM limit
def gemm_rate(
    dtype: torch.dtype, device: torch.device, max_size: int, target_s: float = 0.25, repeats: int = 3
) -> dict[str, Any]:
    """Dense square matmul FLOP/s, the practical compute limit for ``dtype`` on ``device``.

    Both operand layouts that models use are timed, ``A @ B`` and ``A @ B.T`` (``nn.Linear``), because
    a backend without native support for a dtype can be far slower in one of them. The size doubles
    from 256 while one product takes less than ``target_s`` (up to ``max_size``), so that a slow
    emulated dtype does not take minutes; the best rate (median of ``repeats``) is the limit.
    """
    result: dict[str, Any] = {"dtype": str(dtype).replace("torch.", "")}
    best = 0.0
    for layout in ("nn", "nt"):
        size = 256
        while True:
            a = torch.randn(size, size, device=device, dtype=torch.float32).to(dtype)
            b = torch.randn(size, size, device=device, dtype=torch.float32).to(dtype)
            rhs = b if layout == "nn" else b.t()
            times = repeat_timed(lambda: a @ rhs, device, repeats, warmup=1)
            seconds = median(times)
            if seconds >= target_s or size * 2 > max_size:
                break
            size *= 2
        rate = 2 * size**3 / seconds
        result[f"{layout}_size"] = size
        result[f"{layout}_flops_per_s"] = rate
        if rate > best:
            best = rate
            result["layout"], result["size"] = layout, size
    result["flops_per_s"] = best
    return result


def gemm_callable(dtype: torch.dtype, device: torch.device, size: int, layout: str) -> tuple[Callable[[], Tensor], int]:
    """One square ``size`` matmul in ``layout`` ("nn" or "nt") and its FLOPs, to time alongside a model
    so that a machine whose speed drifts (shared or virtualised cores) is compared with itself."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    rhs = b if layout == "nn" else b.t()
    return (lambda: a @ rhs), 2 * size**3


# ------------------------------------------------------------------------------------------ weights
def _fan_in(t: Tensor) -> int:
    return int(math.prod(t.shape[1:])) if t.dim() > 1 else 1


@torch.no_grad()
def randomize_(model: nn.Module, seed: int, head_kernel_scale: float = 0.2) -> nn.Module:
    """Re-draw every floating-point tensor of ``model``'s state at a scale that keeps a deep random
    network finite and makes every path matter; returns ``model``.

    Matrices / kernels ~ N(0, 1/fan_in); norm weights ~ 1 + N(0, 0.1); biases ~ N(0, 0.05); layer
    scales ~ 0.1 + N(0, 0.05); embeddings and prefix tokens ~ N(0, 0.1); BatchNorm running means
    ~ N(0, 0.1) and variances ~ U(0.5, 1.5). The head's kernel generator (``proj.txt``) is scaled by
    ``head_kernel_scale`` so that the logits have the spread of a trained model (std of a few units).
    Speed does not depend on the values, but a bf16-vs-fp32 mask comparison does.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        shape = tuple(tensor.shape)
        normal = torch.randn(shape, generator=gen, dtype=torch.float64)
        if leaf == "running_var":
            new = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
        elif leaf == "running_mean":
            new = 0.1 * normal
        elif leaf == "gamma":
            new = 0.1 + 0.05 * normal
        elif name.endswith(("token_embedding.weight", "positional_embedding", "pos_embed", "cls_token",
                            "register_tokens", "mask_token")):
            new = 0.1 * normal
        elif tensor.dim() >= 2:
            new = normal / math.sqrt(_fan_in(tensor))
        elif leaf == "weight":  # a 1-D weight belongs to a LayerNorm or BatchNorm
            new = 1.0 + 0.1 * normal
        else:
            new = 0.05 * normal
        if name.startswith("proj.txt."):
            new = new * head_kernel_scale
        tensor.copy_(new.to(tensor.dtype))
    return model


# ------------------------------------------------------------------------------------------ inputs
def smooth_images(n: int, size: int, seed: int) -> Tensor:
    """(n, 3, size, size) float32 images with image-like spatial structure, per-channel normalised."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 8, 8, generator=gen)
    fine = torch.randn(n, 3, size // 8, size // 8, generator=gen)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.3 * F.interpolate(fine, size=(size, size), mode="bilinear", align_corners=False)
    img = img + 0.05 * torch.randn(n, 3, size, size, generator=gen)
    return (img - img.mean(dim=(2, 3), keepdim=True)) / img.std(dim=(2, 3), keepdim=True)


def sample_tokens(n: int, word_len: int, offset: int = 0) -> Tensor:
    """(n, word_len) int64 CLIP token rows of ``SENTENCES`` (cycled from ``offset``)."""
    from detris import tokenize

    texts = [SENTENCES[(offset + i) % len(SENTENCES)] for i in range(n)]
    return tokenize(texts, context_length=word_len)


def sample_masks(n: int, size: int, seed: int) -> Tensor:
    """(n, 1, size, size) float {0, 1} blob-shaped targets for training steps."""
    gen = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.randn(n, 1, 6, 6, generator=gen), size=(size, size), mode="bilinear")
    return (field > 0.5).float()


# ------------------------------------------------------------------------------------------ measured
def train_step_fn(model: nn.Module, images: Tensor, tokens: Tensor, masks: Tensor, precision: str = "float32",
                  official: bool = False) -> Callable[[], None]:
    """One training step of ``model`` on (images, tokens, masks): the engine's training task
    (`SegmentationTask`: the model and its loss) under ``precision``'s autocast, backward (through a
    GradScaler for float16, as the engine), Adam on the trainable parameters.

    ``official``: ``model`` is the official implementation, whose forward returns (pred, mask, loss).
    """
    device_type = images.device.type
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device_type, enabled=autocast_dtype(precision) == torch.float16)
    task = model if official else SegmentationTask(model)  # type: ignore[arg-type]

    def step() -> None:
        with autocast(precision, device_type):
            out = task(images, tokens, masks)
        loss = out[2] if official else out.loss.total
        scaler.scale(loss.float()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two masks of the same image (`detris.metrics.intersection_union`); two empty masks agree
    fully (1.0), where the official per-sample IoU would score 0."""
    inter, union = intersection_union(a, b)
    return 1.0 if union == 0 else inter / union


# ------------------------------------------------------------------------------------------ output
def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits - 1, 1)}f}"
        return f"{value:.2e}"
    return str(value)


def print_table(title: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A GitHub-markdown table of ``columns`` (missing values print as ``-``)."""
    rows = list(rows)
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")


def write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"\nwrote {path}")


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30
