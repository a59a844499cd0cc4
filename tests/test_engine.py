"""Training engine: config validation, exact resume after SIGKILL, DDP equivalence, divergence stop."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("yaml")

from detris.engine.config import ConfigError, load_config
from detris.engine.distributed import GlobalBatchSampler
from tiny_runs import TINY

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _run_train(run_dir: Path, extra: list[str], resume: str | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={run_dir}"] + extra:
        cmd += ["--set", item]
    if resume:
        cmd += ["--resume", resume]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["weights"]


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.train.lr > 0 and cfg.train.batch_size >= 1
    if cfg.data.dataset != "synthetic":
        assert cfg.train.batch_size == 32 and cfg.train.lr == 1e-4 and cfg.train.weight_decay == 0.0
        assert cfg.train.lr_decay == 0.1


def test_official_settings():
    assert load_config(CONFIGS / "refcocog-umd-detris-b.yaml").model.overrides == {"word_len": 22}
    assert load_config(CONFIGS / "refcoco+-detris-b.yaml").data.val_split == "testB"
    b = load_config(CONFIGS / "refcoco-detris-b.yaml").train
    assert (b.epochs, b.milestones) == (65, [35, 55])
    l = load_config(CONFIGS / "refcoco-detris-l.yaml").train
    assert (l.epochs, l.milestones) == (50, [35])
    assert load_config(CONFIGS / "mixed-detris-l-mixed.yaml").model.variant == "detris-l-mixed"


def test_unknown_and_mistyped_keys_are_named(tmp_path):
    cfg = CONFIGS / "synthetic-tiny.yaml"
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in section 'train'"):
        load_config(cfg, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"key 'epochs' in section 'train' must be int"):
        load_config(cfg, ["train.epochs=two"])
    with pytest.raises(ConfigError, match=r"unknown key 'colour' in section 'data.synthetic'"):
        load_config(cfg, ["data.synthetic.colour=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {variant: detris-tiny}\ntrian: {epochs: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian' in section 'top level'"):
        load_config(bad)


def test_overrides_use_yaml_typing():
    cfg = load_config(CONFIGS / "synthetic-tiny.yaml", ["train.lr=2e-4", "train.milestones=[1, 3]",
                                                       "train.max_steps=null", "train.evaluate=false"])
    assert cfg.train.lr == 2e-4 and cfg.train.milestones == [1, 3]
    assert cfg.train.max_steps is None and cfg.train.evaluate is False


def test_errors_before_training(tmp_path):
    from detris.engine.loop import train

    cfg = load_config(CONFIGS / "refcoco-detris-b.yaml", [f"output.dir={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError, match="model.dinov2_weights"):
        train(cfg)
    no_weights = ["model.dinov2_weights=null", "model.clip_weights=null"]
    cfg = load_config(CONFIGS / "refcoco-detris-b.yaml", no_weights + [f"data.data_root={tmp_path / 'nothing'}",
                                                                     f"output.dir={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError, match="data_root"):
        train(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = load_config(CONFIGS / "refcoco-detris-b.yaml", no_weights + [f"data.data_root={empty}", f"data.image_root={empty}",
                                                        f"output.dir={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError, match="refs"):
        train(cfg)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = load_config(CONFIGS / "synthetic-tiny.yaml", [f"output.dir={blocker / 'run'}"])
    with pytest.raises(ValueError, match="not writable"):
        train(cfg)


def test_demo_training_options_are_checked():
    cfg = CONFIGS / "synthetic-tiny.yaml"
    with pytest.raises(ConfigError, match=r"train.lr_schedule: 'linear'"):
        load_config(cfg, ["train.lr_schedule=linear"])
    with pytest.raises(ConfigError, match=r"warmup_steps needs train.lr_schedule=cosine"):
        load_config(cfg, ["train.lr_schedule=multistep", "train.warmup_steps=5"])
    with pytest.raises(ConfigError, match=r"train.dice_weight must be >= 0"):
        load_config(cfg, ["train.dice_weight=-1"])
    with pytest.raises(ConfigError, match=r"train.num_threads must be >= 1"):
        load_config(cfg, ["train.num_threads=0"])


def test_official_configs_keep_the_official_schedule_and_loss():
    for path in sorted(CONFIGS.glob("*.yaml")):
        t = load_config(path).train
        if load_config(path).data.dataset != "synthetic":
            assert (t.lr_schedule, t.warmup_steps, t.dice_weight, t.num_threads) == ("multistep", 0, 0.0, None), path


def test_progress_schedule_follows_the_larger_of_step_and_time_fractions():
    from detris.engine.schedule import ProgressSchedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = ProgressSchedule(opt, total_steps=100, max_minutes=10.0, warmup_steps=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 / 4)  # first warm-up step
    sched.update(50, minutes=1.0)  # half the steps, a tenth of the time: steps lead
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    sched.update(51, minutes=9.0)  # the clock leads now (a slow machine)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 + math.cos(0.9 * math.pi))
    sched.update(52, minutes=0.5)  # progress never goes back
    assert sched.progress == pytest.approx(0.9)

    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    resumed = ProgressSchedule(other, total_steps=100, max_minutes=10.0, warmup_steps=4)
    resumed.load_state_dict(sched.state_dict())
    resumed.update(53, minutes=0.0)
    assert resumed.progress == pytest.approx(0.9)
    resumed.update(100, minutes=0.0)
    assert other.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="bounded"):
        ProgressSchedule(other, total_steps=None, max_minutes=None)


def test_upsampled_dice_loss_scores_the_evaluated_mask():
    from detris.losses import upsampled_dice_loss

    mask = torch.zeros(2, 1, 56, 56)
    mask[:, :, 14:42, 7:35] = 1
    coarse = torch.nn.functional.interpolate(mask, size=(16, 16), mode="area")
    logits = ((coarse > 0.5).float() * 2 - 1).mul(10).requires_grad_(True)
    good = upsampled_dice_loss(logits, mask)
    bad = upsampled_dice_loss(-logits, mask)
    assert good.item() < 0.1 and bad.item() > 0.9
    assert upsampled_dice_loss(logits, mask[:, 0]).item() == pytest.approx(good.item())  # (N, H, W) masks
    bad.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.slow
def test_cosine_dice_run_resumes_exactly(tmp_path, monkeypatch):
    """A run with the demo's schedule and loss, stopped after step 3 and resumed, equals an unbroken one."""
    from detris.engine import loop
    from detris.engine.tracking import MetricsLogger

    demo = ["train.lr_schedule=cosine", "train.warmup_steps=2", "train.dice_weight=1.0", "train.epochs=2",
            "train.evaluate=false", "train.save_every_steps=1", "train.num_threads=1", "output.tensorboard=false"]
    loop.train(load_config(CONFIGS / "synthetic-tiny.yaml", TINY + demo + [f"output.dir={tmp_path / 'ref'}"]))

    class Crash(RuntimeError):
        pass

    real_log = MetricsLogger.log

    def log(self, record):
        if record.get("kind") == "train" and record["global_step"] == 4:
            raise Crash("simulated crash before step 4 is saved")
        real_log(self, record)

    run = tmp_path / "crashed"
    cfg = load_config(CONFIGS / "synthetic-tiny.yaml", TINY + demo + [f"output.dir={run}"])
    monkeypatch.setattr(MetricsLogger, "log", log)
    with pytest.raises(Crash):
        loop.train(cfg)
    monkeypatch.setattr(MetricsLogger, "log", real_log)
    assert json.loads((run / "checkpoints" / "last.json").read_text())["global_step"] == 3
    loop.train(cfg, resume="auto")
    a, b = _weights(tmp_path / "ref"), _weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------ sampler
