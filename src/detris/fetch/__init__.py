"""Service: getting the benchmarks (`detris data download`) and checking them (`detris data check`).

``sources`` is the table of where each file comes from; ``http`` resumable downloads; ``archive`` safe
extraction; ``hub`` files of a Hugging Face dataset repository; ``install`` the whole download;
``check`` what is on disk, read through `detris.data`'s loaders. Names are loaded on first use, so that
reading the table does not import the data loaders.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ALL": "sources", "DATASET_NAMES": "sources", "SOURCES": "sources", "DatasetSource": "sources",
    "SourceFile": "sources", "download_command": "sources",
    "ChecksumError": "errors", "DownloadError": "errors", "FetchError": "errors",
    "NotEnoughSpaceError": "errors", "UnsafeArchiveError": "errors",
    "DownloadOptions": "install", "download_datasets": "install", "parse_expected": "install",
    "CheckReport": "check", "check_datasets": "check",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
