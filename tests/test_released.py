"""File names of released checkpoints the registry could not confirm, resolved from the Hub repository's
listing: against a local endpoint on 127.0.0.1 and against an offline cache laid out here."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from detris.registry import REGISTRY
from detris.released import hub_listing, match_released_file, resolve_released_file

pytest.importorskip("huggingface_hub")

#: A listing in the official layout: base/ as confirmed, large/ and mix/ named the same way.
LISTING = ["README.md", "base/base_refcoco+.pth", "base/base_refcoco.pth", "base/base_refcocog_g.pth",
           "base/base_refcocog_u.pth", "large/large_refcoco+.pth", "large/large_refcoco.pth",
           "large/large_refcocog_g.pth", "large/large_refcocog_u.pth", "mix/mix.pth"]


def test_the_patterns_find_the_confirmed_base_names_again():
    for name, entry in REGISTRY.items():
        if entry.variant == "detris-b":
            assert match_released_file(replace(entry, hub_file=None), LISTING) == entry.hub_file, name


def test_large_and_mixed_names_resolve_only_when_exactly_one_file_matches():
    assert match_released_file(REGISTRY["detris-l.refcoco"], LISTING) == "large/large_refcoco.pth"
    assert match_released_file(REGISTRY["detris-l.refcoco+"], LISTING) == "large/large_refcoco+.pth"
    assert match_released_file(REGISTRY["detris-l.refcocog-umd"], LISTING) == "large/large_refcocog_u.pth"
    assert match_released_file(REGISTRY["detris-l.refcocog-google"], LISTING) == "large/large_refcocog_g.pth"
    assert match_released_file(REGISTRY["detris-l-mixed.mixed"], LISTING) == "mix/mix.pth"
    assert match_released_file(REGISTRY["detris-l-mixed.mixed"], [*LISTING, "mix/mix_old.pth"]) is None
    assert match_released_file(REGISTRY["detris-l.refcoco"], ["large/refcoco_a.pth", "large/README.md"]) is None
    assert match_released_file(REGISTRY["detris-l.refcoco"], []) is None


class _TreeHandler(http.server.BaseHTTPRequestHandler):
    """The Hub's tree API, as much of it as ``HfApi.list_repo_files`` reads."""

    requests: list[str] = []

    def do_GET(self) -> None:  # the name http.server calls
        type(self).requests.append(self.path)
        if "/api/models/thuteam/DETRIS/tree/" not in self.path:
            self.send_error(404)
            return
        body = json.dumps([{"type": "file", "path": p, "size": 1, "oid": "0" * 40} for p in LISTING]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_listing_comes_from_the_endpoint_once_then_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _TreeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TreeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert hub_listing("thuteam/DETRIS", tmp_path, endpoint=url) == sorted(LISTING)
        assert len(_TreeHandler.requests) == 1
        assert resolve_released_file(REGISTRY["detris-l.refcoco"], tmp_path, endpoint=url) == "large/large_refcoco.pth"
        assert len(_TreeHandler.requests) == 1  # cached for a day
    finally:
        httpd.shutdown()
        httpd.server_close()
    record = json.loads((tmp_path / "hub-listing" / "thuteam--DETRIS.json").read_text())
    assert record["files"] == sorted(LISTING)


SCRIPT = """
import sys
from pathlib import Path
from detris.pretrained import _official_source
from detris.registry import REGISTRY
from detris.released import resolve_released_file
print(resolve_released_file(REGISTRY[sys.argv[1]], Path(sys.argv[2])))
try:
    print(_official_source(sys.argv[1], None).fetch.args)
except FileNotFoundError as err:
    print("FileNotFoundError", err)
"""


def _offline(name: str, cache: Path, home: Path) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "DETRIS_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, name, str(home)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


def test_offline_the_files_the_cache_holds_name_the_checkpoint(tmp_path):
    repo = tmp_path / "cache" / "models--thuteam--DETRIS"
    snap = repo / "snapshots" / ("c" * 40)
    (snap / "large").mkdir(parents=True)
    (snap / "large" / "large_refcoco+.pth").write_bytes(b"cached")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    out = _offline("detris-l.refcoco+", tmp_path / "cache", tmp_path / "home")
    assert out == ["large/large_refcoco+.pth", "('thuteam/DETRIS', 'large/large_refcoco+.pth')"]
    out = _offline("detris-l.refcoco", tmp_path / "cache", tmp_path / "home")  # not in the cache: not guessed
    assert out[0] == "None" and out[1].startswith("FileNotFoundError detris-l.refcoco: file name on the Hub not confirmed")
