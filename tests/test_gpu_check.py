"""benchmarks/gpu_check.py, run as a script: its CPU smoke run covers every section, and its micro-batch
search (``--search-check``) doubles, bisects and keeps to its time budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("compare", "microbatch", "ddp", "predict", "compile")
SEARCHES = [  # (limit, max_batch, largest, first_failure, stopped)
    (37, 64, 37, 38, None),  # doubling to 64 fails, bisection between 32 and 64 ends at 37 / 38
    (64, 64, 64, None, "max_batch 64 reached"),
    (100, 48, 48, None, "max_batch 48 reached"),  # the last doubling step is clipped to max_batch
    (0, 64, 0, 1, None),  # not even one item fits
]


def _child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _search_check(cases: list[dict]) -> list[dict]:
    """The script's ``--search-check``: its micro-batch search against stand-in limits."""
    cmd = [sys.executable, str(SCRIPT), "--search-check", json.dumps(cases)]
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_largest_fitting_doubles_then_bisects_and_keeps_to_its_budget():
    cases = [{"limit": limit, "max_batch": max_batch} for limit, max_batch, *_ in SEARCHES]
    cases.append({"limit": 1024, "max_batch": 1024, "budget_s": 5, "try_s": 10.0})  # each try "took" 10 s
    *searches, budget = _search_check(cases)
    for (_, max_batch, largest, first_failure, stopped), result in zip(SEARCHES, searches):
        assert (result["largest"], result["first_failure"], result["stopped"]) == (largest, first_failure, stopped)
        assert result["exact"] == (first_failure is not None)
        seen = [t["batch"] for t in result["tries"]]
        assert len(seen) == len(set(seen)) <= 2 * max_batch.bit_length()  # no batch tried twice, log-many tries
    assert budget["stopped"] == "time budget"  # no try started past the deadline
    assert budget["largest"] == 1 and len(budget["tries"]) == 1


@pytest.mark.slow
def test_cpu_smoke_run_records_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    table = tmp_path / "gpu_check.md"
    env = _child_env()
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--json", str(out), "--table", str(table),
           "--workdir", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    machine = data["machine"]
    assert machine["torch"] and isinstance(machine["cpu_flags"], list) and "cuda" in machine

    sections = data["sections"]
    assert set(sections) == set(SECTIONS)
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
        assert section["seconds"] >= 0 and section["budget_s"] > 0

    compare = sections["compare"]
    assert "no --official" in compare["official_skipped"]  # the official side is skipped, with the reason
    cases = {(r["mode"], r["precision"]) for r in compare["timing"]}
    assert cases == {(m, p) for m in ("eval", "train") for p in ("float32", "bfloat16", "float16")}
    assert all(r["ours_ms"] > 0 or r.get("skipped") for r in compare["timing"])
    assert all(r.get("ours_peak_gib", 0) > 0 or r.get("skipped") for r in compare["memory"])

    searches = {s["precision"]: s for s in sections["microbatch"]["searches"]}
    assert set(searches) == {"float32", "bfloat16"}
    for s in searches.values():
        assert s["largest"] >= 1 and (s["exact"] or s["stopped"]), s

    ddp = sections["ddp"]
    assert ddp["finished"] and set(ddp["runs"]) == {"detris_train", "engine_ddp"}
    assert all(r["summary"]["global_step"] == 2 for r in ddp["runs"].values())
    assert ddp["runs"]["engine_ddp"]["worker"]["backend"] == "gloo"

    rows = sections["predict"]["rows"]  # the collection benchmark, one process, each mode once
    assert [(r["model"], r["mode"]) for r in rows] == [("detris-tiny", m) for m in ("loop", "pipeline", "pipeline-batched")]
    assert all(r["images"] == 6 and r["images/s"] > 0 and 0 < r["forward busy %"] <= 100 for r in rows), rows

    for case in sections["compile"]["cases"]:
        assert case.get("compiled_ms", 0) > 0 or case.get("skipped"), case
    text = table.read_text()
    assert "### Sections" in text and "torch.compile" in text and "micro-batch" in text
    assert "Segmenting a collection" in text
