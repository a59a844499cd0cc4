"""Extracting a downloaded zip as untrusted input, even when its sha256 matched (a mirror may be trusted
with ``--expect-sha256``): every member is checked before the first byte is written, and only the
members under the dataset's folder in the zip are written, into a folder the caller then renames."""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import NotEnoughSpaceError, UnsafeArchiveError

__all__ = ["Member", "extract_members", "plan_extraction"]

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Member:
    """A file of the archive to write: its name in the zip, its path under the target, declared size."""

    name: str
    relative: str
    size: int
    index: int  # position in the zip's directory (names may repeat)


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member may not be extracted, or None when it is a plain file or folder inside the archive."""
    name = info.filename
    if not name or "\x00" in name:
        return "has an empty name or a NUL character"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "climbs out of the folder with '..'"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    kind = stat.S_IFMT(mode)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "is not a regular file or folder"
    return None


def plan_extraction(archive: Path, label: str, prefix: str) -> tuple[list[Member], int]:
    """Check every member of ``archive``; return the files under ``prefix`` and how many were left out.

    Raises `UnsafeArchiveError` naming the first member with an absolute path, a ``..`` part, a link or
    another special type; the archive as a whole is refused.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"{label}: not a readable zip archive ({exc}); nothing was extracted; delete "
                                 f"{archive} and download it again") from None
    members: list[Member] = []
    skipped = 0
    for index, info in enumerate(infos):
        reason = _unsafe_reason(info)
        if reason is not None:
            raise UnsafeArchiveError(f"{label}: member {info.filename!r} {reason}; the archive was refused and "
                                     f"nothing was extracted; it is not the published file: download it from "
                                     f"the official source")
        if info.is_dir():
            continue
        if not info.filename.startswith(prefix) or info.filename == prefix:
            skipped += 1
            continue
        relative = str(PurePosixPath(info.filename[len(prefix):]))
        members.append(Member(info.filename, relative, int(info.file_size), index))
    return members, skipped


def _check_space(members: list[Member], label: str, folder: Path, free: int) -> None:
    """Refuse before writing when the declared sizes add up to more than ``free``, naming the member."""
    total = 0
    for m in members:
        total += m.size
        if total > free:
            raise NotEnoughSpaceError(
                f"{label}: member {m.name!r} declares {m.size} bytes, bringing the extracted size to {total} "
                f"bytes, more than the {free} bytes free in {folder}; nothing was extracted; free some space "
                f"or choose another --root"
            )


def extract_members(archive: Path, label: str, members: list[Member], staging: Path,
                    free_space: Callable[[Path], int]) -> dict[str, int]:
    """Write ``members`` of ``archive`` under ``staging`` (created by the caller; emptied by it on failure).

    The declared sizes are checked against the free space first. A member never produces more bytes
    than it declares (zipfile stops there and checks the CRC). Returns ``{relative path: size}``.
    """
    from tqdm.auto import tqdm

    _check_space(members, label, staging.parent, free_space(staging.parent))
    root = staging.resolve()
    written: dict[str, int] = {}
    with zipfile.ZipFile(archive) as zf, tqdm(total=sum(m.size for m in members), unit="B", unit_scale=True,
                                              desc=f"extract {label}", disable=None) as bar:
        infos = zf.infolist()
        for m in members:
            out = (staging / m.relative).resolve()
            if not out.is_relative_to(root):  # the name checks above make this unreachable; kept as a guard
                raise UnsafeArchiveError(f"{label}: member {m.name!r} would land outside {staging}")
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(infos[m.index]) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, EOFError, ValueError) as exc:  # a CRC error or truncated data
                raise UnsafeArchiveError(f"{label}: member {m.name!r} is damaged ({exc}); nothing was "
                                         f"extracted; download the archive again") from None
            written[m.relative] = out.stat().st_size
            bar.update(m.size)
    return written
