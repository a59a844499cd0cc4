"""Two hosts made of two network namespaces joined by a veth pair, one ``torchrun`` agent in each.

The test creates the namespaces and removes them (``veth_hosts``; root and ``ip netns`` needed: skipped
otherwise); traffic stays inside them: addresses 10.231.N.1 / 10.231.N.2 on the pair, nothing routed further.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tiny_runs import TINY as TINY_RUN
from veth_hosts import VethHosts

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PORT = 29411

# The tests' few-second run: three steps, one thread a process, validated, no dropout (every process
# computes the same thing).
TINY = [*TINY_RUN, "output.tensorboard=false", "train.num_threads=1", "train.epochs=1", "train.max_steps=3",
        "train.evaluate=true", "model.overrides.decoder_dropout=0.0"]


class Hosts(VethHosts):
    """The two namespaces, and a ``torchrun`` agent of the tiny training run in either."""

    def agent(self, host: str, out: Path, extra_agent: list[str], extra: list[str]) -> subprocess.Popen:
        """``torchrun`` for two hosts (c10d rendezvous at host a), started in ``host``'s namespace."""
        # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: docs/training.md's recipe, so that a restarted agent can rejoin.
        cmd = ["ip", "netns", "exec", self.ns[host], "env", "OMP_NUM_THREADS=1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
               f"GLOO_SOCKET_IFNAME={self.iface[host]}", sys.executable, "-m", "torch.distributed.run",
               "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"{self.address['a']}:{PORT}", "--rdzv-id", f"detris-{out.name}", *extra_agent,
               "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml"), "--resume", "auto"]
        for item in TINY + [f"output.dir={out}", *extra]:
            cmd += ["--set", item]
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("two hosts are two network namespaces: needs root and `ip netns`")
    made = Hosts(str(os.getpid() % 100000), os.getpid() % 250 + 1)
    try:
        made.create()
    except subprocess.CalledProcessError as err:
        made.remove()
        pytest.skip(f"cannot make network namespaces here: {err.stderr.strip()}")
    try:
        yield made
    finally:
        made.remove()


def _finish(agents: dict[str, subprocess.Popen], timeout: float) -> dict[str, tuple[int, str, str]]:
    """Wait for both agents; kill what is left of one that overruns (its own process group)."""
    done: dict[str, tuple[int, str, str]] = {}
    deadline = time.monotonic() + timeout
    for host, proc in agents.items():
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        done[host] = (proc.returncode, out, err)
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _one_process_params(out: Path, extra: list[str]) -> dict[str, torch.Tensor]:
    """The parameters an uninterrupted one-process run of the same config (``TINY`` + ``extra``) ends with."""
    cmd = [sys.executable, "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + extra + [f"output.dir={out}"]:
        cmd += ["--set", item]
    one = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    return _params(out)


def _params(run: Path) -> dict[str, torch.Tensor]:
    """The parameters in ``checkpoints/last.pt``; not the BatchNorm statistics, which each process keeps
    for itself (no SyncBatchNorm on CPU) and so differ with the number of processes."""
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["weights"]
    return {k: v for k, v in weights.items() if "running_" not in k and "num_batches" not in k}


def _max_diff(wa: dict[str, torch.Tensor], wb: dict[str, torch.Tensor]) -> float:
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


@pytest.mark.slow
def test_two_hosts_train_as_two_processes_on_one_host(hosts, tmp_path):
    """With the documented options (is_host on the rendezvous host, --local-addr and the interface on
    each), losses, weights, BatchNorm buffers and validation metrics equal two processes on one host."""
    agents = {"a": hosts.agent("a", tmp_path / "hosts", ["--rdzv-conf", "is_host=1", "--local-addr",
                                                         hosts.address["a"]], []),
              "b": hosts.agent("b", tmp_path / "hosts", ["--local-addr", hosts.address["b"]], [])}
    done = _finish(agents, 300)
    for host, (code, _, err) in done.items():
        assert code == 0, f"host {host}: {err[-3000:]}"

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "detris.cli", "train", str(CONFIGS / "synthetic-tiny.yaml")]
    for item in TINY + [f"output.dir={tmp_path / 'local'}"]:
        cmd += ["--set", item]
    local = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                           timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]

    a, b = _records(tmp_path / "hosts"), _records(tmp_path / "local")
    assert [(r["kind"], r.get("loss"), r.get("mIoU"), r.get("oIoU")) for r in a] == \
        [(r["kind"], r.get("loss"), r.get("mIoU"), r.get("oIoU")) for r in b]
    wa = torch.load(tmp_path / "hosts" / "checkpoints" / "last.pt", weights_only=True)["weights"]
    wb = torch.load(tmp_path / "local" / "checkpoints" / "last.pt", weights_only=True)["weights"]
    diff = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    val = [r for r in a if r["kind"] == "val"][-1]
    print(f"2 hosts vs 2 processes: max weight/buffer difference {diff}; val mIoU {val['mIoU']:.6f} both")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_master_address_the_other_host_cannot_reach_fails_in_time(hosts, tmp_path):
    """Without --local-addr the workers are told a master address that resolves to each host's own
    loopback: the run ends within train.dist_timeout_s with the line naming the address and the fix."""
    start = time.monotonic()
    agents = {"a": hosts.agent("a", tmp_path / "run", ["--rdzv-conf", "is_host=1"], ["train.dist_timeout_s=20"]),
              "b": hosts.agent("b", tmp_path / "run", [], ["train.dist_timeout_s=20"])}
    done = _finish(agents, 120)
    elapsed = time.monotonic() - start
    lines = [line for _, _, err in done.values() for line in err.splitlines() if line.startswith("detris train")]
    print(f"unreachable master: exit codes {[code for code, _, _ in done.values()]} after {elapsed:.0f} s: {lines}")
    assert all(code != 0 for code, _, _ in done.values())
    assert elapsed < 20 + 40  # the timeout, plus starting the agents and Python on a busy machine
    assert lines and all("could not form the process group with the master " in line and "--local-addr" in line
                         and "GLOO_SOCKET_IFNAME" in line for line in lines), lines


