"""Service: turn a name into a loaded model (`resolve_model_dir` lists what a name may be).

Official DETRIS checkpoints (a registry name, a file in a Hub repo, a local ``.pth``) are converted once
into ``$DETRIS_HOME/converted/`` (default ``~/.cache/detris``). Adapter-only models find their base
backbone files by the name and sha256 ``config.json`` records: where they were saved from, beside the
model, in ``$DETRIS_HOME``, among the files shipped with the package, or downloaded from the official
URL. Also here: building a model from an official checkpoint, and uploading a model to the Hub.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bundled
from .build import build_model
from .modeling import DETRIS
from .registry import REGISTRY, get_entry, list_pretrained
from .released import resolve_released_file
from .variants import VARIANTS, DetrisConfig
from .weights import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, PathLike
from .weights.detris_format import BaseFile, ModelFiles, file_sha256, load_trained_weights, push_to_hub, read_model_dir
from .weights.io import load_state_file
from .weights.official import extract_state_dict, guess_variant, infer_config, load_detris_state

__all__ = ["from_pretrained", "load_official_checkpoint", "resolve_model_dir", "push_to_hub", "detris_home",
           "list_pretrained", "download"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+/.+\.(pth|pt|bin|ckpt)")
_REGISTRY_LIKE = re.compile(r"detris-[\w-]+(\.[\w+-]+)?")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_EXPECTED = f"a folder written by save_pretrained or `detris convert-official`, holding {CONFIG_NAME} + {WEIGHTS_NAME}"


def detris_home() -> Path:
    """Where downloaded and shared backbone files live: ``$DETRIS_HOME``, default ``~/.cache/detris``."""
    return Path(os.environ.get("DETRIS_HOME", Path.home() / ".cache" / "detris")).expanduser()


def resolve_model_dir(name: PathLike, word_len: int | None = None) -> Path:
    """The model directory a name stands for; every ``--model`` and ``from_pretrained`` goes through here.

    A name is: a model directory; the bundled ``detris-tiny-synthetic``; a registry name
    (``detris-b.refcoco``, see `detris.list_pretrained`); a Hub repo id holding a model directory
    (``owner/name``); an official checkpoint in a Hub repo (``owner/name/path/in/repo.pth``); a local
    official checkpoint (``.pth``). An official checkpoint is converted once, into
    ``$DETRIS_HOME/converted/``, and later loads read the converted safetensors. ``word_len`` is for
    official checkpoints whose token length the registry does not know (22 for RefCOCOg-umd models).

    Errors are `FileNotFoundError` / `CheckpointError` naming the file and the problem.
    """
    name = str(name)
    if name == bundled.DEMO_MODEL_NAME:
        return bundled.demo_model_dir()
    official = _official_source(name, word_len)
    if official is not None:
        return _converted(official)
    path = Path(name).expanduser()
    if path.is_dir() and path.resolve() == (bundled.assets_dir() / bundled.DEMO_MODEL_NAME).resolve():
        return bundled.demo_model_dir()
    if path.is_dir():
        missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"model {name}: the folder lacks {', '.join(missing)}; expected {_EXPECTED}")
        return path
    if path.exists():
        raise FileNotFoundError(f"model {name} is a file, not a model directory; expected {_EXPECTED}")
    if not _HUB_ID.fullmatch(name) or name.startswith((".", "~")):
        raise FileNotFoundError(f"model directory not found: {name}; expected {_EXPECTED}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"model {name} is not a local directory; fetching it from the Hub needs huggingface_hub: "
            "pip install 'detris[demo]'"
        ) from None
    try:
        return Path(snapshot_download(name))
    except Exception as exc:  # offline, unknown repo, network: one message
        raise FileNotFoundError(
            f"model {name}: no such local directory, and fetching it from the Hugging Face Hub failed "
            f"({type(exc).__name__}: {exc}); expected {_EXPECTED}"
        ) from None


@dataclass(frozen=True)
class _OfficialSource:
    """An official DETRIS checkpoint to convert: where it is and how to build its model."""

    label: str  # how messages and the converted folder name it
    fetch: Callable[[], Path]  # the local file (downloaded first when on the Hub)
    variant: str | None = None  # None: read off the tensors
    word_len: int | None = None
    sha256: str | None = None


def _official_source(name: str, word_len: int | None) -> _OfficialSource | None:
    """The official checkpoint ``name`` stands for (registry name, Hub file, local .pth), or None."""
    if name in REGISTRY:
        entry = get_entry(name)
        repo, file = entry.hub_repo, resolve_released_file(entry, detris_home())  # large/, mix/: by the listing
        if repo is None or file is None:
            raise FileNotFoundError(f"{name}: {entry.note}")
        return _OfficialSource(name, functools.partial(_hub_file, repo, file), entry.variant, word_len or entry.word_len,
                               entry.sha256)
    path = Path(name).expanduser()
    if path.suffix in _CHECKPOINT_SUFFIXES and path.is_file():
        return _OfficialSource(str(path.resolve()), lambda: path, None, word_len)
    if _HUB_FILE.fullmatch(name) and not path.exists():
        repo, file = "/".join(name.split("/")[:2]), "/".join(name.split("/")[2:])
        known = next((e for e in REGISTRY.values() if (e.hub_repo, e.hub_file) == (repo, file)), None)
        return _OfficialSource(name, functools.partial(_hub_file, repo, file), known.variant if known else None,
                               word_len or (known.word_len if known else None), known.sha256 if known else None)
    if _REGISTRY_LIKE.fullmatch(name) and not path.exists():
        try:
            get_entry(name)
        except KeyError as err:
            raise FileNotFoundError(str(err.args[0])) from None
    return None


def _hub_file(repo: str, file: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FileNotFoundError(
            f"{repo}/{file} is on the Hugging Face Hub; downloading it needs huggingface_hub: pip install 'detris[demo]'"
        ) from None
    try:
        return Path(hf_hub_download(repo, file))
    except Exception as exc:  # missing file or repo, offline, network: one message
        raise FileNotFoundError(
            f"could not get {file} from the Hub repository {repo} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None


def _converted(source: _OfficialSource) -> Path:
    """Convert an official checkpoint once; later calls find the converted model directory and read no
    pickle. The folder is keyed by the file's size and modification time, so a new file converts again."""
    path = source.fetch()
    stat = path.stat()
    safe = re.sub(r"[^\w.+-]+", "_", source.label).strip("_")[-80:]
    out = detris_home() / "converted" / f"{safe}-{stat.st_size}-{stat.st_mtime_ns}"
    if (out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file():
        return out
    if source.sha256 is not None:
        actual = file_sha256(path)
        if actual != source.sha256:
            raise CheckpointError(
                f"{path} ({source.label}) has sha256 {actual}, expected {source.sha256}: the download is damaged "
                "or another file; delete it and download again"
            )
    overrides = {"word_len": source.word_len} if source.word_len else {}
    model = load_official_checkpoint(path, variant=source.variant, **overrides)
    return model.save_pretrained(out)


def _resolve_base(base: BaseFile, directory: Path) -> Path:
    """A base backbone file of an adapter-only model: where it was saved from, beside the model, in
    ``$DETRIS_HOME``, among the files shipped with the package, or downloaded into ``$DETRIS_HOME``."""
    home = detris_home()
    candidates = [Path(base.path)] if base.path else []
    candidates += [directory / base.name, home / base.name, bundled.assets_dir() / base.name]
    for c in candidates:
        if c.is_file():
            return c
    if base.url:
        return download(base.url, home / base.name, base.sha256)
    raise FileNotFoundError(
        f"base weights {base.name} (sha256 {base.sha256 or 'not recorded'}) of the adapter-only model in {directory} "
        f"not found beside it, in $DETRIS_HOME ({home}) or {'at ' + base.path if base.path else 'anywhere'}; "
        "put the file the model was trained with there, or pass dinov2_weights=/clip_weights= to from_pretrained"
    )


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest``: atomically (through ``dest.part``), resuming a partial ``.part`` and a
    dropped connection (HTTP Range requests), with a progress bar, checking ``sha256`` when given: the
    resumable downloader of `detris.fetch.http`, with this module's errors."""
    from .fetch.errors import ChecksumError, DownloadError
    from .fetch.http import fetch_url, verify_file

    try:
        fetch_url(url, dest)
    except DownloadError as exc:
        raise FileNotFoundError(str(exc)) from None
    if sha256 is not None:
        try:
            verify_file(dest, dest.name, None, sha256, f"it came from {url}: download it again")
        except ChecksumError as exc:
            raise CheckpointError(str(exc)) from None
    return dest


def _build(files: ModelFiles, dinov2_weights: PathLike | None, clip_weights: PathLike | None) -> DETRIS:
    if files.adapter_only:
        dino = Path(dinov2_weights) if dinov2_weights else _resolve_base(files.base_weights["dinov2"], files.directory)
        clip = Path(clip_weights) if clip_weights else _resolve_base(files.base_weights["clip"], files.directory)
        model = build_model(files.config, dinov2_weights=dino, clip_weights=clip, processing=files.processing)
    else:
        model = build_model(files.config, processing=files.processing)
    load_trained_weights(model, files)
    return model.eval()


def from_pretrained(
    name_or_path: PathLike,
    dinov2_weights: PathLike | None = None,
    clip_weights: PathLike | None = None,
    word_len: int | None = None,
) -> DETRIS:
    """Load a model by name (see `resolve_model_dir`: a directory, a Hub id, a registry name, an official
    ``.pth`` locally or in a Hub repo, the bundled ``"detris-tiny-synthetic"``), in eval mode, with its
    preprocessing contract as ``model.processing``."""
    directory = resolve_model_dir(name_or_path, word_len)
    if not directory.resolve().is_relative_to(bundled.assets_dir().resolve()):
        return _build(read_model_dir(directory), dinov2_weights, clip_weights)
    # A damaged bundled file is an installation problem: say so and how to repair it.
    try:
        return _build(read_model_dir(directory), dinov2_weights, clip_weights)
    except bundled.BundledAssetError:
        raise
    except Exception as err:  # any failure to read a shipped file means the same fix
        raise bundled.damaged(directory, err) from err


def load_official_checkpoint(path: PathLike, variant: str | DetrisConfig | None = None, **overrides: Any) -> DETRIS:
    """Build the model for ``variant`` and load an official DETRIS training checkpoint into it.

    The checkpoint alone is enough (it holds the frozen backbones too). Loading is strict; the only keys
    that may be dropped are the unused CLIP image tower (``txt_backbone.visual.*``). ``variant=None``
    reads it off the tensors' shapes (``model.config.name`` says which it was). Returns the model in
    eval mode. ``overrides`` replace variant fields (e.g. ``word_len=22`` for RefCOCOg-umd models: the
    token length cannot be read off the shapes).
    """
    try:
        sd = extract_state_dict(load_state_file(path))
    except CheckpointError as err:
        message = str(err)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None
    if variant is None:
        variant = guess_variant(sd)
        if variant is None:
            info = infer_config(sd)
            what = "a DETRIS checkpoint of no known variant" if "vision_width" in info else "not a DETRIS checkpoint"
            raise CheckpointError(
                f"{path}: {what} (no dinov2/txt_backbone tensors of the shapes of {sorted(VARIANTS)}); "
                "pass the variant explicitly if it is a modified one"
            )
    model = build_model(variant, **overrides)
    load_detris_state(model, sd, what=f"DETRIS checkpoint {path}")
    return model.eval()
