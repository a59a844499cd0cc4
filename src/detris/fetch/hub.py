"""Files of a Hugging Face dataset repository (gRefCOCO), through huggingface_hub and its cache.

huggingface_hub stores a file of an LFS repository as ``blobs/<sha256>`` and links the snapshot's file
to it, the sha256 being the one the Hub records for the file. The file fetched is hashed and checked
against that record (and against a pinned or ``--expect-sha256`` hash when there is one).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ChecksumError, DownloadError, FetchError
from .http import sha256_of
from .sources import SourceFile

__all__ = ["fetch_hub_file"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _download(file: SourceFile, revision: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FetchError(f"{file.name} comes from the Hugging Face Hub repository {file.hub_repo}, which needs "
                         "huggingface_hub: pip install huggingface_hub (or fetch it from a mirror with --mirror)"
                         ) from None
    try:
        return Path(hf_hub_download(str(file.hub_repo), str(file.hub_file), repo_type="dataset", revision=revision))
    except Exception as exc:  # offline, unknown file, network, authentication: one message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DownloadError(f"could not get {file.hub_file} from the Hub dataset repository {file.hub_repo} "
                            f"({type(exc).__name__}: {first}); check the network (or HF_HUB_OFFLINE), or "
                            "use --mirror") from None


def fetch_hub_file(file: SourceFile, revision: str, expected_sha256: str | None) -> tuple[Path, str]:
    """Download (or find in the cache) one Hub file; returns its path and its checked sha256.

    A file whose content does not match the sha256 the Hub records (its blob name) or ``expected_sha256``
    is removed from the cache and refused with `ChecksumError`.
    """
    path = _download(file, revision)
    blob = path.resolve()
    actual = sha256_of(blob, file.name)
    recorded = blob.name if _SHA256.fullmatch(blob.name) else None
    for what, wanted in (("the Hub records", recorded), ("expected", expected_sha256)):
        if wanted is not None and actual != wanted.lower():
            blob.unlink(missing_ok=True)
            if path.is_symlink():
                path.unlink()
            raise ChecksumError(f"{file.name}: sha256 {actual}, {what} {wanted.lower()}; the cached copy was "
                                "deleted and nothing was installed; run the same command again to download it "
                                "anew")
    return blob, actual
