"""``detris data download``: fetch, verify and install datasets into the layout detris reads.

Per dataset: the files are downloaded into ``ROOT/.download/`` (resumable ``.part`` files), checked by
size and sha256, extracted (or copied) into a hidden folder beside the target, which is renamed into
place only when complete; a record of what was installed (``.detris-download.json``) goes in with it.
A killed run leaves a hidden folder that the next run removes, never a half folder under the real name.
A dataset whose record matches the files on disk is left alone, so a second run does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .archive import extract_members, plan_extraction
from .errors import FetchError, NotEnoughSpaceError
from .http import fetch_url, verify_file
from .hub import fetch_hub_file
from .sources import GREFCOCO_REVISION, SOURCES, DatasetSource, SourceFile, resolve_names

__all__ = ["MARKER", "DownloadOptions", "download_datasets", "free_bytes", "installed_files", "parse_expected"]

#: The record of an installed dataset, inside its folder.
MARKER = ".detris-download.json"
DOWNLOADS = ".download"
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass
class DownloadOptions:
    """How `download_datasets` fetches: a mirror, replacement hashes, the table, the free-space probe."""

    mirror: str | None = None
    expected: dict[str, str] = field(default_factory=dict)  # file name -> sha256 (--expect-sha256)
    sources: dict[str, DatasetSource] = field(default_factory=lambda: dict(SOURCES))
    free_space: Callable[[Path], int] = field(default=lambda path: free_bytes(path))  # looked up at call time
    keep_archives: bool = False
    attempts: int = 5
    retry_wait: float = 2.0
    hub_revision: str = GREFCOCO_REVISION
    log: Callable[[str], None] = print


def parse_expected(values: Sequence[str], sources: dict[str, DatasetSource] | None = None) -> dict[str, str]:
    """``FILE=HEX`` arguments -> ``{file: sha256}``; FILE must be a file name of the table."""
    known = [f.name for s in (SOURCES if sources is None else sources).values() for f in s.files]
    out: dict[str, str] = {}
    for value in values:
        name, sep, digest = value.partition("=")
        if not sep or not _HEX.fullmatch(digest.strip()):
            raise ValueError(f"--expect-sha256 {value!r}: expected FILE=<64 hex digits>, e.g. refcoco.zip=7f92...")
        if name not in known:
            raise ValueError(f"--expect-sha256 {value!r}: no file {name!r} in the table; files: {', '.join(known)}")
        out[name] = digest.strip().lower()
    return out


def installed_files(target: Path) -> dict[str, int] | None:
    """The files the record in ``target`` lists, when every one is there at its recorded size; else None."""
    try:
        record = json.loads((target / MARKER).read_text(encoding="utf-8"))
        files = {str(k): int(v) for k, v in record["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for rel, size in files.items():
        try:
            if (target / rel).stat().st_size != size:
                return None
        except OSError:
            return None
    return files


def _state(root: Path, src: DatasetSource) -> str | None:
    """Why ``src`` needs no download (a message), or None when it must be fetched."""
    target = root / src.target
    files = installed_files(target)
    if files is not None:
        return f"{src.name}: already installed in {target} ({len(files)} files present at their recorded sizes)"
    if (target / MARKER).exists() or not target.is_dir():
        return None
    required_ok = all((target / r).is_file() for r in src.required) if src.required else any(target.iterdir())
    if required_ok:
        return (f"{src.name}: {target} is already there (not installed by this command, so not verified "
                f"against the archive; `detris data check` reads it); left as it is")
    return None


def _url(file: SourceFile, mirror: str | None) -> str | None:
    if mirror:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(file.name, safe="/()+")
    return file.url


def _check_free_space(root: Path, todo: list[DatasetSource], opts: DownloadOptions) -> None:
    """Refuse before any download when the archives plus what they become do not fit in ``root``."""
    download = extracted = 0
    for src in todo:
        for f in src.files:
            have = 0
            for p in (root / DOWNLOADS / f.name, root / DOWNLOADS / (f.name + ".part")):
                have = max(have, p.stat().st_size if p.is_file() else 0)
            download += max(f.planned_size - have, 0)
        extracted += src.extracted_size if src.member_prefix else sum(f.planned_size for f in src.files)
    free = opts.free_space(root)
    if download + extracted > free:
        names = ", ".join(s.name for s in todo)
        raise NotEnoughSpaceError(
            f"not enough free space in {root} for {names}: about {_size(download + extracted)} needed "
            f"({_size(download)} to download + {_size(extracted)} extracted), {_size(free)} free; nothing was "
            "downloaded; free some space or choose another --root"
        )


def _size(n: int) -> str:
    """Bytes for a person: ``53.99 MB``."""
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"


def _fetch(root: Path, src: DatasetSource, file: SourceFile, opts: DownloadOptions) -> tuple[Path, str]:
    """One file of ``src``, downloaded (or found complete) and verified: its path and sha256."""
    expected = opts.expected.get(file.name, file.sha256)
    url = _url(file, opts.mirror)
    if url is None:
        return fetch_hub_file(file, opts.hub_revision, expected)
    size = None if file.name in opts.expected else file.size
    dest = root / DOWNLOADS / file.name
    if not dest.is_file():
        fetch_url(url, dest, size=size, label=file.name, attempts=opts.attempts, retry_wait=opts.retry_wait,
                  log=opts.log)
    fix = (f"nothing was extracted; run the same command again to download it anew; only if you trust a mirror "
           f"that repacked it, pass --expect-sha256 {file.name}=<the sha256 the mirror publishes>")
    digest = verify_file(dest, file.name, size, expected, fix)
    if expected is None:
        opts.log(f"warning: {file.name} has no published sha256 to check; it has {digest} (pin it with "
                 f"--expect-sha256 {file.name}={digest})")
    return dest, digest


def _fill(staging: Path, src: DatasetSource, fetched: list[tuple[SourceFile, Path, str]],
          opts: DownloadOptions) -> dict[str, int]:
    """Extract (or copy) the fetched files of ``src`` into ``staging``; returns ``{relative path: size}``."""
    written: dict[str, int] = {}
    for file, path, _ in fetched:
        if src.member_prefix is not None:
            members, skipped = plan_extraction(path, file.name, src.member_prefix)
            if not members:
                raise FetchError(f"{file.name}: no file under {src.member_prefix} in the archive; it is not the "
                                 "published file: delete it and download it again")
            written.update(extract_members(path, file.name, members, staging, opts.free_space))
            if skipped:
                opts.log(f"{file.name}: {skipped} member(s) outside {src.member_prefix} left out")
        else:
            rel = file.hub_file or Path(file.name).name
            shutil.copyfile(path, staging / rel)
            written[rel] = (staging / rel).stat().st_size
    return written


def _install(root: Path, src: DatasetSource, fetched: list[tuple[SourceFile, Path, str]],
             opts: DownloadOptions) -> int:
    """Build the dataset in a hidden sibling folder, then rename it into place; returns its file count.

    A refused archive (`FetchError`: unsafe, damaged, too big for the disk) is deleted as well."""
    try:
        return _swap_in(root, src, fetched, opts)
    except FetchError:
        _drop_refused(root, src)
        raise


def _swap_in(root: Path, src: DatasetSource, fetched: list[tuple[SourceFile, Path, str]],
             opts: DownloadOptions) -> int:
    target = root / src.target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # a plain mkdir: the folder gets the user's umask, as the files in it
    old: Path | None = None
    try:
        written = _fill(staging, src, fetched, opts)
        record = {"dataset": src.name, "sources": {f.name: digest for f, _, digest in fetched}, "files": written}
        (staging / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        opts.log(f"{src.name}: replaced the incomplete {target}")
    return len(written)


def _remove_leftovers(root: Path, src: DatasetSource) -> None:
    """Hidden folders a killed run left beside the target (never the target itself)."""
    target = root / src.target
    if target.parent.is_dir():
        for p in target.parent.glob(f".{target.name}.partial-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in target.parent.glob(f".{target.name}.old-*"):
            shutil.rmtree(p, ignore_errors=True)


def _drop_refused(root: Path, src: DatasetSource) -> None:
    """A refused archive is deleted: nothing of it is left behind."""
    for f in src.files:
        (root / DOWNLOADS / f.name).unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """One download per root at a time (a lock on the folder itself, so nothing is left behind): a second
    concurrent run would take the first one's hidden folders for leftovers of a killed run."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"another `detris data download` is running in {root}; let it finish (or stop it), "
                             "then run this command again") from None
        yield
    finally:
        os.close(fd)


