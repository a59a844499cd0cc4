"""Long fuzz runs of every reader of user files (the targets of fuzz_targets.py, beside this script).

    python tests/fuzz_run.py --minutes 10 --target all            # each target 10 minutes, one after another
    python tests/fuzz_run.py --minutes 2 --target image --engine random

It lives in tests/ with the targets it shares with the fast suite (tests/test_fuzz.py), so that it
imports them as sibling modules.

Engines: ``atheris`` (coverage-guided libFuzzer over detris' own code, seeded with the real-layout
files; used when atheris is installed) or ``random`` (the mutators of the fast suite in a loop). Each
target runs in its own process, so that its memory is measured alone. Per case: a time limit
(``--case-seconds``, a hang is a finding) and an RSS bound (``--rss-mb``, growth past it is a finding).
A finding is an exception outside the contract (see docs/reliability.md), deduplicated by type and
the line that raised it; the first input of each is written under ``--out``.
Prints, per target: cases run, minutes, documented refusals, accepted inputs, findings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any


class CaseTimeout(Exception):
    """A case ran past --case-seconds."""


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Recorder:
    """Counts outcomes and keeps the first input of each distinct finding."""

    def __init__(self, target: str, out: Path, case_seconds: float, rss_mb: float) -> None:
        self.target, self.out, self.case_seconds = target, out, case_seconds
        self.cases = self.refused = self.accepted = 0
        self.findings: dict[str, dict[str, Any]] = {}
        self.baseline = _rss_mb()
        self.rss_bound, self.peak = self.baseline + rss_mb, self.baseline
        self.slowest = 0.0
        self.report: Any = None
        self.reported = time.monotonic()

    def run(self, check: Any, data: bytes) -> None:
        self.cases += 1
        signal.setitimer(signal.ITIMER_REAL, self.case_seconds)
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="detris-fuzz-") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = check(data, Path(tmp))
            if isinstance(result, BaseException):
                self.refused += 1
            else:
                self.accepted += 1
        except Exception as exc:  # outside the contract: a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            self._finding(f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}", str(exc), data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.slowest = max(self.slowest, time.perf_counter() - start)
        if self.report is not None and time.monotonic() - self.reported > 2.0:
            self.report()  # libFuzzer ends the process without running exit handlers: report as we go
            self.reported = time.monotonic()
        rss = _rss_mb()
        self.peak = max(self.peak, rss)
        if rss > self.rss_bound:
            self._finding("RSS over the bound", f"{rss:.0f} MB > {self.rss_bound:.0f} MB", data)

    def _finding(self, key: str, message: str, data: bytes) -> None:
        entry = self.findings.setdefault(key, {"count": 0, "message": message[:300]})
        entry["count"] += 1
        if entry["count"] == 1:
            digest = hashlib.sha256(data).hexdigest()[:12]
            path = self.out / f"{self.target}-{digest}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            entry["input"] = str(path)

    def summary(self, seconds: float, engine: str) -> dict[str, Any]:
        return {"target": self.target, "engine": engine, "cases": self.cases, "minutes": round(seconds / 60, 2),
                "refused": self.refused, "accepted": self.accepted, "findings": self.findings,
                "rss_baseline_mb": round(self.baseline), "rss_peak_mb": round(self.peak),
                "slowest_case_s": round(self.slowest, 2)}


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout("the case ran past --case-seconds")


def _run_random(target: Any, rec: Recorder, deadline: float, seed: int) -> None:
    from fuzz_targets import make_case

    rng = random.Random(seed)
    seeds = target.seeds()
    while time.monotonic() < deadline:
        rec.run(target.check, make_case(target, seeds, rng))


def _run_atheris(target: Any, rec: Recorder, seconds: float, seed: int) -> None:
    import atheris

    corpus = Path(tempfile.mkdtemp(prefix=f"detris-fuzz-corpus-{target.name}-"))
    for i, data in enumerate(target.seeds()):
        (corpus / f"seed{i}").write_bytes(data)
    rng = random.Random(seed)
    for i in range(20):  # structure-aware variants join the corpus: libFuzzer only flips bytes
        if target.structured is not None:
            (corpus / f"structured{i}").write_bytes(target.structured(rng.choice(target.seeds()), rng))
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", f"-seed={seed}", "-timeout=0",
                   "-rss_limit_mb=0", "-max_len=20000000", "-len_control=0", str(corpus)],
                  lambda data: rec.run(target.check, data))
    atheris.Fuzz()


def _one_target(args: argparse.Namespace) -> None:
    """Run one target in this process and print its summary as one JSON line."""
    import torch

    torch.set_num_threads(1)
    engine = args.engine
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["detris"]):
            import detris.data.datasets  # noqa: F401  (instrumented for coverage)
            import detris.data.refer  # noqa: F401
            import detris.engine.config  # noqa: F401
            import detris.pretrained  # noqa: F401
            import detris.tokenizer  # noqa: F401
            import detris.weights  # noqa: F401
    from fuzz_targets import TARGETS

    target = TARGETS[args.target]
    signal.signal(signal.SIGALRM, _on_alarm)
    rec = Recorder(target.name, Path(args.out), args.case_seconds, args.rss_mb)
    seconds = args.minutes * 60
    start = time.monotonic()

    def report() -> None:
        Path(args.summary).write_text(json.dumps(rec.summary(time.monotonic() - start, engine)))

    rec.report = report
    if engine == "atheris":
        _run_atheris(target, rec, seconds, args.seed)
    else:
        _run_random(target, rec, start + seconds, args.seed)
    report()


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'target':<14}{'engine':<9}{'minutes':>8}{'cases':>10}{'refused':>10}{'accepted':>10}"
          f"{'findings':>9}{'RSS peak MB':>12}{'slowest s':>10}")
    for r in rows:
        print(f"{r['target']:<14}{r['engine']:<9}{r['minutes']:>8}{r['cases']:>10}{r['refused']:>10}"
              f"{r['accepted']:>10}{len(r['findings']):>9}{r['rss_peak_mb']:>12}{r['slowest_case_s']:>10}")
        for key, f in r["findings"].items():
            print(f"    {f['count']} x {key}: {f['message'][:160]} ({f.get('input')})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="per target")
    parser.add_argument("--target", default="all", help="a target name, a comma-separated list, or all")
    parser.add_argument("--engine", choices=["atheris", "random", "auto"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-seconds", type=float, default=20.0, help="a case slower than this is a finding")
    parser.add_argument("--rss-mb", type=float, default=1024.0, help="RSS growth over the start that is a finding")
    parser.add_argument("--out", default="runs/fuzz", help="where the inputs of findings are written")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # the per-target child
    parser.add_argument("--summary", help=argparse.SUPPRESS)  # where the child writes its counts
    args = parser.parse_args()
    if args.engine == "auto":
        try:
            import atheris  # noqa: F401

            args.engine = "atheris"
        except ImportError:
            args.engine = "random"
    if args.single:
        _one_target(args)
        return 0

    from fuzz_targets import TARGETS

    names = sorted(TARGETS) if args.target == "all" else args.target.split(",")
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in names:
        summary = Path(tempfile.mkstemp(prefix=f"detris-fuzz-{name}-", suffix=".json")[1])
        cmd = [sys.executable, __file__, "--single", "--target", name, "--minutes", str(args.minutes),
               "--engine", args.engine, "--seed", str(args.seed), "--case-seconds", str(args.case_seconds),
               "--rss-mb", str(args.rss_mb), "--out", args.out, "--summary", str(summary)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        row = json.loads(summary.read_text() or "null")
        summary.unlink()
        if row is None:
            row = {"target": name, "engine": args.engine, "minutes": 0, "cases": 0, "refused": 0, "accepted": 0,
                   "rss_peak_mb": 0, "slowest_case_s": 0, "findings": {}}
        # libFuzzer exits 0 when its time is up; anything else (a crash in a C library) is a finding.
        if proc.returncode != 0:
            row["findings"][f"process ended with {proc.returncode}"] = {"count": 1, "message": proc.stderr[-300:]}
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    _print_table(rows)
    return 1 if any(r["findings"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
