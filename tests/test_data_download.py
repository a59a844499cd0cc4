"""``detris data download`` and ``detris data check`` against an HTTP server on 127.0.0.1.

The server serves archives built here in the internal layout of the real files (``refcoco/instances.json``,
``refcoco/refs(unc).p``, ...; ``train2014/COCO_train2014_%012d.jpg``), with ``Range`` support and a switch
that drops the connection half-way through a file. The pinned table is replaced by one with the test
archives' sizes and hashes. gRefCOCO comes through huggingface_hub's offline cache, laid out here.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import types
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from detris.cli import main
from detris.fetch import http as fetch_http
from detris.fetch import install
from detris.fetch.errors import ChecksumError, DownloadError, FetchError, NotEnoughSpaceError, UnsafeArchiveError
from detris.fetch.install import MARKER, DownloadOptions, download_datasets, parse_expected
from detris.fetch.sources import SOURCES, DatasetSource, SourceFile
from refer_fixtures import EXPECTED_COUNTS, IMAGE_SIZES, build_refer_fixture

REFER_FILES = {
    "refcoco": ("instances.json", "refs(unc).p", "refs(google).p"),
    "refcoco+": ("instances.json", "refs(unc).p"),
    "refcocog": ("instances.json", "refs(umd).p", "refs(google).p"),
}


# ------------------------------------------------------------------------------------- archives


def _zip(entries: dict[str, bytes], folders: tuple[str, ...] = ()) -> bytes:
    """A zip as the REFER and COCO archives are made: a folder entry, then the files under it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            zf.writestr(zipfile.ZipInfo(folder), b"")
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """``refcoco.zip``, ``refcoco+.zip``, ``refcocog.zip`` and ``train2014.zip`` of the REFER fixture."""
    fx = build_refer_fixture(tmp_path_factory.mktemp("fixture"))
    out = {}
    for name, files in REFER_FILES.items():
        out[f"{name}.zip"] = _zip({f"{name}/{f}": (fx.data_root / name / f).read_bytes() for f in files},
                                  folders=(f"{name}/",))
    images = {f"train2014/{p.name}": p.read_bytes() for p in sorted(fx.image_root.iterdir())}
    out["train2014.zip"] = _zip(images, folders=("train2014/",))
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table(url: str, archives: dict[str, bytes], **changes: dict) -> dict[str, DatasetSource]:
    """The real table with every URL, size and sha256 replaced by the test server's archives';
    ``changes[name]`` replaces fields of that dataset (``sha256`` of its one file included)."""
    out = {}
    for name, src in SOURCES.items():
        if src.member_prefix is None:
            out[name] = src
            continue
        f = src.files[0]
        data = archives[f.name]
        extra = dict(changes.get(name, {}))
        new_file = replace(f, url=f"{url}/files/{urllib.parse.quote(f.name)}", size=len(data),
                           sha256=extra.pop("sha256", _sha(data)))
        out[name] = replace(src, files=(new_file,), extracted_size=extra.pop("extracted_size", 4 * len(data)),
                            **extra)
    return out


# --------------------------------------------------------------------------------------- server


