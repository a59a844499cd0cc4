"""Service: the file names of released checkpoints the registry could not confirm (``large/``, ``mix/``),
read off the Hub repository's file listing.

The listing (``HfApi.list_repo_files``) is cached for a day in ``$DETRIS_HOME/hub-listing/``; offline,
the last cached listing or the files huggingface_hub's cache holds for the repository are used. A
registry entry resolves only when exactly one ``.pth`` of its variant's folder matches its dataset;
otherwise it stays "not confirmed" and loading says so.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse
from pathlib import Path, PurePosixPath

from .registry import PretrainedEntry
from .utils import atomic_write

__all__ = ["LISTING_MAX_AGE_S", "hub_listing", "match_released_file", "resolve_released_file"]

LISTING_MAX_AGE_S = 24 * 3600
#: The Hub folder of each variant's released checkpoints (the official README's layout).
FOLDERS = {"detris-b": "base", "detris-l": "large", "detris-l-mixed": "mix"}
#: How a file name's stem ends for each registry dataset, after ``_`` or ``-`` (base/ holds
#: base_refcoco.pth, base_refcoco+.pth, base_refcocog_u.pth, base_refcocog_g.pth).
_DATASET_ENDINGS = {
    "refcoco": r"refcoco",
    "refcoco+": r"refcoco\+|refcocop(lus)?",
    "refcocog_umd": r"refcocog_?u(md)?",
    "refcocog_google": r"refcocog_?g(oogle)?",
}


def _cache_file(cache_dir: Path, repo: str) -> Path:
    return cache_dir / "hub-listing" / (repo.replace("/", "--") + ".json")


def _read_cache(path: Path, max_age: float | None) -> list[str] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files, stamp = [str(f) for f in record["files"]], float(record["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if max_age is None or time.time() - stamp <= max_age else None


def _cached_snapshot(repo: str) -> list[str]:
    """The files huggingface_hub's cache holds for the repository's ``main`` (offline fallback)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return []
    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    try:
        snapshot = folder / "snapshots" / (folder / "refs" / "main").read_text().strip()
    except OSError:
        return []
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _reachable(endpoint: str | None) -> bool:
    """False when the Hub cannot be asked: offline mode, or its host name does not resolve (an offline
    machine then answers at once instead of after huggingface_hub's retries)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    if constants.HF_HUB_OFFLINE:
        return False
    host = urllib.parse.urlparse(endpoint or constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True


def hub_listing(repo: str, cache_dir: Path, endpoint: str | None = None) -> list[str]:
    """The files of Hub model repository ``repo`` (cached for a day; offline: the last listing, else the
    files huggingface_hub has cached); an empty list when nothing is known."""
    cache = _cache_file(cache_dir, repo)
    fresh = _read_cache(cache, LISTING_MAX_AGE_S)
    if fresh is not None:
        return fresh
    if not _reachable(endpoint):
        return _read_cache(cache, None) or _cached_snapshot(repo)
    try:
        from huggingface_hub import HfApi

        files = sorted(HfApi(endpoint=endpoint).list_repo_files(repo))
    except Exception:  # no network after all, an unknown repo: fall back to what is known
        return _read_cache(cache, None) or _cached_snapshot(repo)
    record = json.dumps({"repo": repo, "time": time.time(), "files": files}, indent=1)
    atomic_write(cache, lambda tmp: Path(tmp).write_text(record + "\n", encoding="utf-8"))
    return files


def match_released_file(entry: PretrainedEntry, files: list[str]) -> str | None:
    """The one ``.pth`` of ``files`` in the entry's variant folder that names its dataset, or None."""
    folder = FOLDERS.get(entry.variant)
    if folder is None:
        return None
    candidates = [f for f in files if PurePosixPath(f).parent == PurePosixPath(folder) and f.endswith(".pth")]
    if entry.dataset in _DATASET_ENDINGS:
        ending = re.compile(rf"(^|[_-])({_DATASET_ENDINGS[entry.dataset]})$", re.IGNORECASE)
        candidates = [f for f in candidates if ending.search(PurePosixPath(f).stem)]
    return candidates[0] if len(candidates) == 1 else None


def resolve_released_file(entry: PretrainedEntry, cache_dir: Path, endpoint: str | None = None) -> str | None:
    """The path in the Hub repository of a registry entry whose file name is not confirmed, from the
    repository's listing; None when the listing is unknown or does not name exactly one file."""
    if entry.hub_file is not None or entry.hub_repo is None:
        return entry.hub_file
    return match_released_file(entry, hub_listing(entry.hub_repo, cache_dir, endpoint))
