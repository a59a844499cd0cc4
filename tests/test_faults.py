"""Faults during training and saving: a real full disk, a damaged checkpoint on resume, SIGTERM, SIGKILL.

A full disk is a small tmpfs mounted by the test (root only; skipped otherwise): torch's zip writer and
safetensors then fail the way they do on a user's disk, with their own exception types.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
from detris.utils import FileWriteError
from tiny_runs import TINY as TINY_RUN

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAGE = 4096
#: How a full disk is reported: the reason, how much of the file was written, the space left.
FULL = r"\(No space left on device( after [\d.]+ k?M?B of it)?; [\d.]+ k?M?B free on its file system\)"

# The tests' few-second run, without validation or TensorBoard, one thread.
TINY = [*TINY_RUN, "output.tensorboard=false", "train.evaluate=false", "train.num_threads=1"]


class Tmpfs:
    """Small tmpfs mounts under a test's folder: a disk that really fills up. Unmounted by the fixture."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, size: int, name: str = "disk") -> Path:
        if os.geteuid() != 0:
            pytest.skip("a real full disk needs a tmpfs, and mounting one needs root")
        target = self.root / name
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={_pages(size)}", "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted.append(target)
        return target

    def resize(self, target: Path, size: int) -> None:
        """Make room (contents stay), as a user freeing space would."""
        subprocess.run(["mount", "-o", f"remount,size={_pages(size)}", str(target)], check=True)

    def unmount_all(self) -> None:
        for target in reversed(self.mounted):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)  # still busy: detach
        self.mounted.clear()


def _pages(nbytes: int) -> int:
    return -(-int(nbytes) // PAGE) * PAGE


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Tmpfs]:
    disks = Tmpfs(tmp_path / "mnt")
    try:
        yield disks
    finally:
        disks.unmount_all()


def _causes(err: BaseException) -> list[BaseException]:
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("detris-tiny", image_size=56)


def _state(step: int) -> dict:
    return dict(optimizer={}, scheduler={}, scaler={}, rng={}, epoch=0, step_in_epoch=step, global_step=step,
                best={"mIoU": -1.0, "epoch": None})