class Server:
    """Files by name at ``/files/<name>`` and ``/mirror/<name>``; records ``(path, Range)`` per request;
    ``drop[name] = n`` sends the full length header but closes the connection after ``n`` bytes (once)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.drop: dict[str, int] = {}
        self.ignore_range = False  # answer every request with the whole file (200), as some servers do
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # the name http.server calls
                path = urllib.parse.unquote(self.path)
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                name = path.split("/", 2)[-1]
                if not path.startswith(("/files/", "/mirror/")) or name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                rng = None if server.ignore_range else rng
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.drop:
                    body = body[: server.drop.pop(name)]
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def ranges(self, name: str) -> list[str]:
        return [r for p, r in self.requests if p.endswith("/" + name) and r]


@pytest.fixture()
def server(archives: dict[str, bytes]) -> Iterator[Server]:
    srv = Server(archives)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture()
def patched(server: Server, archives: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> dict[str, DatasetSource]:
    """The test table installed as the one the command line uses; retries without waiting."""
    sources = table(server.url, archives)
    monkeypatch.setattr(install, "SOURCES", sources)
    monkeypatch.setattr(fetch_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    return sources


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def leftovers(root: Path) -> list[str]:
    """Anything under ``root``, relative names (hidden ones included)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_download_check_and_eval_on_the_result(patched, server, tmp_path, capsys):
    from model_fixtures import save_random_tiny

    root = tmp_path / "data"
    rc, out, err = run(["data", "download", "refcoco", "refcoco+", "refcocog", "coco-train2014", "--root",
                        str(root)], capsys)
    assert rc == 0, err
    for name, files in REFER_FILES.items():
        assert sorted(p.name for p in (root / name).iterdir()) == sorted([*files, MARKER])
        assert f"{name}: installed {root / name} ({len(files)} files)" in out
    assert sorted(p.name for p in (root / "images" / "train2014").iterdir() if p.name != MARKER) == [
        f"COCO_train2014_{i:012d}.jpg" for i in sorted(IMAGE_SIZES)]
    # No hidden staging folder, partial file or archive is left.
    assert not [p for p in leftovers(root) if p.startswith(".") or ".partial-" in p or p.endswith(".part")]

    rc, out, err = run(["data", "check", "--root", str(root), "--dataset", "refcoco", "--dataset", "refcoco+",
                        "--dataset", "refcocog", "--dataset", "coco-train2014"], capsys)
    assert rc == 0, out + err
    refs, sents = EXPECTED_COUNTS["refcoco"]["val"]
    assert any(line.split()[:5] == ["val", str(refs), "(3811)", str(sents), "(10834)"] for line in out.splitlines())
    assert "counts differ from the published ones" in out  # a tiny fixture is "a subset"
    assert "4 of the 4 images refcoco, refcoco+, refcocog refer to are present" in out
    assert "everything needed is present" in out

    model = save_random_tiny(tmp_path / "model", 112)
    rc, out, err = run(["eval", "--model", str(model), "--dataset", "refcoco", "--split", "val", "--data-root",
                        str(root), "--device", "cpu"], capsys)  # no --image-root: DATA_ROOT/images/train2014
    assert rc == 0, err
    assert f"{refs} refs, {sents} expressions" in out


def test_a_dropped_connection_is_resumed_with_a_range_request(patched, server, archives, tmp_path):
    root = tmp_path / "data"
    half = len(archives["refcoco.zip"]) // 2
    server.drop["refcoco.zip"] = half
    said: list[str] = []
    download_datasets(["refcoco"], root, DownloadOptions(sources=patched, retry_wait=0.0, log=said.append))
    assert server.ranges("refcoco.zip") == [f"bytes={half}-"]
    assert said[0] == (f"refcoco.zip: connection closed after {half} of {len(archives['refcoco.zip'])} bytes; "
                       f"resuming from byte {half} in 0 s (attempt 2 of 5)")
    assert (root / "refcoco" / "refs(unc).p").is_file()


def test_a_partial_file_is_resumed_by_the_next_run(patched, server, archives, tmp_path, capsys):
    root = tmp_path / "data"
    half = len(archives["refcoco+.zip"]) // 3
    server.drop["refcoco+.zip"] = half
    with pytest.raises(DownloadError) as err:
        download_datasets(["refcoco+"], root, DownloadOptions(sources=patched, attempts=1, log=lambda s: None))
    part = root / ".download" / "refcoco+.zip.part"
    assert "run the same command again to resume" in str(err.value) and part.stat().st_size == half
    assert not (root / "refcoco+").exists()
    rc, out, err_text = run(["data", "download", "refcoco+", "--root", str(root)], capsys)
    assert rc == 0, err_text
    assert server.ranges("refcoco+.zip") == [f"bytes={half}-"]
    assert not part.exists() and (root / "refcoco+" / "refs(unc).p").is_file()


def test_a_server_that_ignores_the_range_restarts_the_file(patched, server, archives, tmp_path):
    root = tmp_path / "data"
    server.drop["refcocog.zip"] = 1000
    server.ignore_range = True
    download_datasets(["refcocog"], root, DownloadOptions(sources=patched, retry_wait=0.0, log=lambda s: None))
    assert server.ranges("refcocog.zip") == ["bytes=1000-"]  # asked for; the whole file came back
    assert (root / "refcocog" / "refs(umd).p").read_bytes() == zipfile.ZipFile(
        io.BytesIO(archives["refcocog.zip"])).read("refcocog/refs(umd).p")


