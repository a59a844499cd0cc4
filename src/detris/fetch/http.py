"""Resumable HTTP downloads: through ``<file>.part``, continued with a ``Range`` request after a dropped
connection (in the same run, a few times, and in the next run), size and sha256 checked before the file
takes its final name."""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import ChecksumError, DownloadError

__all__ = ["fetch_url", "sha256_of", "verify_file"]

_CHUNK = 1 << 20
#: Errors after which the same request may succeed: the connection dropped, timed out, was refused. (A
#: full disk is an OSError too, but not one of these: it stops the download with its own message.)
_TRANSIENT = (http.client.HTTPException, ConnectionError, TimeoutError, urllib.error.URLError, ssl.SSLError)


class _Retry(Exception):
    """One attempt ended early; the next one resumes from what ``.part`` holds."""


def sha256_of(path: Path, label: str | None = None) -> str:
    """sha256 of a file, with a progress bar for big ones."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"verify {label or path.name}",
                                     disable=None if size > 64 * _CHUNK else True, leave=False) as bar:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_file(path: Path, name: str, size: int | None, sha256: str | None, fix: str) -> str:
    """Check a downloaded file's size and sha256; a mismatch deletes it and raises `ChecksumError`.

    ``fix`` says what happens next and what the user should do (it ends the message). Returns the
    file's sha256.
    """
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink()
        raise ChecksumError(f"{name}: got {actual_size} bytes, expected {size}; the file was deleted; {fix}")
    actual = sha256_of(path, name)
    if sha256 is not None and actual != sha256.lower():
        path.unlink()
        raise ChecksumError(f"{name}: sha256 {actual}, expected {sha256.lower()}; the file was deleted; {fix}")
    return actual


def _open(url: str, done: int, timeout: float) -> http.client.HTTPResponse | None:
    """The response to a GET of ``url`` from byte ``done``; None when ``.part`` already holds it all."""
    headers = {"User-Agent": "detris", "Accept-Encoding": "identity"}
    if done:
        headers["Range"] = f"bytes={done}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # nothing past ``done``: the partial file is complete
            return None
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}; check the URL (or --mirror)") from None


def _attempt(url: str, part: Path, size: int | None, timeout: float, label: str) -> None:
    """One GET, appended to ``part`` when the server honours the range; `_Retry` when cut short."""
    from tqdm.auto import tqdm

    done = part.stat().st_size if part.is_file() else 0
    if size is not None and done > size:
        part.unlink()
        done = 0
    if size is not None and done == size:
        return
    response = _open(url, done, timeout)
    if response is None:
        return
    with response:
        resumed = done > 0 and response.status == 206
        content_range = response.headers.get("Content-Range")
        if resumed and content_range is not None and not content_range.startswith(f"bytes {done}-"):
            raise DownloadError(f"{url} answered the range request from byte {done} with "
                                f"{content_range!r}; delete {part} and try again")
        start = done if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else size
        if size is not None and total is not None and total != size:
            raise ChecksumError(f"{label}: {url} serves {total} bytes, expected {size}; not downloaded (a "
                                f"different file, or a mirror's repacked copy: then pass --expect-sha256 "
                                f"{label}=<its sha256>)")
        with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=f"download {label}", disable=None,
        ) as bar:
            while True:
                try:
                    block = response.read(_CHUNK)
                except _TRANSIENT as exc:
                    raise _Retry(f"connection lost ({type(exc).__name__}: {exc})") from None
                if not block:
                    break
                f.write(block)  # a full disk raises here, and is not retried
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Retry(f"connection closed after {got} of {total} bytes")


def fetch_url(url: str, dest: Path, size: int | None = None, label: str | None = None, attempts: int = 5,
              timeout: float = 60.0, retry_wait: float = 2.0, log: Callable[[str], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what an earlier attempt left there.

    A dropped connection is resumed with a ``Range`` request, up to ``attempts`` tries in all (waiting
    ``retry_wait`` seconds, doubling); a server that ignores ranges restarts the file. ``size``, when
    known, is checked against the server's length before anything is written. The caller checks the
    sha256 (`verify_file`) of the returned file. Raises `DownloadError` (the ``.part`` is kept).
    ``log`` is told of each retry.
    """
    label = label or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last = ""
    for attempt in range(attempts):
        try:
            _attempt(url, part, size, timeout, label)
            os.replace(part, dest)
            return dest
        except _Retry as exc:
            last = str(exc)
        except _TRANSIENT as exc:  # could not connect, or the connection failed before any byte
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt + 1 < attempts:
            wait = retry_wait * 2**attempt
            have = part.stat().st_size if part.is_file() else 0
            if log is not None:
                log(f"{label}: {last}; resuming from byte {have} in {wait:.0f} s (attempt {attempt + 2} of {attempts})")
            time.sleep(wait)
    raise DownloadError(f"could not download {label} from {url} after {attempts} attempts ({last}); the partial "
                        f"file {part} is kept: run the same command again to resume")
