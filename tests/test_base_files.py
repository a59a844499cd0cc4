"""Adapter-only models that travel: base backbone files by canonical name + sha256, found beside the
model or in $DETRIS_HOME, or downloaded (atomic, resumable) from the URL recorded for them; the
download is served by an HTTP server on 127.0.0.1 that the test starts."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

import detris
from detris import registry
from detris.weights import CheckpointError
from model_fixtures import official_inputs, trained_tiny


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with ``Range: bytes=N-`` support and records what was asked."""

    requests: list[str] = []

    def do_GET(self) -> None:  # the name http.server calls
        path = Path(self.directory) / self.path.lstrip("/")
        rng = self.headers.get("Range")
        type(self).requests.append(f"{self.path} {rng or ''}".strip())
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    _RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _RangeHandler(*a, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    images, tokens = official_inputs(1)
    with torch.no_grad():
        return model.eval()(images, tokens).logits


@pytest.fixture()
def saved(files, tmp_path, monkeypatch) -> tuple[Path, dict[str, Path], torch.Tensor]:
    """An adapter-only model saved while its base files were in ``tmp/original``; those files are then
    gone from there (the model moved to another machine). Returns (model dir, base copies, logits)."""
    original = tmp_path / "original"
    original.mkdir()
    base = {"dinov2": original / files["dino"].name, "clip": original / files["clip_ts"].name}
    for kind, key in (("dinov2", "dino"), ("clip", "clip_ts")):
        shutil.copyfile(files[key], base[kind])
    model = detris.build_model("detris-tiny", dinov2_weights=base["dinov2"], clip_weights=base["clip"])
    torch.manual_seed(3)
    for p in model.trainable_modules():
        for t in p.parameters():
            t.data.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "model", adapter_only=True, base_weights=base)
    ref = _logits(model)
    kept = tmp_path / "kept"
    shutil.move(original, kept)
    monkeypatch.setenv("DETRIS_HOME", str(tmp_path / "home"))
    return tmp_path / "model", {k: kept / p.name for k, p in base.items()}, ref


def test_base_files_are_recorded_by_name_and_sha256(saved):
    model_dir, kept, _ = saved
    records = json.loads((model_dir / "config.json").read_text())["base_weights"]
    for kind, path in kept.items():
        assert records[kind]["name"] == path.name
        assert records[kind]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_moved_base_files_are_found_in_detris_home(saved, tmp_path):
    model_dir, kept, ref = saved
    home = tmp_path / "home"
    home.mkdir()
    for path in kept.values():
        shutil.copyfile(path, home / path.name)
    assert torch.equal(_logits(detris.from_pretrained(model_dir)), ref)


def test_a_missing_base_file_is_one_line_with_its_name_and_hash(saved):
    model_dir, kept, _ = saved
    with pytest.raises(FileNotFoundError) as err:
        detris.from_pretrained(model_dir)
    message = str(err.value)
    sha = hashlib.sha256(kept["dinov2"].read_bytes()).hexdigest()
    assert "\n" not in message and kept["dinov2"].name in message and sha in message


def test_a_missing_official_base_file_is_downloaded_and_resumed(files, tmp_path, monkeypatch, server):
    root, url = server
    names = {"dinov2": files["dino"].name, "clip": files["clip_ts"].name}
    for kind, key in (("dinov2", "dino"), ("clip", "clip_ts")):
        shutil.copyfile(files[key], root / names[kind])
        monkeypatch.setitem(registry.BACKBONE_URLS, names[kind], f"{url}/{names[kind]}")
    model = trained_tiny(files, seed=4)
    model.save_pretrained(tmp_path / "model", adapter_only=True,  # records the URLs
                          base_weights={"dinov2": files["dino"], "clip": files["clip_ts"]})
    ref = _logits(model)
    home = tmp_path / "home"
    monkeypatch.setenv("DETRIS_HOME", str(home))
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    for record in config["base_weights"].values():
        record["path"] = None  # as on another machine
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    # A download interrupted earlier left half of the DINOv2 file: the next one resumes it.
    home.mkdir()
    data = (root / names["dinov2"]).read_bytes()
    (home / (names["dinov2"] + ".part")).write_bytes(data[: len(data) // 2])
    assert torch.equal(_logits(detris.from_pretrained(tmp_path / "model")), ref)
    assert (home / names["dinov2"]).read_bytes() == data and not (home / (names["dinov2"] + ".part")).exists()
    assert f"/{names['dinov2']} bytes={len(data) // 2}-" in _RangeHandler.requests
    assert f"/{names['clip']}" in _RangeHandler.requests


def test_a_download_with_the_wrong_hash_is_refused(files, tmp_path, monkeypatch, server):
    root, url = server
    name = files["dino"].name
    (root / name).write_bytes(b"not the file")
    from detris.pretrained import download

    expected = hashlib.sha256(files["dino"].read_bytes()).hexdigest()
    with pytest.raises(CheckpointError) as err:
        download(f"{url}/{name}", tmp_path / name, expected)
    assert expected in str(err.value) and hashlib.sha256(b"not the file").hexdigest() in str(err.value)
    assert not (tmp_path / name).exists()
