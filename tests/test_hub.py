"""Hub-style save/load without a network: ``push_to_hub`` against a recording stand-in of the Hub API, and
``from_pretrained("owner/name")`` through huggingface_hub's real offline cache lookup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detris import from_pretrained
from model_fixtures import official_inputs, trained_tiny

huggingface_hub = pytest.importorskip("huggingface_hub")


class RecordingHub:
    """Stands in for ``HfApi``: keeps a copy of every uploaded folder instead of sending it."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.repos: dict[str, dict] = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        if repo_id in self.repos and not exist_ok:
            raise RuntimeError(f"{repo_id} exists")
        self.repos.setdefault(repo_id, {"private": private})
        return repo_id

    def upload_folder(self, repo_id, folder_path, **kwargs):
        assert repo_id in self.repos, "upload before create_repo"
        target = self.store / repo_id.replace("/", "--")
        shutil.copytree(folder_path, target, dirs_exist_ok=True)
        self.repos[repo_id]["uploaded"] = sorted(p.name for p in Path(folder_path).iterdir())
        self.repos[repo_id]["kwargs"] = kwargs
        return f"https://hub.invalid/{repo_id}"


def test_push_to_hub_uploads_a_loadable_model_directory(files, tmp_path, monkeypatch):
    hub = RecordingHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    model = trained_tiny(files, seed=7)
    assert model.push_to_hub("someone/detris-tiny", private=True, commit_message="first") == "someone/detris-tiny"
    assert hub.repos["someone/detris-tiny"]["private"] is True
    assert hub.repos["someone/detris-tiny"]["uploaded"] == ["config.json", "model.safetensors"]
    assert hub.repos["someone/detris-tiny"]["kwargs"] == {"commit_message": "first"}
    images, tokens = official_inputs(1)
    with torch.no_grad():
        ref = model(images, tokens).logits
        assert torch.equal(from_pretrained(tmp_path / "hub" / "someone--detris-tiny")(images, tokens).logits, ref)

    model.push_to_hub("someone/detris-tiny-adapters", adapter_only=True,
                      base_weights={"dinov2": files["dino"], "clip": files["clip_ts"]})
    light = tmp_path / "hub" / "someone--detris-tiny-adapters"
    assert (light / "model.safetensors").stat().st_size < (tmp_path / "hub" / "someone--detris-tiny" /
                                                           "model.safetensors").stat().st_size / 5


def _cache_snapshot(cache: Path, repo_id: str, source: Path, revision: str = "0123abcd") -> Path:
    """Lay ``source`` out as huggingface_hub's cache holds a downloaded model repository."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    shutil.copytree(source, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


LOAD_SCRIPT = """
import sys, torch, detris
model = detris.from_pretrained(sys.argv[1])
images, tokens = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(images, tokens).logits, sys.argv[3])
"""


def _load_in_offline_process(repo_id: str, cache: Path, home: Path, tmp: Path) -> subprocess.CompletedProcess:
    images, tokens = official_inputs(1)
    torch.save((images, tokens), tmp / "inputs.pt")
    # A fresh process: huggingface_hub reads its offline switch and cache location when imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "DETRIS_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", LOAD_SCRIPT, repo_id, str(tmp / "inputs.pt"), str(tmp / "out.pt")],
                          env=env, capture_output=True, text=True, timeout=300)


def test_from_pretrained_hub_id_resolves_through_the_offline_cache(files, tmp_path):
    model = trained_tiny(files, seed=8)
    base = {"dinov2": files["dino"].name, "clip": files["clip_ts"].name}
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "light", adapter_only=True, base_weights=base)
    cache = tmp_path / "cache"
    _cache_snapshot(cache, "someone/detris-tiny", tmp_path / "full")
    _cache_snapshot(cache, "someone/detris-tiny-adapters", tmp_path / "light")
    images, tokens = official_inputs(1)
    with torch.no_grad():
        ref = model(images, tokens).logits
    # Full weights, then adapter-only weights whose base files are found in $DETRIS_HOME.
    for repo_id in ("someone/detris-tiny", "someone/detris-tiny-adapters"):
        proc = _load_in_offline_process(repo_id, cache, files["root"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert torch.equal(torch.load(tmp_path / "out.pt"), ref), repo_id
    # A repository that is not in the cache fails with the Hub's offline message, not a wrong model.
    proc = _load_in_offline_process("someone/not-there", cache, files["root"], tmp_path)
    assert proc.returncode != 0
    assert "offline" in proc.stderr.lower() or "HF_HUB_OFFLINE" in proc.stderr
