"""The errors of fetching datasets: each message is one line naming the file, the problem and the fix."""

from __future__ import annotations

__all__ = ["ChecksumError", "DownloadError", "FetchError", "NotEnoughSpaceError", "UnsafeArchiveError"]


class FetchError(ValueError):
    """A dataset could not be fetched or installed; the message says which file and what to do."""


class DownloadError(FetchError):
    """The transfer failed (network, server, a wrong URL); a partial ``.part`` file is kept for resuming."""


class ChecksumError(FetchError):
    """A downloaded file is not the one expected (size or sha256); it was deleted, nothing was extracted."""


class NotEnoughSpaceError(FetchError):
    """The disk cannot hold what would be downloaded or extracted; refused before writing it."""


class UnsafeArchiveError(FetchError):
    """An archive member would land outside its folder (absolute path, ``..``, a link) or is not a file."""