def test_global_batches_do_not_depend_on_the_split():
    one = GlobalBatchSampler(50, micro_batch=4, accum=2, world_size=1, seed=3)
    two = [GlobalBatchSampler(50, micro_batch=4, accum=1, world_size=2, rank=r, seed=3) for r in range(2)]
    a = list(one)
    b0, b1 = list(two[0]), list(two[1])
    for step in range(one.steps_per_epoch):
        assert a[2 * step] + a[2 * step + 1] == b0[step] + b1[step]
    one.set_epoch(0, start_step=2)
    assert list(one) == a[4:]


# ------------------------------------------------------------------------------------------ resume
def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_resume_auto_starts_fresh_then_resumes(tmp_path):
    """One command for the first start and every restart: it says on stdout which it did."""
    from detris.cli import main

    run = tmp_path / "run"
    args = ["train", str(CONFIGS / "synthetic-tiny.yaml"), "--resume", "auto"]
    for item in TINY + [f"output.dir={run}", "train.evaluate=false", "train.num_threads=1",
                        "output.tensorboard=false"]:
        args += ["--set", item]
    fresh = subprocess.run([sys.executable, "-m", "detris.cli", *args, "--set", "train.max_steps=1"],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout.splitlines()[0] == f"detris train: no checkpoint in {run / 'checkpoints'}; starting fresh " \
                                           "(--resume auto)"
    again = subprocess.run([sys.executable, "-m", "detris.cli", *args, "--set", "train.max_steps=2"],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[0] == \
        f"detris train: resuming from {run / 'checkpoints' / 'last.pt'} (epoch 0, global step 1)"
    # A named checkpoint must exist: only "auto" may start fresh.
    assert main(["train", str(CONFIGS / "synthetic-tiny.yaml"), "--set", f"output.dir={tmp_path / 'other'}",
                 "--resume", str(tmp_path / "nothing.pt")]) == 2


@pytest.mark.slow
def test_sigkill_then_the_same_command_resumes_exactly(tmp_path):
    """A launcher reruns the same command (``--resume auto``) after a SIGKILL: the run resumes from the
    checkpoint ``train.save_every_minutes`` wrote last, takes no step up to it again, and ends with
    the weights of an uninterrupted run."""
    common = ["train.epochs=6", "train.evaluate=false", "train.save_every_minutes=0.004"]
    ref = _run_train(tmp_path / "ref", common, resume="auto")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "starting fresh" in ref.stdout

    run = tmp_path / "killed"
    proc = _run_train(run, common, resume="auto", wait=False)
    status = run / "checkpoints" / "last.json"
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if status.is_file():
            info = json.loads(status.read_text())
            taken = [r["global_step"] for r in _records(run) if r["kind"] == "train"]
            # Mid-epoch, between two checkpoints: steps were taken since the last one.
            if info["global_step"] >= 2 and info["step_in_epoch"] > 0 and taken and taken[-1] > info["global_step"]:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-epoch"
    assert not (run / "summary.json").exists()
    saved = json.loads(status.read_text())["global_step"]  # the checkpoint the restart finds
    done = max(r["global_step"] for r in _records(run) if r["kind"] == "train")  # steps taken before the kill

    resumed = _run_train(run, common, resume="auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'last.pt'} (epoch " in resumed.stdout
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"killed after step {done} (last checkpoint: step {saved}); resumed to step "
          f"{json.loads((run / 'summary.json').read_text())['global_step']}; max parameter difference {diff}")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    records = _records(run)
    steps = [r["global_step"] for r in records if r["kind"] == "train"]
    final = json.loads((tmp_path / "ref" / "summary.json").read_text())["global_step"]
    assert steps == list(range(1, final + 1))  # every step recorded once, none up to the checkpoint redone
    resumes = [r for r in records if r["kind"] == "resume"]
    assert [(r["global_step"], r["steps_redone"]) for r in resumes] == [(saved, done - saved)]
    assert done > saved  # the steps after the checkpoint were lost, and taken once more, recorded once
    assert records.index(resumes[0]) == steps.index(saved) + 1  # the restart continued right after it


def test_non_finite_loss_stops_with_step(tmp_path, monkeypatch):
    import detris.losses as mod
    from detris.engine.loop import TrainingDiverged, train

    calls = {"n": 0}
    real = mod.mask_bce_loss

    def poisoned(logits, mask):
        calls["n"] += 1
        loss = real(logits, mask)
        return loss * float("nan") if calls["n"] > 4 else loss  # 2 micro-batches per step: step 3 fails

    monkeypatch.setattr(mod, "mask_bce_loss", poisoned)
    cfg = load_config(CONFIGS / "synthetic-tiny.yaml",
                      TINY + [f"output.dir={tmp_path}", "train.save_every_steps=1", "train.evaluate=false"])
    with pytest.raises(TrainingDiverged, match=r"optimizer step 3 .*last\.pt"):
        train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["weights"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(run_dir: Path, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``detris train`` of the tiny run under ``torchrun --nproc_per_node 2`` on this host, one thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={run_dir}"] + extra:
        cmd += ["--set", item]
    return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """2 processes x micro-batch 2 == 1 process x 2 micro-batches of 2 (global batch 4).

    On CPU there is no SyncBatchNorm, so each DDP process normalises its own 2 items. The valid
    single-process reference is therefore the same global batch as two accumulated micro-batches of
    the same 2 items each (the sampler hands out identical blocks), which gives the same per-block BN
    statistics and the same averaged gradient. Dropout is 0 so both runs see identical activations.
    """
    common = ["train.epochs=1", "train.max_steps=3", "train.evaluate=false", "train.batch_size=4",
              "train.micro_batch_size=2", "model.overrides.image_size=56",
              "model.overrides.decoder_dropout=0.0",
              "output.tensorboard=false"]
    single = _run_train(tmp_path / "one", common)
    assert single.returncode == 0, single.stderr[-3000:]

    two = _run_two_processes(tmp_path / "two", common, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Grad strides do not match" not in two.stderr  # DDP copies no gradient (keep_grad_layouts)

    def losses(d):
        return [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-5)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    for k in params:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.slow
def test_ddp_validation_reports_what_the_saved_model_scores(tmp_path):
    """Two gloo processes (no SyncBatchNorm on CPU: each rank's BatchNorm statistics drift apart) validate
    with rank 0's statistics, so the metrics they report equal `detris eval` of the ``best/`` model
    they saved, run in one process; only rank 0 prints the summary."""
    run = tmp_path / "two"
    # One sentence per ref: validation (first sentence) and `detris eval` (every sentence) score the same.
    common = ["train.epochs=1", "train.max_steps=4", "train.evaluate=true", "data.synthetic.val_images=4",
              "data.synthetic.max_expressions=1", "train.val_batch_size=2", "output.tensorboard=false",
              "train.num_threads=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={run}"] + common:
        cmd += ["--set", item]
    two = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert len([line for line in two.stdout.splitlines() if line.startswith("detris train: done")]) == 1, two.stdout
    reported = [r for r in _records(run) if r["kind"] == "val"][-1]

    out = tmp_path / "eval.json"
    ev = subprocess.run([sys.executable, "-m", "detris.cli", "eval", "--model", str(run / "best"), "--dataset",
                         "refcoco", "--split", "val", "--data-root", str(run / "data"), "--image-root",
                         str(run / "data" / "images"), "--device", "cpu", "--json", str(out)],
                        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert ev.returncode == 0, ev.stderr[-3000:]
    scored = json.loads(out.read_text())
    print(f"2 processes reported mIoU {reported['mIoU']:.6f} oIoU {reported['oIoU']:.6f}; "
          f"detris eval of best/: mIoU {scored['mIoU']:.6f} oIoU {scored['oIoU']:.6f}")
    assert reported["count"] == scored["expressions"]
    for key in ("mIoU", "oIoU"):
        assert reported[key] == pytest.approx(scored[key], abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0], ids=["master-unreachable", "peer-never-starts"])
def test_process_group_that_cannot_form_fails_in_time_with_the_fix(tmp_path, rank):
    """Rank 1 told a master address where nobody listens, or rank 0 whose peer never starts: within
    ``train.dist_timeout_s`` the run ends with one line naming the address, this host and the fix."""
    port = _free_port()  # closed again: nobody listens there
    env = dict(os.environ, OMP_NUM_THREADS="1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cmd = [sys.executable, "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={tmp_path / 'run'}", "train.dist_timeout_s=5", "train.device=cpu"]:
        cmd += ["--set", item]
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    last = done.stderr.strip().splitlines()[-1]
    print(f"rank {rank}: exit {done.returncode} after {elapsed:.1f} s: {last}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert last.startswith(f"detris train: error: rank {rank} of 2 could not form the process group with the "
                           f"master 127.0.0.1:{port} within train.dist_timeout_s=5 s (this host: {socket.gethostname()}; ")
    assert "--local-addr" in last and "GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME" in last
    assert elapsed < 5 + 40  # the timeout, plus starting Python and torch on a busy machine


def test_a_packaged_config_is_found_by_name(tmp_path, monkeypatch):
    """``detris train synthetic-tiny`` works from any folder (the configs ship with the package); a name
    that is neither a file nor a packaged config lists the packaged ones."""
    monkeypatch.chdir(tmp_path)
    by_name = load_config("synthetic-tiny", [f"output.dir={tmp_path / 'run'}"])
    by_path = load_config(CONFIGS / "synthetic-tiny.yaml", [f"output.dir={tmp_path / 'run'}"])
    assert by_name == by_path
    with pytest.raises(FileNotFoundError, match="refcoco-detris-b"):
        load_config("no-such-config")


@pytest.mark.slow
def test_ddp_skips_unreadable_items_like_one_process(tmp_path):
    """Micro-batches of one item and two unreadable images: a rank whose micro-batch is all skipped
    still takes part in the step (a weight-0 replay), so the run neither hangs nor differs from one
    process skipping the same items."""
    common = ["train.epochs=1", "train.max_steps=6", "train.evaluate=false", "train.batch_size=2",
              "train.micro_batch_size=1", "model.overrides.decoder_dropout=0.0", "output.tensorboard=false",
              "data.max_bad_items=100", "train.num_threads=1"]
    for name in ("one", "two"):  # the scenes, then the same two images broken in each
        prepared = _run_train(tmp_path / name, common + ["train.max_steps=1"])
        assert prepared.returncode == 0, prepared.stderr[-3000:]
        images = tmp_path / name / "data" / "images"
        (images / "refcoco_000002.png").write_bytes(b"not an image")
        (images / "refcoco_000005.png").unlink()
        for old in [*(tmp_path / name / "checkpoints").iterdir(), tmp_path / name / "metrics.jsonl"]:
            old.unlink()
    single = _run_train(tmp_path / "one", common)
    assert single.returncode == 0, single.stderr[-3000:]

    two = _run_two_processes(tmp_path / "two", common, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one_records, two_records = _records(tmp_path / "one"), _records(tmp_path / "two")
    print(f"bad items skipped: one process {one_records[-1].get('bad_items')}, two {two_records[-1].get('bad_items')}")
    assert one_records[-1]["bad_items"] == two_records[-1]["bad_items"] > 0
    assert [r["loss"] for r in one_records] == pytest.approx([r["loss"] for r in two_records], abs=1e-5)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in [k for k in a if "running_" not in k and "num_batches" not in k]:  # BN statistics: per process
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


def test_conv_weight_gradients_keep_their_parameters_layout():
    """A 1x1 convolution trained on channels-last maps may get its weight gradient with the strides of a
    channels-last tensor, which DDP would copy (and warn about) on every step; with the hooks every
    gradient has its parameter's strides and the same values."""
    from detris.engine.distributed import keep_grad_layouts

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 1)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    grad = torch.autograd.grad(conv(x).square().sum(), conv.weight)[0]
    assert keep_grad_layouts(conv) == 1
    conv(x).square().sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride() and torch.equal(conv.weight.grad, grad)
    # The hook itself, on a gradient laid out channels-last (what oneDNN may hand back).
    odd = grad.contiguous(memory_format=torch.channels_last)
    assert odd.stride() != conv.weight.stride()
    fixed = conv.weight._backward_hooks[next(iter(conv.weight._backward_hooks))](odd)
    assert fixed.stride() == conv.weight.stride() and torch.equal(fixed, grad)