def test_a_wrong_hash_is_refused_naming_both_hashes_and_nothing_is_extracted(server, archives, tmp_path, capsys,
                                                                            monkeypatch):
    pinned = "0" * 64
    monkeypatch.setattr(install, "SOURCES", table(server.url, archives, refcoco={"sha256": pinned}))
    root = tmp_path / "data"
    rc, out, err = run(["data", "download", "refcoco", "--root", str(root)], capsys)
    actual = _sha(archives["refcoco.zip"])
    assert rc == 1
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    assert "refcoco.zip" in line and pinned in line and actual in line and "--expect-sha256" in line
    assert leftovers(root) == []  # nothing extracted, the refused download deleted
    # A mirror that repacked the file on purpose: the user states the hash it publishes.
    rc, out, err = run(["data", "download", "refcoco", "--root", str(root), "--expect-sha256",
                        f"refcoco.zip={actual}"], capsys)
    assert rc == 0, err
    assert (root / "refcoco" / "instances.json").is_file()


def test_not_enough_free_space_is_refused_before_downloading(patched, server, tmp_path):
    root = tmp_path / "data"
    need = len(server.files["refcoco.zip"]) * 5  # archive + the table's extracted estimate (4x)
    with pytest.raises(NotEnoughSpaceError) as err:
        download_datasets(["refcoco"], root, DownloadOptions(sources=patched, free_space=lambda p: need - 1))
    assert "not enough free space" in str(err.value) and "nothing was downloaded" in str(err.value)
    assert server.requests == [] and leftovers(root) == []
    download_datasets(["refcoco"], root, DownloadOptions(sources=patched, free_space=lambda p: need,
                                                         log=lambda s: None))
    assert (root / "refcoco" / "instances.json").is_file()


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only): a real full disk, not an exception raised by hand."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_small_disk_refuses_the_download_before_it_starts(server, archives, small_disk, monkeypatch, capsys):
    monkeypatch.setattr(install, "SOURCES", table(server.url, archives, refcoco={"extracted_size": 2 << 20}))
    rc, out, err = run(["data", "download", "refcoco", "--root", str(small_disk / "data")], capsys)
    assert rc == 1 and "not enough free space" in err and server.requests == []
    assert leftovers(small_disk / "data") == []


def test_a_member_larger_than_the_free_space_is_refused_by_name(server, small_disk, monkeypatch, capsys):
    bomb = _zip({"refcoco/instances.json": b"{}", "refcoco/refs(unc).p": bytes(4 << 20)}, folders=("refcoco/",))
    server.files["refcoco.zip"] = bomb
    sources = table(server.url, server.files, refcoco={"extracted_size": 0})
    monkeypatch.setattr(install, "SOURCES", sources)
    root = small_disk / "data"
    rc, out, err = run(["data", "download", "refcoco", "--root", str(root)], capsys)
    assert rc == 1
    assert "member 'refcoco/refs(unc).p' declares 4194304 bytes" in err and "nothing was extracted" in err
    assert leftovers(root) == []


def test_a_disk_that_fills_during_the_download_stops_it_with_the_systems_error(server, small_disk, monkeypatch,
                                                                              capsys):
    big = _zip({"refcoco/instances.json": os.urandom(2 << 20)}, folders=("refcoco/",))  # does not compress
    server.files["refcoco.zip"] = big
    monkeypatch.setattr(install, "SOURCES", table(server.url, server.files, refcoco={"extracted_size": 0}))
    monkeypatch.setattr(install, "free_bytes", lambda path: 1 << 40)  # a probe that is wrong: the writer decides
    rc, out, err = run(["data", "download", "refcoco", "--root", str(small_disk / "data")], capsys)
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "No space left on device" in err and "run the same command again" in err
    assert len([p for p, _ in server.requests]) == 1  # not retried: a full disk is not a network error
    assert not (small_disk / "data" / "refcoco").exists()


def _symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("member, reason", [
    ("/etc/refcoco/instances.json", "has an absolute path"),
    ("refcoco/../../escaped.json", "climbs out of the folder with '..'"),
    ("refcoco/link", "is a symbolic link"),
])
def test_unsafe_members_are_refused_by_name_and_nothing_is_left(server, archives, tmp_path, monkeypatch, member,
                                                               reason):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("refcoco/instances.json", b"{}")
        if member.endswith("link"):
            zf.writestr(_symlink_member(member, "/etc/passwd"), "/etc/passwd")
        else:
            zf.writestr(member, b"x")
        zf.writestr("refcoco/refs(unc).p", b"later member")
    server.files["refcoco.zip"] = buf.getvalue()
    # The hash matches (a mirror the user trusted): the archive is still untrusted input.
    sources = table(server.url, server.files)
    root = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError) as err:
        download_datasets(["refcoco"], root, DownloadOptions(sources=sources, log=lambda s: None))
    assert f"member {member!r} {reason}" in str(err.value) and "nothing was extracted" in str(err.value)
    assert leftovers(root) == []
    assert not (tmp_path / "escaped.json").exists()


