"""Files shipped inside the package: the tiny towers pretrained on synthetic scenes and the demo model.

``detris-tiny`` mirrors DETRIS in miniature: its image and text towers were pretrained on synthetic
referring scenes (``tools/pretrain_tiny.py``; provenance in ``docs/demo.md``) and are frozen by
``detris demo``, which trains only the adapters, neck, decoder and head on top of them. The demo's
result ships as an adapter-only model directory (``assets/detris-tiny-synthetic/``) recording the tower
files by name, so ``detris predict`` and ``detris serve`` work right after installation.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = [
    "TINY_TOWER_FILES",
    "TINY_TOWER_GEOMETRY",
    "DEMO_MODEL_NAME",
    "BundledAssetError",
    "assets_dir",
    "bundled_file",
    "tiny_tower_paths",
    "demo_model_dir",
    "packaged_config",
    "packaged_configs",
]

#: The pretrained tiny towers, each in its backbone's official key layout (fp16 safetensors).
TINY_TOWER_FILES = {
    "dinov2": "detris-tiny-synthetic-dinov2.safetensors",
    "clip": "detris-tiny-synthetic-clip.safetensors",
}
#: The towers' geometry (``DetrisConfig`` fields): 8 px patches, pretrained on a 14 x 14 grid (112 px).
TINY_TOWER_GEOMETRY = {"patch_size": 8, "pretrained_grid": 14}
#: Name of the bundled demo model (an adapter-only model directory on top of the tiny towers).
DEMO_MODEL_NAME = "detris-tiny-synthetic"

_REINSTALL = "reinstall detris (pip install --force-reinstall detris, or pip install -e . in a checkout)"


class BundledAssetError(FileNotFoundError):
    """A file that ships with the package is missing or damaged; the message says how to restore it."""


def assets_dir() -> Path:
    """The package's ``assets`` folder (a real directory: the package is installed unzipped)."""
    return Path(str(importlib.resources.files("detris") / "assets"))


def bundled_file(name: str) -> Path:
    """Path of the bundled file ``name``; raises `BundledAssetError` naming it when it is absent."""
    path = assets_dir() / name
    if not path.exists():
        raise BundledAssetError(f"the bundled file {path} is missing; {_REINSTALL}")
    return path


def tiny_tower_paths() -> dict[str, Path]:
    """``{"dinov2": path, "clip": path}`` of the pretrained tiny towers."""
    return {kind: bundled_file(name) for kind, name in TINY_TOWER_FILES.items()}


def demo_model_dir() -> Path:
    """The bundled demo model directory (``config.json`` + ``model.safetensors``, both present)."""
    for name in ("config.json", "model.safetensors"):
        bundled_file(f"{DEMO_MODEL_NAME}/{name}")
    return assets_dir() / DEMO_MODEL_NAME


def damaged(path: Path, err: Exception) -> BundledAssetError:
    """The error for a bundled model or file that exists but cannot be read (``err`` names the file)."""
    return BundledAssetError(f"the bundled {path.name} cannot be read: {err}; {_REINSTALL}")


def configs_dir() -> Path:
    """The package's ``configs`` folder: the official recipes and the demo's run, as YAML files."""
    return Path(str(importlib.resources.files("detris") / "configs"))


def packaged_configs() -> list[str]:
    """Names of the configs shipped with the package (``refcoco-detris-b``, ``synthetic-tiny``, ...)."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def packaged_config(name: str) -> Path:
    """Path of the shipped config ``name`` (file name without ``.yaml``); `BundledAssetError` names the
    known ones when there is no such config."""
    path = configs_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(packaged_configs()) or "none"
        raise BundledAssetError(f"no packaged config {name!r} (known: {known}); or {_REINSTALL}")
    return path
