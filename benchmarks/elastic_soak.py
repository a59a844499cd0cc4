"""An elastic two-host run under repeated host failures: how many steps each failure costs, how long the
run takes to train again.

    sudo OMP_NUM_THREADS=1 python benchmarks/elastic_soak.py --minutes 10 --kill-every 120

Two hosts are two network namespaces joined by a veth pair (made here and removed at the end; root and
``ip netns`` needed), one ``torchrun --nnodes 1:2 --max-restarts N`` agent in each (with
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, without which a host that comes back cannot rejoin), c10d
rendezvous on host a, ``detris train configs/synthetic-tiny.yaml --resume auto`` (a few-second-per-step
model) with a checkpoint every ``--save-every-minutes``. Every ``--kill-every`` seconds host b crashes (SIGKILL to
every process in its namespace) and comes back ``--down`` seconds later with the same command. Read
from ``metrics.jsonl`` as the run writes it: per restart, the steps done after the last checkpoint
and done again (``steps_redone`` of the resume record), and the seconds from the fault to the first
step trained after it. Printed as a table and written as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the namespaces are the multi-host tests' (veth_hosts.py)
from veth_hosts import VethHosts  # noqa: E402

PORT = 29412
RUN = [
    "model.overrides.image_size=56", "data.synthetic.train_images=200", "data.synthetic.val_images=2",
    "data.synthetic.test_images=0", "data.synthetic.image_size=[64, 64]", "data.synthetic.max_objects=3",
    "train.batch_size=4", "train.micro_batch_size=2", "train.lr_schedule=multistep", "train.dice_weight=0.0",
    "train.max_minutes=null", "train.max_steps=null", "train.epochs=1000", "train.evaluate=false",
    "train.num_threads=1", "output.progress=false", "output.plot=false", "output.tensorboard=false",
]


class Hosts(VethHosts):
    """Namespaces ``dtsoaka`` and ``dtsoakb`` joined by a veth pair on 10.231.250.0/24."""

    def __init__(self) -> None:
        super().__init__("soak", 250)

    def agent(self, host: str, out: Path, args: argparse.Namespace, log: Path) -> subprocess.Popen:
        rdzv = f"last_call_timeout={args.last_call:g}" + (",is_host=1" if host == "a" else "")
        # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with the rendezvous store shared with the workers (the
        # default), an agent that stays keeps the store address of its first round and publishes it in no
        # later round, so the agent of a host that comes back waits for it until its store read timeout
        # (60 s) and the round fails; without sharing, rank 0's agent publishes a fresh address in every
        # round and the returning host rejoins.
        cmd = ["ip", "netns", "exec", self.ns[host], "env", "OMP_NUM_THREADS=1",
               "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", f"GLOO_SOCKET_IFNAME={self.iface[host]}",
               sys.executable, "-m", "torch.distributed.run",
               "--nnodes", "1:2", "--nproc-per-node", "1", "--max-restarts", "1000", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"{self.address['a']}:{PORT}", "--rdzv-id", "detris-soak", "--rdzv-conf", rdzv,
               "--local-addr", self.address[host], "-m", "detris.cli", "train", "configs/synthetic-tiny.yaml",
               "--resume", "auto"]
        for item in [*RUN, f"output.dir={out}", f"train.save_every_minutes={args.save_every_minutes}",
                     f"train.dist_timeout_s={args.dist_timeout}"]:
            cmd += ["--set", item]
        with open(log, "a") as f:
            return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _records(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


@dataclass
class Watch:
    """What the observer saw: wall times of the faults and of every resume, and when training went on."""

    faults: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    seen_resumes: int = 0

    def poll(self, run: Path, now: float) -> None:
        records = _records(run)
        resumes = [r for r in records if r["kind"] == "resume"]
        for r in resumes[self.seen_resumes:]:
            self.resumes.append({**r, "seen": now, "trained": None})
        self.seen_resumes = len(resumes)
        steps = [r["global_step"] for r in records if r["kind"] == "train"]
        for r in self.resumes:
            if r["trained"] is None and steps and steps[-1] > r["global_step"]:
                r["trained"] = now

    def last_step(self, run: Path) -> int:
        steps = [r["global_step"] for r in _records(run) if r["kind"] == "train"]
        return steps[-1] if steps else 0


def _soak(args: argparse.Namespace, hosts: Hosts, run: Path, logs: Path) -> Watch:
    """Run, crash host b every ``kill_every`` seconds, bring it back after ``down`` seconds."""
    watch = Watch()
    agents = {h: hosts.agent(h, run, args, logs / f"{h}.log") for h in ("a", "b")}
    start = time.monotonic()
    next_kill, back_at = start + args.kill_every, None
    while time.monotonic() - start < args.minutes * 60:
        now = time.monotonic()
        watch.poll(run, now - start)
        if back_at is None and now >= next_kill:
            watch.faults.append({"kind": "crash of host b", "at": now - start, "last_step": watch.last_step(run)})
            hosts.crash("b")
            back_at = now + args.down
        elif back_at is not None and now >= back_at:
            watch.faults.append({"kind": "host b back", "at": now - start, "last_step": watch.last_step(run)})
            agents["b"] = hosts.agent("b", run, args, logs / "b.log")
            back_at, next_kill = None, now + args.kill_every
        time.sleep(0.5)
    watch.poll(run, time.monotonic() - start)
    return watch


def _report(watch: Watch) -> list[dict[str, Any]]:
    """One row per restart (a resume record), blamed on the earliest fault before it that comes after
    the fault blamed for the restart before; a fault that caused no restart gets a row of its own.

    Not the latest fault before it: host b can come back before host a has re-formed alone, and the
    restart that the crash caused then shows up after the return (with the return's restart after it).
    """
    rows, blamed, last = [], set(), -1
    for r in watch.resumes:
        later = [i for i, f in enumerate(watch.faults) if i > last and f["at"] <= r["seen"]]
        fault = watch.faults[later[0]] if later else None
        if later:
            last = later[0]
            blamed.add(last)
        kind = fault["kind"] if fault else ("start" if last < 0 else "no new fault")
        rows.append({
            "fault": kind, "fault_at_s": round(fault["at"], 1) if fault else None,
            "last_step_before": fault["last_step"] if fault else None, "resumed_from_step": r["global_step"],
            "steps_redone": r["steps_redone"],
            "seconds_to_train_again": round(r["trained"] - fault["at"], 1) if fault and r["trained"] else None,
        })
    for i, f in enumerate(watch.faults):
        if i not in blamed:
            rows.append({"fault": f["kind"], "fault_at_s": round(f["at"], 1), "last_step_before": f["last_step"],
                         "resumed_from_step": None, "steps_redone": None, "seconds_to_train_again": None})
    return sorted(rows, key=lambda row: row["fault_at_s"] or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kill-every", type=float, default=120.0, help="seconds between crashes of host b")
    parser.add_argument("--down", type=float, default=20.0, help="seconds host b stays down")
    parser.add_argument("--save-every-minutes", type=float, default=0.1)
    parser.add_argument("--last-call", type=float, default=30.0,
                        help="torchrun's last_call_timeout: how long a re-forming group waits for more hosts")
    parser.add_argument("--dist-timeout", type=float, default=60.0, help="train.dist_timeout_s of the run")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("elastic_soak: needs root and `ip netns` (two hosts are two network namespaces)", file=sys.stderr)
        return 2
    hosts, work = Hosts(), Path(tempfile.mkdtemp(prefix="detris-soak-"))
    try:
        hosts.remove()  # what an interrupted earlier run left
        hosts.create()
        watch = _soak(args, hosts, work / "run", work)
    finally:
        hosts.remove()
    rows = _report(watch)
    print(f"{'fault':<18} {'at s':>6} {'last step':>9} {'resumed from':>12} {'redone':>6} {'s to train':>10}")
    for r in rows:
        print(f"{r['fault']:<18} {str(r['fault_at_s']):>6} {str(r['last_step_before']):>9} "
              f"{str(r['resumed_from_step']):>12} {str(r['steps_redone']):>6} {str(r['seconds_to_train_again']):>10}")
    final = max((x["global_step"] for x in _records(work / "run") if x["kind"] == "train"), default=0)
    print(f"steps trained in {args.minutes} minutes: {final}; logs and run in {work}")
    if args.json:
        # The raw observations too, so that the rows can be checked or blamed differently later.
        observed = {"faults": watch.faults, "resumes": watch.resumes}
        Path(args.json).write_text(json.dumps({"rows": rows, "final_step": final, "args": vars(args),
                                               "observed": observed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