def download_datasets(names: Sequence[str], root: str | os.PathLike, options: DownloadOptions | None = None
                      ) -> dict[str, str]:
    """Fetch ``names`` (``refcoco``, ``refcoco+``, ``refcocog``, ``grefcoco``, ``coco-train2014``, ``all``)
    into ``root``; returns ``{name: "installed" | "present"}``.

    Raises `FetchError` (a one-line message naming the file, the problem and the fix): a checksum
    mismatch, an unsafe archive, not enough free space (checked before downloading), a failed transfer.
    """
    opts = options or DownloadOptions()
    root = Path(root).expanduser()
    wanted = resolve_names(list(names), opts.sources)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create --root {root} ({exc.strerror or exc}); choose a writable folder") from None
    with _exclusive(root):
        return _download_locked(wanted, root, opts)


def _download_locked(wanted: list[str], root: Path, opts: DownloadOptions) -> dict[str, str]:
    result: dict[str, str] = {}
    todo: list[DatasetSource] = []
    for name in wanted:
        src = opts.sources[name]
        _remove_leftovers(root, src)
        message = _state(root, src)
        if message is None:
            todo.append(src)
        else:
            opts.log(message)
            result[name] = "present"
    if not todo:
        opts.log("nothing to do")
        return result
    _check_free_space(root, todo, opts)
    try:
        for src in todo:
            count = _install(root, src, [(f, *_fetch(root, src, f, opts)) for f in src.files], opts)
            if not opts.keep_archives:
                _drop_refused(root, src)
            opts.log(f"{src.name}: installed {root / src.target} ({count} files)")
            result[src.name] = "installed"
    finally:
        downloads = root / DOWNLOADS
        if downloads.is_dir() and not any(p.is_file() for p in downloads.rglob("*")):
            shutil.rmtree(downloads, ignore_errors=True)
    return result