def test_a_second_run_does_nothing(patched, server, tmp_path, capsys):
    root = tmp_path / "data"
    assert run(["data", "download", "refcoco", "coco-train2014", "--root", str(root)], capsys)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    server.requests.clear()
    rc, out, err = run(["data", "download", "refcoco", "coco-train2014", "--root", str(root)], capsys)
    assert rc == 0, err
    assert server.requests == []
    assert f"refcoco: already installed in {root / 'refcoco'} (3 files present at their recorded sizes)" in out
    assert "nothing to do" in out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    # A file deleted since: the record no longer matches, so the dataset is fetched and replaced whole.
    (root / "refcoco" / "refs(google).p").unlink()
    rc, out, err = run(["data", "download", "refcoco", "--root", str(root)], capsys)
    assert rc == 0 and (root / "refcoco" / "refs(google).p").is_file()
    assert f"refcoco: replaced the incomplete {root / 'refcoco'}" in out


def test_a_killed_run_leaves_no_folder_that_looks_complete(patched, server, tmp_path, monkeypatch):
    root = tmp_path / "data"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the run is stopped in the middle of extracting

    monkeypatch.setattr(install, "extract_members", killed)
    with pytest.raises(KeyboardInterrupt):
        download_datasets(["refcoco"], root, DownloadOptions(sources=patched, log=lambda s: None))
    assert not (root / "refcoco").exists()
    assert [p for p in leftovers(root) if ".partial-" in p] == []
    assert (root / ".download" / "refcoco.zip").is_file()  # verified, kept: the next run does not download it
    monkeypatch.undo()
    server.requests.clear()
    download_datasets(["refcoco"], root, DownloadOptions(sources=patched, log=lambda s: None))
    assert server.requests == [] and (root / "refcoco" / MARKER).is_file()


def test_a_second_concurrent_run_is_refused(patched, server, tmp_path):
    import fcntl

    root = tmp_path / "data"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a run in progress holds it
        with pytest.raises(FetchError, match="another `detris data download` is running in"):
            download_datasets(["refcoco"], root, DownloadOptions(sources=patched))
    finally:
        os.close(fd)
    assert server.requests == []
    download_datasets(["refcoco"], root, DownloadOptions(sources=patched, log=lambda s: None))
    assert not [p for p in leftovers(root) if "lock" in p]  # the lock is on the folder: no file is left


def test_mirror_serves_every_file_by_its_table_name(server, archives, tmp_path, monkeypatch, capsys):
    sources = table("http://127.0.0.1:9", archives)  # the table's own host is unreachable
    monkeypatch.setattr(install, "SOURCES", sources)
    root = tmp_path / "data"
    rc, out, err = run(["data", "download", "refcoco+", "--root", str(root), "--mirror", server.url + "/mirror/"],
                       capsys)
    assert rc == 0, err
    assert [p for p, _ in server.requests] == ["/mirror/refcoco+.zip"]
    assert (root / "refcoco+" / "refs(unc).p").is_file()


def test_bad_arguments_are_one_line_errors(patched, tmp_path, capsys):
    rc, out, err = run(["data", "download", "refcoco", "--root", str(tmp_path), "--expect-sha256", "refcoco.zip=12"],
                       capsys)
    assert rc == 1 and "FILE=<64 hex digits>" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="no file 'nope.zip' in the table"):
        parse_expected(["nope.zip=" + "a" * 64], patched)
    with pytest.raises(SystemExit):
        main(["data", "download", "cocoa", "--root", str(tmp_path)])


