"""Released weights by name: the registry, official checkpoints by path or Hub file, converted once.

The Hub is a huggingface_hub cache laid out by the test and read with HF_HUB_OFFLINE=1 in a fresh
process (the library reads its offline switch and cache location when imported). References: the
model `load_official_checkpoint` builds from the same file; hashes computed here with hashlib.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import detris
from detris import pretrained
from detris.cli import main
from detris.registry import REGISTRY
from model_fixtures import official_inputs, trained_tiny
from official_formats import ddp_checkpoint

REPO_ID, HUB_PATH = "someone/detris-release", "tiny/tiny_refcoco.pth"


@pytest.fixture(scope="module")
def checkpoint(files, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """An official-format (DDP-prefixed) detris-tiny checkpoint and the model it holds."""
    model = trained_tiny(files, seed=11)
    path = tmp_path_factory.mktemp("official") / "tiny_refcoco.pth"
    torch.save(ddp_checkpoint(model.state_dict(), optimizer_state=True), path)
    return path, model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    images, tokens = official_inputs(1)
    with torch.no_grad():
        return model.eval()(images, tokens).logits


def test_registry_lists_the_released_checkpoints(capsys):
    names = detris.list_pretrained()
    assert {"detris-b.refcoco", "detris-b.refcoco+", "detris-b.refcocog-umd", "detris-b.refcocog-google",
            "detris-l.refcoco", "detris-l-mixed.mixed", "detris-tiny-synthetic"} <= set(names)
    assert REGISTRY["detris-b.refcocog-umd"].word_len == 22 and REGISTRY["detris-b.refcoco"].word_len == 17
    assert REGISTRY["detris-b.refcoco"].sha256.startswith("f52c5b00")
    assert main(["info", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "thuteam/DETRIS/base/base_refcoco.pth" in out and "val 76.0, testA 78.2, testB 73.5" in out
    assert "not confirmed" in out  # large/ and mix/ file names are not guessed


def test_a_typo_in_a_name_suggests_the_closest(capsys):
    with pytest.raises(FileNotFoundError, match=r"did you mean detris-b\.refcoco"):
        detris.from_pretrained("detris-b.refcocoo")
    with pytest.raises(FileNotFoundError, match="not confirmed"):
        detris.from_pretrained("detris-l.refcoco")


def test_a_local_official_checkpoint_loads_by_path_and_converts_once(checkpoint, tmp_path, monkeypatch, capsys):
    path, model = checkpoint
    monkeypatch.setenv("DETRIS_HOME", str(tmp_path / "home"))
    first = detris.from_pretrained(path)  # no variant: read off the shapes
    assert first.config.name == "detris-tiny"
    assert torch.equal(_logits(first), _logits(detris.load_official_checkpoint(path)))
    converted = list((tmp_path / "home" / "converted").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()

    def no_pickle(*args, **kwargs):
        raise AssertionError("the .pth was read again")

    monkeypatch.setattr(pretrained, "load_official_checkpoint", no_pickle)
    assert torch.equal(_logits(detris.from_pretrained(path)), _logits(model))
    # Every command takes it the same way, e.g. predict with no variant argument.
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 30, 30)).save(image)
    assert main(["predict", "--model", str(path), "--image", str(image), "--text", "the red shape",
                 "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err


def test_a_truncated_checkpoint_is_one_clear_line(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETRIS_HOME", str(tmp_path / "home"))
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(checkpoint[0].read_bytes()[:5000])
    assert main(["predict", "--model", str(bad), "--image", str(bad), "--text", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated.pth" in err[0] and "not a readable PyTorch checkpoint" in err[0], err


HUB_SCRIPT = """
import sys, torch, detris
from detris import registry
name, sha, out = sys.argv[1], sys.argv[2], sys.argv[3]
registry.REGISTRY["detris-tiny.test-release"] = registry.PretrainedEntry(
    "detris-tiny.test-release", "detris-tiny", "refcoco", hub_repo="someone/detris-release",
    hub_file="tiny/tiny_refcoco.pth", sha256=sha or None)
import detris.pretrained as p
if len(sys.argv) > 4:  # a second load must not read the pickle again
    p.load_official_checkpoint = lambda *a, **k: (_ for _ in ()).throw(AssertionError("read again"))
model = detris.from_pretrained(name)
torch.save(model(*torch.load(out + ".in")).logits, out)
"""


def _hub_cache(root: Path, checkpoint: Path) -> Path:
    """huggingface_hub's cache layout holding ``checkpoint`` as REPO_ID/HUB_PATH."""
    repo = root / ("models--" + REPO_ID.replace("/", "--"))
    target = repo / "snapshots" / "0123abcd" / HUB_PATH
    target.parent.mkdir(parents=True)
    shutil.copyfile(checkpoint, target)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return root


def _run(name: str, sha: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    images, tokens = official_inputs(1)
    torch.save((images, tokens), tmp / "out.pt.in")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "hub"), "DETRIS_HOME": str(tmp / "home")}
    return subprocess.run([sys.executable, "-c", HUB_SCRIPT, name, sha, str(tmp / "out.pt"), *extra], env=env,
                          capture_output=True, text=True, timeout=300)


def test_registry_name_and_hub_file_resolve_offline_convert_once_and_check_sha256(checkpoint, tmp_path):
    path, model = checkpoint
    _hub_cache(tmp_path / "hub", path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    reference = _logits(detris.load_official_checkpoint(path))
    for name in ("detris-tiny.test-release", f"{REPO_ID}/{HUB_PATH}"):
        proc = _run(name, sha, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert torch.equal(torch.load(tmp_path / "out.pt"), reference), name
    proc = _run("detris-tiny.test-release", sha, tmp_path, "second")  # converted already: no pickle read
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), reference)

    shutil.rmtree(tmp_path / "home")  # a fresh conversion checks the hash first
    proc = _run("detris-tiny.test-release", "0" * 64, tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "tiny_refcoco.pth" in last and sha in last and "0" * 64 in last, last


def test_a_hub_path_to_a_missing_file_is_one_clear_line(checkpoint, tmp_path):
    _hub_cache(tmp_path / "hub", checkpoint[0])
    proc = _run(f"{REPO_ID}/tiny/not_there.pth", "", tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "not_there.pth" in last and REPO_ID in last, last


def test_eval_names_the_papers_number_for_a_registry_model():
    from detris.cli.evaluate import _paper_miou

    assert _paper_miou("detris-b.refcoco", "refcoco", "testB") == 73.5
    assert _paper_miou("detris-b.refcocog-umd", "refcocog_umd", "test") == 68.1
    assert _paper_miou("detris-l-mixed.mixed", "refcoco+", "testA") == 78.6
    assert _paper_miou("detris-b.refcoco", "refcoco+", "val") is None  # another dataset: nothing to compare
    assert _paper_miou("my-model", "refcoco", "val") is None


def test_word_len_reaches_an_official_checkpoint_by_path(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DETRIS_HOME", str(tmp_path / "home"))
    model = detris.from_pretrained(checkpoint[0], word_len=22)
    assert model.config.word_len == 22 and model.processing.word_len == 22
