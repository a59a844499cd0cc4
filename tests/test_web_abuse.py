"""A short run of benchmarks/web_abuse.py: 40 hostile and valid requests against a live server.

The full run (1,000 requests) and its figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason='the web demo needs gradio (pip install "detris[demo]")')

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "web_abuse.py"


@pytest.mark.slow
def test_40_abusive_requests_are_answered_or_rejected_and_leave_nothing_behind():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--requests", "40", "--burst", "20", "--cache-minutes", "0.1"],
                          capture_output=True, text=True, timeout=240, env=env)
    summary = json.loads(proc.stdout.splitlines()[0])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert summary["errors"] == 0 and summary["answered"] + summary["rejected"] == 40
    assert summary["still_serving"] and summary["upload_files_left"] == 0
    assert summary["rss_peak_mb"] <= summary["rss_bound_mb"]