def test_a_mirror_copy_of_the_hub_files_is_reported_with_its_sha256(server, tmp_path, capsys):
    from detris.data import synthetic

    lay = synthetic.write_grefcoco_layout(tmp_path / "made", splits={"train": 1, "val": 1}, seed=1)
    for p in lay.instances_path.parent.iterdir():
        server.files[f"grefcoco/{p.name}"] = p.read_bytes()
    rc, out, err = run(["data", "download", "grefcoco", "--root", str(tmp_path / "data"), "--mirror",
                        server.url + "/mirror"], capsys)
    assert rc == 0, err
    digest = _sha(server.files["grefcoco/instances.json"])
    assert (f"warning: grefcoco/instances.json has no published sha256 to check; it has {digest} (pin it with "
            f"--expect-sha256 grefcoco/instances.json={digest})") in out
    assert sorted(p for p, _ in server.requests) == ["/mirror/grefcoco/grefs(unc).json",
                                                    "/mirror/grefcoco/instances.json"]
    assert (tmp_path / "data" / "grefcoco" / "grefs(unc).json").read_bytes() == server.files["grefcoco/grefs(unc).json"]


def test_the_loaders_missing_file_error_names_the_download_command(tmp_path):
    from detris.data import load_refer

    with pytest.raises(FileNotFoundError) as err:
        load_refer(tmp_path, "refcoco+")  # what training and the Python API raise
    assert "detris data download refcoco refcoco+ refcocog --root DATA_ROOT" in str(err.value)


def test_a_training_config_takes_the_data_root_alone():
    from detris.engine.config import config_from_dict

    cfg = config_from_dict({"data": {"dataset": "refcoco", "data_root": "DATA"}})
    assert cfg.data.image_root == str(Path("DATA") / "images" / "train2014")
    cfg = config_from_dict({"data": {"dataset": "refcoco", "data_root": "DATA", "image_root": "COCO"}})
    assert cfg.data.image_root == "COCO"


def _refer_root(tmp_path: Path) -> Path:
    """The fixture in the layout the download writes: ROOT/refcoco/..., ROOT/images/train2014/."""
    fx = build_refer_fixture(tmp_path / "fx")
    shutil.move(str(fx.image_root.parent), str(fx.data_root / "images"))
    return fx.data_root


def test_check_names_a_missing_refs_file_and_image_with_the_command(tmp_path, capsys):
    root = _refer_root(tmp_path)
    rc, out, err = run(["data", "check", "--root", str(root), "--dataset", "refcoco", "--dataset", "refcoco+",
                        "--dataset", "refcocog"], capsys)
    assert rc == 0, out + err
    (root / "refcoco+" / "refs(unc).p").unlink()
    (root / "images" / "train2014" / "COCO_train2014_000000000013.jpg").unlink()
    rc, out, err = run(["data", "check", "--root", str(root), "--dataset", "refcoco", "--dataset", "refcoco+",
                        "--dataset", "refcocog"], capsys)
    print(out)
    assert rc == 1 and err == "" and "Traceback" not in out
    lines = out.splitlines()
    i = lines.index(f"  {root / 'refcoco+' / 'refs(unc).p'}: not found")
    assert lines[i + 1] == f"    fetch it: detris data download refcoco+ --root {root}"
    image = root / "images" / "train2014" / "COCO_train2014_000000000013.jpg"
    i = next(k for k, line in enumerate(lines) if line.startswith(f"  {image}: not found"))
    assert lines[i + 1] == f"    fetch it: detris data download coco-train2014 --root {root}"
    assert f"all of it: detris data download refcoco+ coco-train2014 --root {root}" in lines
    assert "3 of the 4 images refcoco, refcocog refer to are present" in out


def test_check_reports_an_unreadable_refs_file_and_image_without_a_traceback(tmp_path, capsys):
    root = _refer_root(tmp_path)
    (root / "refcocog" / "refs(umd).p").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")  # a hostile pickle
    (root / "images" / "train2014" / "COCO_train2014_000000000012.jpg").write_bytes(b"not a jpeg")
    rc, out, err = run(["data", "check", "--root", str(root), "--dataset", "refcocog", "--full"], capsys)
    assert rc == 1 and err == ""
    assert f"{root / 'refcocog' / 'refs(umd).p'}: unreadable (UnsafePickleError" in out
    assert "COCO_train2014_000000000012.jpg (ImageLoadError" in out
    assert "decoded (all)" in out
    print(out)


def test_check_survives_a_folder_it_cannot_list(tmp_path, capsys, monkeypatch):
    root = _refer_root(tmp_path)

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refused)
    rc, out, err = run(["data", "check", "--root", str(root), "--dataset", "refcoco"], capsys)
    assert rc == 1 and err == ""
    assert f"{root / 'images' / 'train2014'}: could not be checked (PermissionError: [Errno 13] Permission denied" in out


