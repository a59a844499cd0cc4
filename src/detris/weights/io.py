"""Reading weight files without running their code, and strict loading into a module."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PathLike", "StateDict", "CheckpointError", "load_state_file", "load_strict", "as_state_dict",
           "strip_prefix", "describe_keys", "source_name"]

PathLike = str | os.PathLike
StateDict = dict[str, Tensor]


class CheckpointError(ValueError):
    """A weight file does not fit the model it is loaded into."""


# ---------------------------------------------------------------------------------------- reading files
def _is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a zip holding TorchScript code (zipfile errors propagate: a damaged zip)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def load_state_file(path: PathLike) -> StateDict | dict[str, Any]:
    """Read a weight file without running any code it may contain.

    ``.safetensors`` through safetensors; TorchScript archives through ``torch.jit.load`` (their state
    dict); anything else through ``torch.load(weights_only=True)``, which refuses pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError, or OSError on a truncated tensor
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        if _is_torchscript_archive(path):
            module = torch.jit.load(str(path), map_location="cpu")
            return {k: v for k, v in module.state_dict().items()}
    except Exception as err:  # a damaged zip directory or TorchScript archive: zipfile's or torch's own errors
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects other than tensors and plain "
            f"containers, which could run code (torch.load(weights_only=True) said: {str(err).splitlines()[0]}). "
            "Only load checkpoints you trust; convert trusted ones with `detris convert-official`."
        ) from err
    except Exception as err:
        # A damaged file fails in many places (zipfile's BadZipFile or NotImplementedError, torch's
        # RuntimeError, an OSError on a truncated member, the unpickler's KeyError/ValueError/...):
        # whichever it is, the file is unreadable, and the error must say which file.
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); the file is damaged "
            "or truncated: download or copy it again"
        ) from err


def as_state_dict(source: PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    return dict(load_state_file(source))


def strip_prefix(sd: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    out = dict(sd)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


# ---------------------------------------------------------------------------------------- strict loading
def describe_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    what: str,
    skip_missing: Iterable[str] = (),
    hint: str = "",
) -> None:
    """Copy ``state`` into ``module``; every module key not in ``skip_missing`` must be present, no key
    may be unexpected, and shapes must agree. Errors name the offending keys."""
    expected = module.state_dict()
    skip = set(skip_missing)
    missing = sorted(k for k in expected if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{what} does not fit the model."]
        if missing:
            parts.append(f"Missing keys: {describe_keys(missing)}.")
        if unexpected:
            parts.append(f"Unexpected keys: {describe_keys(unexpected)}.")
        if mismatched:
            parts.append(f"Shape mismatches: {describe_keys(mismatched, 6)}.")
        if hint:
            parts.append(hint)
        raise CheckpointError(" ".join(parts))
    with torch.no_grad():
        for key, target in expected.items():
            if key in state:
                target.copy_(state[key].to(target.dtype))




def source_name(source: PathLike | Mapping[str, Any]) -> str:
    """How error messages name a weight source."""
    return "in-memory state dict" if isinstance(source, Mapping) else str(source)