def _wait_for_step(run: Path, step: int, agents: dict[str, subprocess.Popen], seconds: float) -> None:
    """Until ``checkpoints/last.json`` reaches ``step`` (both agents still running)."""
    status = run / "checkpoints" / "last.json"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in agents.values()), "an agent ended before the fault"
        if status.is_file():
            try:
                if json.loads(status.read_text())["global_step"] >= step:
                    return
            except ValueError:
                pass  # being replaced
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {seconds} s")


@pytest.mark.slow
def test_elastic_run_survives_a_killed_host(hosts, tmp_path):
    """``--nnodes 1:2 --max-restarts 2``: host b crashes (SIGKILL to its agent and its worker) mid-run;
    host a re-forms the group alone, resumes from the last checkpoint with the same command and ends
    with the weights of an uninterrupted one-process run (the global batch and micro-batch fixed)."""
    run = tmp_path / "elastic"
    steps = ["train.epochs=4", "train.max_steps=16", "train.evaluate=false", "train.save_every_steps=1"]
    elastic = ["--nnodes", "1:2", "--max-restarts", "2", "--rdzv-conf", "is_host=1,last_call_timeout=2"]
    agents = {"a": hosts.agent("a", run, [*elastic, "--local-addr", hosts.address["a"]], steps),
              "b": hosts.agent("b", run, [*elastic, "--local-addr", hosts.address["b"]], steps)}
    try:
        _wait_for_step(run, 4, agents, 240)
        assert hosts.crash("b") >= 2  # the agent and its worker
        killed_at = json.loads((run / "checkpoints" / "last.json").read_text())["global_step"]
    finally:
        done = _finish(agents, 300)
    code, _, err = done["a"]
    assert code == 0, err[-3000:]
    assert done["b"][0] == -signal.SIGKILL

    wa, wb = _params(run), _one_process_params(tmp_path / "one", steps)
    diff = _max_diff(wa, wb)
    records = _records(run)
    train_steps = [r["global_step"] for r in records if r["kind"] == "train"]
    resumes = [r for r in records if r["kind"] == "resume"]
    print(f"elastic: host b killed at checkpoint step {killed_at}; resumed at {[r['global_step'] for r in resumes]} "
          f"(steps redone {[r['steps_redone'] for r in resumes]}); finished at step {train_steps[-1]}; "
          f"max parameter difference to one process {diff}")
    assert train_steps == list(range(1, 17)) and len(resumes) == 1 and resumes[0]["global_step"] >= killed_at
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _wait_for_records(run: Path, done, agents: dict[str, subprocess.Popen], seconds: float, what: str) -> list[dict]:
    """Until ``done(records of metrics.jsonl)`` holds (every agent in ``agents`` still running)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in agents.values()), f"an agent ended before {what}"
        try:
            records = _records(run)
        except (OSError, ValueError):
            records = []  # not written yet, a line being written, or the file being replaced on resume
        if done(records):
            return records
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


def _trains_after_resume(records: list[dict], n: int) -> bool:
    """Whether a train record follows the ``n``-th resume record (the resumed round took a step)."""
    kinds = [r["kind"] for r in records]
    resumes = [i for i, kind in enumerate(kinds) if kind == "resume"]
    return len(resumes) >= n and "train" in kinds[resumes[n - 1] + 1:]


@pytest.mark.slow
def test_elastic_run_a_crashed_host_that_comes_back_rejoins(hosts, tmp_path):
    """Host b crashes (SIGKILL to its agent and its worker); once host a trains alone, host b's agent
    starts again with the same command: host a's worker is stopped (SIGTERM: it saves the step, no step
    lost), both re-form the group and finish together, with the weights of an uninterrupted one-process
    run (the global batch and micro-batch fixed)."""
    run = tmp_path / "rejoin"
    total = 60  # host a, training alone, must still be running once host b is back (measured: after 16-24 steps)
    steps = [f"train.epochs={total}", f"train.max_steps={total}", "train.evaluate=false", "train.save_every_steps=1"]
    elastic = ["--nnodes", "1:2", "--max-restarts", "3", "--rdzv-conf", "is_host=1,last_call_timeout=2"]

    def agent(host: str) -> subprocess.Popen:
        return hosts.agent(host, run, [*elastic, "--local-addr", hosts.address[host]], steps)

    agents = {"a": agent("a"), "b": agent("b")}
    try:
        _wait_for_step(run, 4, agents, 240)
        assert hosts.crash("b") >= 2  # the agent and its worker
        killed_at = json.loads((run / "checkpoints" / "last.json").read_text())["global_step"]
        assert _finish({"b": agents["b"]}, 30)["b"][0] == -signal.SIGKILL
        alone = _wait_for_records(run, lambda r: _trains_after_resume(r, 1), {"a": agents["a"]}, 120,
                                  "host a training alone")
        back_after = [r["global_step"] for r in alone if r["kind"] == "train"][-1]
        agents["b"] = agent("b")  # the host comes back: the same command
        done = _finish(agents, 180)
    finally:
        hosts.crash("a")  # after a failure: workers outlive their agents (sessions of their own)
        hosts.crash("b")
        _finish(agents, 30)
    for host, (code, _, err) in done.items():
        assert code == 0, f"host {host}: {err[-3000:]}"

    records = _records(run)
    train_steps = [r["global_step"] for r in records if r["kind"] == "train"]
    resumes = [r for r in records if r["kind"] == "resume"]
    world = json.loads((run / "summary.json").read_text())["world_size"]  # rank 0 of the last round
    wa, wb = _params(run), _one_process_params(tmp_path / "one", steps)
    diff = _max_diff(wa, wb)
    print(f"rejoin: host b killed at checkpoint step {killed_at}, back after step {back_after}; resumed at "
          f"{[r['global_step'] for r in resumes]} (steps redone {[r['steps_redone'] for r in resumes]}); "
          f"last round {world} processes; finished at step {train_steps[-1]}; max parameter difference {diff}")
    # Each step recorded once: the crash redid at most the step being saved (a checkpoint every step),
    # the return none (host a's worker saves the step it is stopped after).
    assert train_steps == list(range(1, total + 1))
    assert len(resumes) == 2 and resumes[0]["global_step"] >= killed_at and resumes[0]["steps_redone"] <= 1
    assert resumes[1]["global_step"] >= back_after and resumes[1]["steps_redone"] == 0
    assert world == 2  # host b's new worker trained in the last round
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_after_the_same_step_then_resumes(hosts, tmp_path):
    """SIGTERM to host b's agent (a preemption): its worker's stop request travels with the step's
    reduction, so both hosts stop after the same step and rank 0 saves it; the same commands then resume
    and end with the weights of an uninterrupted one-process run."""
    run = tmp_path / "preempted"
    steps = ["train.epochs=4", "train.max_steps=16", "train.evaluate=false"]
    agents = {"a": hosts.agent("a", run, ["--rdzv-conf", "is_host=1", "--local-addr", hosts.address["a"]], steps),
              "b": hosts.agent("b", run, ["--local-addr", hosts.address["b"]], steps)}
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").is_file() or len(_records(run)) < 3:
            assert time.monotonic() < deadline and all(p.poll() is None for p in agents.values())
            time.sleep(0.05)
        agents["b"].send_signal(signal.SIGTERM)
        summary = run / "summary.json"
        while not summary.is_file():  # written by rank 0 once the run has stopped and saved
            assert time.monotonic() < deadline, "the run did not stop after SIGTERM"
            time.sleep(0.05)
        agents["b"].wait(timeout=60)
    finally:
        # torchrun's agent on host a waits for host b's in its exit barrier (5 minutes): end it.
        hosts.crash("a")
        hosts.crash("b")
        _finish(agents, 60)
    stopped = json.loads(summary.read_text())
    saved = json.loads((run / "checkpoints" / "last.json").read_text())
    taken = [r["global_step"] for r in _records(run) if r["kind"] == "train"]
    print(f"SIGTERM to host b: stopped after step {stopped['global_step']} ({stopped['stop_reason']}), "
          f"checkpoint at step {saved['global_step']}, last recorded step {taken[-1]}")
    assert stopped["stop_reason"] == "sigterm" and saved["global_step"] == stopped["global_step"] == taken[-1] < 16

    resumed = {"a": hosts.agent("a", run, ["--rdzv-conf", "is_host=1", "--local-addr", hosts.address["a"]], steps),
               "b": hosts.agent("b", run, ["--local-addr", hosts.address["b"]], steps)}
    done = _finish(resumed, 300)
    for host, (code, _, err) in done.items():
        assert code == 0, f"host {host}: {err[-3000:]}"
    wa, wb = _params(run), _one_process_params(tmp_path / "one", steps)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["global_step"] for r in _records(run) if r["kind"] == "train"] == list(range(1, 17))