def test_eval_without_the_dataset_prints_the_download_command(tmp_path, capsys):
    from model_fixtures import save_random_tiny

    model = save_random_tiny(tmp_path / "model", 112)
    root = tmp_path / "empty"
    root.mkdir()
    rc, out, err = run(["eval", "--model", str(model), "--dataset", "refcocog_umd", "--split", "val",
                        "--data-root", str(root), "--device", "cpu"], capsys)
    assert rc == 2 and f"fetch it: detris data download refcocog --root {root}" in err
    data = _refer_root(tmp_path / "other")
    shutil.rmtree(data / "images")
    rc, out, err = run(["eval", "--model", str(model), "--dataset", "refcoco", "--split", "val",
                        "--data-root", str(data), "--device", "cpu"], capsys)
    assert rc == 2 and f"detris data download coco-train2014 --root {data}" in err


# ------------------------------------------------------------------------------- gRefCOCO (Hub)


def _hub_cache(cache: Path, files: dict[str, bytes], revision: str = "81eede59" + "0" * 32,
               corrupt: str | None = None) -> None:
    """huggingface_hub's cache of the dataset repository: ``blobs/<sha256>``, snapshot links, refs/main."""
    repo = cache / "datasets--FudanCVL--gRefCOCO"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / _sha(data)
        blob.write_bytes(data + b" " if name == corrupt else data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))


def _download_offline(root: Path, cache: Path) -> subprocess.CompletedProcess:
    # A fresh process: huggingface_hub reads its offline switch and cache location when imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "detris", "data", "download", "grefcoco", "--root", str(root)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_grefcoco_comes_from_the_hub_cache_checked_against_its_sha256(tmp_path):
    pytest.importorskip("huggingface_hub")
    from detris.data import synthetic
    from detris.data.grefer import GReferAnnotations

    lay = synthetic.write_grefcoco_layout(tmp_path / "made", splits={"train": 1, "val": 1}, seed=2)
    files = {p.name: p.read_bytes() for p in lay.instances_path.parent.iterdir()}
    assert sorted(files) == ["grefs(unc).json", "instances.json"]
    _hub_cache(tmp_path / "cache", files)
    proc = _download_offline(tmp_path / "data", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    installed = tmp_path / "data" / "grefcoco"
    assert {n: (installed / n).read_bytes() for n in files} == files
    assert json.loads((installed / MARKER).read_text())["sources"] == {
        f"grefcoco/{n}": _sha(d) for n, d in files.items()}
    assert len(GReferAnnotations(tmp_path / "data").refs) == len(json.loads(files["grefs(unc).json"]))

    # A cached file whose content is not what the Hub recorded is refused (and dropped from the cache).
    _hub_cache(tmp_path / "bad", files, corrupt="instances.json")
    proc = _download_offline(tmp_path / "data2", tmp_path / "bad")
    assert proc.returncode == 1
    assert f"grefcoco/instances.json: sha256 {_sha(files['instances.json'] + b' ')}, the Hub records " \
           f"{_sha(files['instances.json'])}" in proc.stderr
    assert not (tmp_path / "data2" / "grefcoco").exists()


def test_the_table_pins_the_published_files():
    assert {s.name: s.target for s in SOURCES.values()} == {
        "refcoco": "refcoco", "refcoco+": "refcoco+", "refcocog": "refcocog", "grefcoco": "grefcoco",
        "coco-train2014": "images/train2014"}
    coco = SOURCES["coco-train2014"].files[0]
    assert (coco.url, coco.size, coco.sha256) == (
        "http://images.cocodataset.org/zips/train2014.zip", 13_510_573_713,
        "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775")
    refcoco = SOURCES["refcoco"].files[0]
    assert refcoco.url == ("https://web.archive.org/web/20220413011718id_/"
                           "https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco.zip")
    assert (refcoco.size, refcoco.sha256) == (53_993_993,
                                              "7f924bb7ed8dc4568058e4ff626281918d56e5206f4c868c5a80f088f38c8bf0")
    assert all(f.hub_repo == "FudanCVL/gRefCOCO" for f in SOURCES["grefcoco"].files)
    assert all(s.licence for s in SOURCES.values())


def test_checksum_errors_are_value_errors():
    """The command line's catch-all for user errors (ValueError) covers every fetch error."""
    for kind in (ChecksumError, DownloadError, NotEnoughSpaceError, UnsafeArchiveError):
        assert issubclass(kind, ValueError)
    assert SourceFile("x", None, None, None, approx_size=5).planned_size == 5