def test_full_disk_mid_checkpoint_keeps_the_previous_files(model, tmp_path, tmpfs):
    """torch's zip writer on a full tmpfs: one message naming the file and the free space."""
    probe = save_checkpoint(tmp_path / "probe" / "last.pt", model, False, **_state(1))
    size = _pages(probe.stat().st_size) + _pages(probe.with_suffix(".json").stat().st_size)
    disk = tmpfs.mount(size + size // 2)  # room for one checkpoint and half of the next
    path = disk / "checkpoints" / "last.pt"
    save_checkpoint(path, model, False, **_state(1))
    before = _listing(path.parent)

    with pytest.raises(CheckpointSaveError) as caught:
        save_checkpoint(path, model, False, **_state(2))
    err = caught.value
    torch_error = _causes(err)[-1]  # what torch.save itself raised
    assert type(torch_error) is RuntimeError and "unexpected pos" in str(torch_error)
    assert err.errno == errno.ENOSPC
    assert re.match(f"could not write the checkpoint {re.escape(str(path))} {FULL}; the previous one is intact",
                    err.strerror), err.strerror
    assert "\n" not in err.strerror
    assert _listing(path.parent) == before  # no partial file, no temporary left behind
    assert load_checkpoint(path)["global_step"] == 1


def _save_pretrained_sizes(model, tmp_path) -> tuple[int, int]:
    probe = tmp_path / "probe-model"
    model.save_pretrained(probe)
    return _pages((probe / "model.safetensors").stat().st_size), _pages((probe / "config.json").stat().st_size)


@pytest.mark.parametrize("failing", ["weights", "config"])
def test_full_disk_mid_save_pretrained_keeps_the_model_directory(model, tmp_path, tmpfs, failing):
    """safetensors' own error (or config.json's) on a full tmpfs leaves both old files, still matching."""
    weights, config = _save_pretrained_sizes(model, tmp_path)
    # "weights": the new weights do not fit; "config": they do, the new config.json does not.
    disk = tmpfs.mount(weights + config + (weights // 2 if failing == "weights" else weights))
    directory = disk / "model"
    model.save_pretrained(directory)
    before = _listing(directory)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the new save would differ
    try:
        with pytest.raises(FileWriteError) as caught:
            model.save_pretrained(directory)
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1.0)
    err = caught.value
    name = "model.safetensors" if failing == "weights" else "config.json"
    if failing == "weights":
        assert type(_causes(err)[-1]).__name__ == "SafetensorError"  # what safetensors itself raised
    assert err.errno == errno.ENOSPC and err.filename == str(directory / name)
    assert re.fullmatch(f"could not write {re.escape(str(directory / name))} {FULL}", str(err)), str(err)
    assert _listing(directory) == before and not _temporaries(disk)


def test_full_disk_during_export_leaves_no_partial_file(model, tmp_path, tmpfs, capsys):
    """``torch.export`` programs go through torch's zip writer too; the command says so in one line."""
    from detris.cli import main

    source = tmp_path / "model"
    model.save_pretrained(source)
    disk = tmpfs.mount(64 * 1024)  # far smaller than the program
    out = disk / "model.pt2"
    code = main(["export", "--model", str(source), "--format", "torch-export", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4, err
    assert re.fullmatch(f"detris export: error: could not write {re.escape(str(out))} {FULL}", err[-1]), err[-1]
    assert not out.exists() and not list(disk.iterdir())


def _train_command(run: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={run}"] + extra:
        cmd += ["--set", item]
    return cmd


def _train_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def _tree_pages(directory: Path) -> int:
    return sum(_pages(p.stat().st_size) for p in directory.rglob("*") if p.is_file())


@pytest.mark.slow
def test_full_disk_during_training_exits_4_then_resumes_exactly(tmp_path, tmpfs):
    """A run whose output folder fills up stops with status 4 and one line; once space is freed, the
    same command with --resume auto ends with the weights of an uninterrupted run."""
    common = ["train.save_every_steps=1", "train.epochs=3"]
    ref = subprocess.run(_train_command(tmp_path / "ref", common) + ["--resume", "auto"], env=_train_env(),
                         capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ckpts = tmp_path / "ref" / "checkpoints"
    checkpoint = _pages((ckpts / "last.pt").stat().st_size)
    rest = _tree_pages(tmp_path / "ref") - _tree_pages(ckpts)
    # Room for everything else and two and a half checkpoints: the third save (last + previous + the
    # new temporary) finds the disk full.
    disk = tmpfs.mount(rest + 2 * checkpoint + checkpoint // 2 + 4 * PAGE)
    run = disk / "run"
    cmd = _train_command(run, common) + ["--resume", "auto"]
    full = subprocess.run(cmd, env=_train_env(), capture_output=True, text=True, timeout=240)
    last_line = full.stderr.strip().splitlines()[-1]
    print(f"full disk: exit {full.returncode}: {last_line}")
    assert full.returncode == 4, full.stderr[-3000:]
    assert re.match(f"detris train: stopped: could not write .* {FULL}; .*--resume auto$", last_line), last_line
    assert not _temporaries(run)
    status = json.loads((run / "checkpoints" / "last.json").read_text())
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == status["global_step"] >= 1

    tmpfs.resize(disk, 4 * (rest + 4 * checkpoint))  # space freed
    resumed = subprocess.run(cmd, env=_train_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'last.pt'} (epoch " in resumed.stdout
    a = load_checkpoint(ckpts / "last.pt")["weights"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["weights"]
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"resumed after the full disk: max parameter difference to the uninterrupted run {diff}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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


def _break_two_images(run: Path) -> list[Path]:
    """Write the run's synthetic scenes (one step), then truncate one training image and delete another."""
    first = subprocess.run(_train_command(run, ["train.max_steps=1"]), env=_train_env(), capture_output=True,
                           text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    corrupt, missing = run / "data" / "images" / "refcoco_000002.png", run / "data" / "images" / "refcoco_000005.png"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    missing.unlink()
    return [corrupt, missing]


def _fresh(run: Path, extra: list[str]) -> subprocess.CompletedProcess:
    """A new run over the same (damaged) scenes: no checkpoint, no records."""
    for name in ("checkpoints", "metrics.jsonl", "summary.json"):
        target = run / name
        if target.is_dir():
            for p in target.iterdir():
                p.unlink()
        elif target.exists():
            target.unlink()
    return subprocess.run(_train_command(run, ["train.epochs=2", *extra]), env=_train_env(), capture_output=True,
                          text=True, timeout=240)


@pytest.mark.slow
def test_unreadable_training_images_are_an_error_or_skipped_up_to_max_bad_items(tmp_path):
    run = tmp_path / "run"
    broken = _break_two_images(run)
    names = "|".join(re.escape(str(p)) for p in broken)

    stopped = _fresh(run, [])
    last = stopped.stderr.strip().splitlines()[-1]
    print(f"default: exit {stopped.returncode}: {last}")
    assert stopped.returncode == 2 and re.match(f"detris train: error: ({names}).* \\(ref \\d+, sentence \\d+\\)$", last)

    skipped = _fresh(run, ["data.max_bad_items=100"])
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    warnings = [line for line in skipped.stderr.splitlines() if line.startswith("detris train: warning: skipped")]
    assert warnings and all(re.search(f"({names}).* \\(ref \\d+, sentence \\d+\\)$", w) for w in warnings)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counted = [r.get("bad_items", 0) for r in records if r["kind"] == "train"]
    print(f"max_bad_items=100: {len(warnings)} warnings, metrics.jsonl bad_items {counted}")
    assert counted == sorted(counted) and counted[-1] == len(warnings)
    assert json.loads((run / "summary.json").read_text())["bad_items"] == len(warnings)

    too_many = _fresh(run, ["data.max_bad_items=1"])
    last = too_many.stderr.strip().splitlines()[-1]
    print(f"max_bad_items=1: exit {too_many.returncode}: {last}")
    assert too_many.returncode == 2, too_many.stderr[-3000:]
    assert re.match(r"detris train: error: \d+ unreadable training items, more than data.max_bad_items=1; the last "
                    f"one here: ({names}).* \\(ref \\d+, sentence \\d+\\)\\. Fix or remove the files", last), last


def test_full_disk_during_eval_predictions_says_which_file(model, tmp_path, tmpfs, capsys):
    """``detris eval --save-predictions`` on a disk that fills up: one line, status 4, no partial mask."""
    from detris.cli import main
    from detris.data import synthetic

    lay = synthetic.write_refer_layout(tmp_path / "refer", "refcoco", splits={"val": 6}, seed=1,
                                       image_size=(64, 64), max_objects=3, max_expressions=2)
    source = tmp_path / "model"
    model.save_pretrained(source)
    disk = tmpfs.mount(3 * PAGE)  # predictions.jsonl and two masks: one page each
    out = disk / "predictions"
    code = main(["eval", "--model", str(source), "--dataset", "refcoco", "--split", "val", "--data-root",
                 str(lay.data_root), "--image-root", str(lay.image_root), "--device", "cpu",
                 "--save-predictions", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    print(f"eval on a full disk: exit {code}: {err[-1]}")
    assert code == 4, err
    assert re.fullmatch(f"detris eval: error: could not write {re.escape(str(out))}/\\S+ "
                        r"\(No space left on device; [\d.]+ k?B free on its file system\)", err[-1]), err[-1]
    masks = sorted(p.name for p in out.glob("*.png"))
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert masks == sorted(r["mask"] for r in records)  # every mask on disk is a complete, recorded one


def _collection(tmp_path: Path) -> tuple[Path, Path]:
    """A random tiny model and a manifest of twenty noisy images, four expressions each."""
    import numpy as np
    from PIL import Image

    from model_fixtures import save_random_tiny

    model_dir = save_random_tiny(tmp_path / "model", image_size=56)
    rng = np.random.default_rng(0)
    lines = []
    texts = ["the small shape on the left", "the big one in the middle", "the red circle", "the last star"]
    for k in range(20):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"img{k}.png")
        lines.append(json.dumps({"image": f"img{k}.png", "expressions": texts}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return model_dir, tmp_path / "manifest.jsonl"


def test_full_disk_while_segmenting_a_collection_then_resume(tmp_path, tmpfs, capsys):
    """``detris predict --input`` on a disk that fills up: exit 4 with one line naming the file and the
    free space, no torn line left; after space is freed, ``--resume`` completes the same file as a run
    that never stopped."""
    from detris.cli import main

    model_dir, manifest = _collection(tmp_path)
    common = ["--input", str(manifest), "--model", str(model_dir), "--workers", "0", "--dtype", "float32"]
    assert main(["predict", *common, "--out", str(tmp_path / "ref")]) == 0
    reference = (tmp_path / "ref" / "predictions.jsonl").read_bytes()
    assert len(reference) > 2 * PAGE  # the disk below fills up part way through
    capsys.readouterr()

    disk = tmpfs.mount(PAGE)
    out = disk / "out"
    assert main(["predict", *common, "--out", str(out)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predictions" in err[0] and "No space left on device" in err[0] and "free" in err[0], err
    partial = (out / "predictions.jsonl").read_bytes()
    assert partial.endswith(b"\n") and reference.startswith(partial) and len(partial) < len(reference)

    tmpfs.resize(disk, 64 * PAGE)
    assert main(["predict", *common, "--out", str(out), "--resume"]) == 0
    assert (out / "predictions.jsonl").read_bytes() == reference


def test_full_disk_while_predicting_one_image(tmp_path, tmpfs, capsys):
    """``detris predict --image``: the PNG that does not fit is named with the free space (exit 4) and
    not left behind half-written."""
    from detris.cli import main

    model_dir, _ = _collection(tmp_path)
    out = tmpfs.mount(PAGE) / "out"  # room for one file: the first mask fits, its overlay does not
    args = ["predict", "--image", str(tmp_path / "img0.png"), "--text", "the left one", "--model", str(model_dir),
            "--out", str(out), "--dtype", "float32"]
    assert main(args) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlay" in err[0] and "No space left on device" in err[0] and "free" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["img0_0_mask.png"]
