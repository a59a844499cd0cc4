"""Small helpers every layer uses: atomic writes that keep the user's umask, output folders, devices."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

__all__ = ["atomic_write", "atomic_write_many", "atomic_write_with_side_files", "check_output_dir", "resolve_device"]


def _umask() -> int:
    # os.umask both sets and returns; set it back at once (no thread reads it in between here).
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], object], keep_previous: str | os.PathLike | None = None
) -> Path:
    """Write ``path`` by calling ``write(tmp)`` on a temporary file beside it, then renaming it over.

    A reader never sees a half-written file and a failure (a full disk, an interrupt) leaves the
    previous file untouched. The file gets the permissions a plain ``open(path, "w")`` would give
    (``0o666`` less the umask): ``mkstemp``'s private ``0o600`` would hide models and checkpoints
    from colleagues on a shared machine.

    ``keep_previous``: once the new file is completely written, the file it replaces is moved there
    (a checkpoint's last good predecessor, kept in case the new one is later found damaged).
    """
    atomic_write_many({path: write}, keep_previous={path: keep_previous} if keep_previous else None)
    return Path(path)


def atomic_write_many(
    writers: Mapping[str | os.PathLike, Callable[[str], object]],
    keep_previous: Mapping[str | os.PathLike, str | os.PathLike] | None = None,
) -> None:
    """`atomic_write` for files that belong together (weights and their config.json): every file is
    written to its temporary first, and only when all are complete are they renamed into place, so a
    failure (``ENOSPC`` half-way through the second file) leaves the previous set intact and matching.
    """
    keep = {Path(k): Path(v) for k, v in (keep_previous or {}).items()}
    temps: list[tuple[str, Path]] = []
    try:
        for path, write in ((Path(p), w) for p, w in writers.items()):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            temps.append((tmp, path))
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
        for tmp, path in temps:
            if path in keep and path.exists():
                os.replace(path, keep[path])
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def atomic_write_with_side_files(out: Path, write: Callable[[Path], None]) -> None:
    """`atomic_write` for writers that may add side files beside ``out`` (an ONNX weight file): write
    through a private folder beside ``out``, then rename everything into place.

    ``write`` gets the staged path (same file name as ``out``, so that an ONNX side file it references
    keeps its name). Side files move first: a reader never sees a new ``out`` pointing at missing data.
    A failed export leaves an existing ``out`` untouched and no partial file.
    """
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        staged = staging / out.name
        write(staged)
        for extra in sorted(p for p in staging.iterdir() if p != staged):
            os.replace(extra, out.parent / extra.name)
        os.replace(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_output_dir(directory: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``directory`` and prove it writable before any work; raises ValueError naming it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{what} {directory} is not writable ({err.strerror or err})") from err
    return directory


def resolve_device(device: None | str | torch.device) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``; a CUDA device that is not there is an error.

    Raises:
        ValueError: the string is not a device name, or names a CUDA device this machine lacks.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r} (use cpu, cuda or cuda:N): {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev
