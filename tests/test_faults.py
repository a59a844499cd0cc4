"""Faults during training and saving: a full disk, a damaged checkpoint on resume, SIGTERM.

A full disk is simulated by making the writer raise ``OSError(ENOSPC)`` after it has written part of
the file, which is what a real full disk does to ``torch.save`` / safetensors half-way through.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detris.build import build_model
from detris.engine.checkpoint import (
    PREVIOUS_NAME,
    CheckpointSaveError,
    load_checkpoint,
    load_resume_checkpoint,
    save_checkpoint,
)
from detris.engine.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# A few-second run on a handful of 64 px scenes (as in test_engine.py).
TINY = [
    "model.overrides.image_size=56", "data.synthetic.train_images=8", "data.synthetic.val_images=2",
    "data.synthetic.test_images=0", "data.synthetic.image_size=[64, 64]", "data.synthetic.max_objects=3", "train.batch_size=4",
    "train.micro_batch_size=2", "train.lr=1e-3", "train.milestones=[2]", "output.progress=false",
    "output.plot=false", "output.tensorboard=false", "train.lr_schedule=multistep", "train.dice_weight=0.0",
    "train.max_minutes=null", "data.num_workers=0", "train.evaluate=false", "train.num_threads=1",
]


def _full_disk_after(nbytes: int):
    """A stand-in for ``torch.save`` that writes ``nbytes`` of the file, then finds the disk full."""

    def save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("detris-tiny", image_size=56)


def _state(step: int) -> dict:
    return dict(optimizer={}, scheduler={}, scaler={}, rng={}, epoch=0, step_in_epoch=step, global_step=step,
                best={"mIoU": -1.0, "epoch": None})


def test_full_disk_mid_checkpoint_keeps_the_previous_files(model, tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, model, False, **_state(1))
    save_checkpoint(path, model, False, **_state(2))  # step 1 is now previous.pt
    before = _listing(path.parent)
    assert set(before) == {"last.pt", "last.json", PREVIOUS_NAME}

    monkeypatch.setattr(torch, "save", _full_disk_after(4096))
    with pytest.raises(CheckpointSaveError, match=r"last\.pt \(No space left on device\); the previous one is intact"):
        save_checkpoint(path, model, False, **_state(3))
    assert _listing(path.parent) == before  # no partial file, no temporary left behind
    monkeypatch.undo()
    assert load_checkpoint(path)["global_step"] == 2
    assert load_checkpoint(path.with_name(PREVIOUS_NAME))["global_step"] == 1


@pytest.mark.parametrize("failing", ["weights", "config"])
def test_full_disk_mid_save_pretrained_keeps_the_model_directory(model, tmp_path, monkeypatch, failing):
    """Either file failing leaves both old files in place, still matching each other."""
    import safetensors.torch

    directory = tmp_path / "model"
    model.save_pretrained(directory)
    before = _listing(directory)
    if failing == "weights":
        monkeypatch.setattr(safetensors.torch, "save_file", _full_disk_after(1 << 16))
    else:
        real_write_text = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name.startswith(".config.json."):
                real_write_text(self, "{")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the new save would differ
    try:
        with pytest.raises(OSError, match="No space left"):
            model.save_pretrained(directory)
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1.0)
    assert _listing(directory) == before


def test_full_disk_during_training_stops_with_a_clear_message(tmp_path, monkeypatch, capsys):
    """The command exits with status 4 and one line; the last good checkpoint still resumes."""
    from detris.cli import main

    real_save = torch.save
    calls = {"n": 0}

    def save_then_fill_up(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:
            return _full_disk_after(1000)(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fill_up)
    run = tmp_path / "run"
    args = ["train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={run}", "train.save_every_steps=1", "train.epochs=3"]:
        args += ["--set", item]
    assert main(args) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detris train: stopped: could not write the checkpoint ")
    assert "No space left on device" in err[-1] and "--resume auto" in err[-1]
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 2
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def _train_steps(run: Path, steps: int, resume: str | None = None) -> dict:
    from detris.engine.loop import train

    cfg = load_config(CONFIGS / "synthetic-tiny.yaml",
                      TINY + [f"output.dir={run}", "train.save_every_steps=1", f"train.max_steps={steps}"])
    return train(cfg, resume=resume)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    run = tmp_path / "run"
    _train_steps(run, 2)
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(5000), "empty": b""}[damage])

    summary = _train_steps(run, 3, resume="auto")
    err = capsys.readouterr().err
    assert "is damaged or truncated" in err and f"resuming from the previous checkpoint {run / 'checkpoints'}" in err
    assert summary["global_step"] == 3  # resumed from step 1 (previous.pt), two more steps... to max_steps 3
    assert load_checkpoint(last)["global_step"] == 3


def test_damaged_checkpoint_without_a_good_previous_one_is_refused(tmp_path):
    last = tmp_path / "last.pt"
    last.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"last\.pt is damaged or truncated"):
        load_resume_checkpoint(last)
    (tmp_path / PREVIOUS_NAME).write_bytes(b"")
    with pytest.raises(ValueError, match=r"the previous checkpoint is no better: .*previous\.pt is damaged"):
        load_resume_checkpoint(last)
    torch.save({"format": "detris-train", "weights": {}}, last)  # loads, but lacks the training state
    with pytest.raises(ValueError, match=r"last\.pt is damaged: it lacks \['full', 'optimizer'"):
        load_checkpoint(last)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={run}", "train.epochs=200"]:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and '"kind": "train"' in metrics.read_text():
            break  # the loop is running: preempt it
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "detris train: stopped by SIGTERM after" in err and "--resume auto" in err
    status = json.loads((run / "checkpoints" / "last.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "sigterm" and status["global_step"] == summary["global_step"] >= 1

    resumed = subprocess.run(cmd + ["--set", f"train.max_steps={status['global_step'] + 1}", "--resume", "auto"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["global_step"] == status["global_step"] + 1
