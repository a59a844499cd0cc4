"""Service: turn a name into a loaded model.

A name is a model directory written by ``save_pretrained``, a Hugging Face Hub repo id holding one, or
the bundled demo model ``"detris-tiny-synthetic"``. Adapter-only models find their base backbone files
by the names ``config.json`` records: beside the model, in ``$DETRIS_HOME`` (default
``~/.cache/detris``), or among the files shipped with the package. Also here: building a model from an
official DETRIS training checkpoint, and uploading a model to the Hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from . import bundled
from .build import build_model
from .modeling import DETRIS
from .variants import VARIANTS, DetrisConfig
from .weights import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, PathLike
from .weights.detris_format import ModelFiles, load_trained_weights, push_to_hub, read_model_dir
from .weights.io import load_state_file
from .weights.official import extract_state_dict, guess_variant, infer_config, load_detris_state

__all__ = ["from_pretrained", "load_official_checkpoint", "resolve_model_dir", "push_to_hub", "detris_home"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_EXPECTED = f"a folder written by save_pretrained or `detris convert-official`, holding {CONFIG_NAME} + {WEIGHTS_NAME}"


def detris_home() -> Path:
    """Where downloaded and shared backbone files live: ``$DETRIS_HOME``, default ``~/.cache/detris``."""
    return Path(os.environ.get("DETRIS_HOME", Path.home() / ".cache" / "detris")).expanduser()


def resolve_model_dir(name: PathLike) -> Path:
    """A local model directory, the bundled demo model, or a Hub repo id fetched to one.

    Errors are `FileNotFoundError` saying what a model directory holds.
    """
    name = str(name)
    if name == bundled.DEMO_MODEL_NAME:
        return bundled.demo_model_dir()
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


def _resolve_base(name: str, directory: Path) -> Path:
    candidates = [Path(name).expanduser()]
    if not candidates[0].is_absolute():
        home = detris_home()
        candidates = [directory / name, home / name, home / Path(name).name, bundled.assets_dir() / name]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"base weights {name!r} of the adapter-only model in {directory} not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + ". Pass dinov2_weights=/clip_weights= to from_pretrained or put the file in $DETRIS_HOME."
    )


def _build(files: ModelFiles, dinov2_weights: PathLike | None, clip_weights: PathLike | None) -> DETRIS:
    if files.adapter_only:
        dino = Path(dinov2_weights) if dinov2_weights else _resolve_base(files.base_weights["dinov2"], files.directory)
        clip = Path(clip_weights) if clip_weights else _resolve_base(files.base_weights["clip"], files.directory)
        model = build_model(files.config, dinov2_weights=dino, clip_weights=clip)
    else:
        model = build_model(files.config)
    load_trained_weights(model, files)
    model.processing = files.processing
    return model.eval()


def from_pretrained(
    name_or_path: PathLike,
    dinov2_weights: PathLike | None = None,
    clip_weights: PathLike | None = None,
) -> DETRIS:
    """Load a model saved by ``save_pretrained`` (a local directory, a Hub id, or the bundled demo model
    ``"detris-tiny-synthetic"``), in eval mode, with its preprocessing contract as ``model.processing``."""
    directory = resolve_model_dir(name_or_path)
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
    sd = extract_state_dict(load_state_file(path))
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
