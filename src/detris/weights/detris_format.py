"""Our own format: a directory with ``config.json`` and ``model.safetensors``.

``config.json`` holds the format and its version, the variant's sizes (``config``), the preprocessing
contract (``processing``, see `detris.processing`) and, for an adapter-only model, the base backbone
files it was built from (``base_weights``); ``model.safetensors`` holds every weight, or only the
trained ones (adapter-only: a few MB on top of backbone files the user already has).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import bundled
from ..processing import ProcessingConfig
from ..registry import BACKBONE_URLS
from ..utils import atomic_write_many
from ..variants import DetrisConfig
from .io import CheckpointError, PathLike, StateDict, describe_keys, load_strict

if TYPE_CHECKING:
    from ..modeling import DETRIS

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "FORMAT_VERSION", "ModelFiles", "trainable_state_dict",
           "save_pretrained", "push_to_hub", "read_model_dir", "load_trained_weights", "BaseFile", "file_sha256"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def trainable_state_dict(model: DETRIS) -> StateDict:
    """What training changes: every trainable parameter plus the running statistics (BatchNorm buffers)
    of the trainable modules. An adapter-only checkpoint stores exactly this."""
    names: set[str] = {n for n, p in model.named_parameters() if p.requires_grad}
    owners = {id(m) for m in model.trainable_modules()}
    for prefix, module in model.named_modules():
        if id(module) in owners:
            names.update(f"{prefix}.{n}" for n, _ in module.named_buffers())
    full = model.state_dict()
    return {k: full[k] for k in sorted(names)}


@dataclass(frozen=True)
class BaseFile:
    """A base backbone file an adapter-only model needs, as ``config.json`` records it: its canonical
    (file) name, its sha256, where it was when saved and, for the official backbones, where to get it."""

    name: str
    sha256: str | None = None
    path: str | None = None
    url: str | None = None

    @classmethod
    def read(cls, value: Any) -> BaseFile:
        """A record of this form, or the plain name / path older files hold."""
        if isinstance(value, str):
            return cls(name=Path(value).name, path=value if Path(value).is_absolute() else None)
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return cls(value["name"], value.get("sha256"), value.get("path"), value.get("url"))
        raise ValueError(f"a base_weights entry must be a file name or {{name, sha256, path, url}}, got {value!r}")


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: PathLike) -> str:
    """sha256 of a file (remembered per path, size and modification time within the process)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _base_record(path: PathLike) -> BaseFile:
    """How ``config.json`` records a base backbone file: by canonical name and sha256, so the model
    can move to another machine; the official download URL for the official backbone files. Files
    shipped with the package are found again wherever it is installed, so no path is kept for them."""
    path = Path(path)
    url = BACKBONE_URLS.get(path.name)
    if not path.is_file():  # a bare name the loader finds in $DETRIS_HOME: nothing to hash here
        return BaseFile(path.name, url=url)
    shipped = path.parent.resolve() == bundled.assets_dir().resolve()
    return BaseFile(path.name, file_sha256(path), None if shipped else str(path.resolve()), url)


def save_pretrained(
    model: DETRIS,
    directory: PathLike,
    adapter_only: bool = False,
    base_weights: Mapping[str, PathLike] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (each atomically, with the user's umask).

    With ``adapter_only`` the safetensors file holds only ``trainable_state_dict(model)`` (a few MB) and
    ``config.json`` records the base backbone files it needs (`BaseFile`: name, sha256, path, URL of
    the official files), which ``detris.from_pretrained`` finds or downloads before loading.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg: DetrisConfig = model.config
    if adapter_only:
        base = dict(base_weights or {})
        if set(base) != {"dinov2", "clip"}:
            raise ValueError(
                "an adapter-only save needs the base backbone files: pass base_weights={'dinov2': ..., 'clip': ...} "
                "(the DINOv2 .pth and the CLIP .pt the model was built from)"
            )
        tensors = trainable_state_dict(model)
    else:
        base = {}
        tensors = model.state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta: dict[str, Any] = {
        "format": "detris",
        "format_version": FORMAT_VERSION,
        "adapter_only": adapter_only,
        "config": cfg.to_dict(),
        "processing": model.processing.to_dict(),
    }
    if adapter_only:
        meta["base_weights"] = {k: dataclasses.asdict(_base_record(v)) for k, v in base.items()}
    # Both files are complete before either replaces its predecessor: a full disk while writing the
    # second never leaves new weights beside an old config.json.
    atomic_write_many({
        directory / WEIGHTS_NAME: lambda p: save_file(tensors, p, metadata={"format": "pt"}),
        directory / CONFIG_NAME: lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"),
    })
    return directory


def push_to_hub(model: DETRIS, repo_id: str, adapter_only: bool = False, private: bool = False,
                base_weights: Mapping[str, PathLike] | None = None, **kwargs: Any) -> str:
    """Save to a temporary directory and upload it to the Hugging Face Hub (needs ``huggingface_hub``)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError("push_to_hub needs huggingface_hub: pip install 'detris[demo]'") from None
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, adapter_only=adapter_only, base_weights=base_weights)
        api.upload_folder(repo_id=repo_id, folder_path=tmp, **kwargs)
    return repo_id


@dataclass(frozen=True)
class ModelFiles:
    """What ``config.json`` of a model directory says, read and checked without touching the weights."""

    directory: Path
    config: DetrisConfig
    processing: ProcessingConfig
    adapter_only: bool
    base_weights: dict[str, BaseFile]

    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS_NAME


def read_model_dir(directory: PathLike) -> ModelFiles:
    """Parse and check ``config.json`` of a model directory (the one place it is read)."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    for p in (config_path, directory / WEIGHTS_NAME):
        if not p.is_file():
            raise FileNotFoundError(f"{directory} lacks {p.name}: expected {CONFIG_NAME} + {WEIGHTS_NAME}")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "detris" or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{config_path} is not a detris model config (no \"format\": \"detris\" / \"config\")")
    try:
        cfg = DetrisConfig.from_dict(meta["config"])
        processing = ProcessingConfig.from_dict(meta.get("processing"), cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    adapter_only = bool(meta.get("adapter_only"))
    base = meta.get("base_weights") or {}
    if adapter_only and (not isinstance(base, dict) or set(base) != {"dinov2", "clip"}):
        raise CheckpointError(f"{config_path}: an adapter-only model must name its dinov2 and clip base_weights")
    try:
        records = {kind: BaseFile.read(value) for kind, value in base.items()}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    return ModelFiles(directory, cfg, processing, adapter_only, records)


def load_trained_weights(model: DETRIS, files: ModelFiles) -> None:
    """Strictly load ``model.safetensors`` into a model built from ``files.config`` (with the base
    backbone files already loaded when the model is adapter-only)."""
    from .io import load_state_file
    from .official import load_detris_state

    tensors = load_state_file(files.weights_path)
    if not files.adapter_only:
        load_detris_state(model, tensors, what=f"weights {files.weights_path}")
        return
    expected = trainable_state_dict(model)
    what = f"adapter-only weights {files.weights_path}"
    load_strict(model, tensors, what=what, skip_missing=[k for k in model.state_dict() if k not in expected])
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{what} lack trainable keys: {describe_keys(missing)}")
