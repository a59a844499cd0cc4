"""Precision: one name per compute dtype, what each runs under, which dtype a machine runs fast.

Names are torch's: ``float32``, ``bfloat16``, ``float16`` (`DTYPES`). The short forms ``fp32``, ``bf16``
and ``fp16`` are accepted wherever a name is read (configs, the command line) and mean the same
(`precision_name`). `autocast` is the context a precision trains under (training and the benchmarks).

``dtype="auto"`` (the default of `Predictor`, ``detris predict`` and ``detris serve``) picks bfloat16
only where the hardware has bfloat16 arithmetic -- a CUDA GPU that supports it, or a CPU with
``avx512_bf16`` or AMX (``amx_bf16``) -- and float32 elsewhere: on CPUs without those units PyTorch
emulates bfloat16 and runs several times *slower* than float32 (docs/benchmarks.md).

At inference the chosen precision runs in `DETRIS.low_precision` (the vision tower only).

``"int8"`` (CPU, opt-in, never chosen by ``auto``): `quantize_vision_int8` returns a copy of the model
whose vision-tower Linear layers are dynamically quantised (int8 weights, per-batch activation scales;
PyTorch's ``torch.ao.quantization``); everything else stays float32. `quantize_int8` with
``scope="all"`` quantises the other parts too (not shipped: it moved the masks far more,
docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from .modeling import DETRIS

__all__ = [
    "DTYPES",
    "ALIASES",
    "INT8",
    "precision_name",
    "autocast_dtype",
    "autocast",
    "cpu_has_native_bf16",
    "dtype_name",
    "resolve_dtype",
    "quantize_int8",
    "quantize_vision_int8",
]

#: The names of the compute dtypes (torch's).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Short forms accepted for the names (configs written before the names were torch's use them).
ALIASES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: The dtype that stands for "int8 vision tower" (`quantize_vision_int8`).
INT8 = torch.qint8
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def precision_name(name: str) -> str:
    """The name of a precision: ``"bf16"`` -> ``"bfloat16"``; a name of `DTYPES` is returned as it is.

    Raises:
        ValueError: neither a name nor a short form.
    """
    name = ALIASES.get(name, name)
    if name not in DTYPES:
        choices = ", ".join(f"{n} ({short})" for short, n in ALIASES.items())
        raise ValueError(f"precision {name!r} is not one of {choices}")
    return name


def autocast_dtype(name: str) -> torch.dtype | None:
    """The dtype precision ``name`` autocasts to; None for float32 (no autocast)."""
    dtype = DTYPES[precision_name(name)]
    return None if dtype == torch.float32 else dtype


def autocast(name: str, device_type: str) -> contextlib.AbstractContextManager:
    """The context precision ``name`` runs under on ``device_type`` (``"cpu"``, ``"cuda"``): nothing for
    float32, ``torch.autocast`` to bfloat16 / float16 otherwise."""
    dtype = autocast_dtype(name)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (Linux ``/proc/cpuinfo`` flags ``avx512_bf16`` or
    ``amx_bf16``). False where the flags cannot be read: float32 is never the slow choice."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(f in flags for f in _CPU_BF16_FLAGS)
    return False


def resolve_dtype(dtype: None | str | torch.dtype, device: torch.device) -> torch.dtype:
    """``None`` / ``"float32"`` / ``"bfloat16"`` / ``"float16"`` / ``"int8"`` / ``"auto"`` / a torch dtype
    -> the dtype (`INT8` for ``"int8"``). The short forms (`ALIASES`) are accepted.

    ``"auto"``: bfloat16 on a CUDA device that supports it and on a CPU with native bfloat16 units,
    float32 elsewhere.

    Raises:
        ValueError: an unknown name or dtype, or float16 on a CPU (no fast float16 kernels there).
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype == "auto":
            if device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
        dtype = ALIASES.get(dtype, dtype)
        if dtype not in (*DTYPES, "int8"):
            raise ValueError(f"dtype {dtype!r} is not supported; use auto, int8 or one of {sorted(DTYPES)}")
        dtype = INT8 if dtype == "int8" else DTYPES[dtype]
    if dtype not in (*DTYPES.values(), INT8):
        raise ValueError(f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
    if dtype == INT8 and device.type != "cpu":
        raise ValueError("int8 runs on a CPU only; on a GPU use bfloat16 or float16")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("float16 runs only on a GPU; on a CPU use bfloat16 (or auto)")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The name ``--dtype`` takes for ``dtype``: ``float32``, ``bfloat16``, ``float16`` or ``int8``."""
    return "int8" if dtype == INT8 else str(dtype).replace("torch.", "")


def quantize_int8(model: DETRIS, scope: Literal["vision", "all"] = "vision") -> DETRIS:
    """A copy of ``model`` with Linear layers dynamically quantised to int8 (CPU); the caller's model is
    left as it is.

    ``scope``: ``"vision"`` (what ``--dtype int8`` runs) quantises the vision tower's Linear layers;
    ``"all"`` every Linear layer but the head's kernel generator (``proj.txt``, which sets the mask
    boundary).

    Raises:
        ValueError: an unknown scope, or this PyTorch build has no ``torch.ao.quantization``.
    """
    if scope not in ("vision", "all"):
        raise ValueError(f"scope {scope!r}: use 'vision' or 'all'")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise ValueError("int8 needs torch.ao.quantization, which this PyTorch lacks; use bfloat16 or float32") from None
    quantized = copy.deepcopy(model).float()
    with warnings.catch_warnings():
        # The eager-mode API is marked deprecated; it is what the installed PyTorch offers.
        warnings.simplefilter("ignore")
        if scope == "vision":
            quantized.dinov2 = quantize_dynamic(quantized.dinov2, {nn.Linear}, dtype=torch.qint8)
        else:
            kernels = copy.deepcopy(quantized.proj.txt)
            quantize_dynamic(quantized, {nn.Linear}, dtype=torch.qint8, inplace=True)
            quantized.proj.txt = kernels
    return quantized


def quantize_vision_int8(model: DETRIS) -> DETRIS:
    """``quantize_int8(model, "vision")``: what ``--dtype int8`` runs."""
    return quantize_int8(model, "vision")
