"""Small helpers every layer uses: atomic writes that keep the user's umask, output folders, devices."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["FileWriteError", "atomic_write", "atomic_write_many", "atomic_write_with_side_files", "check_output_dir",
           "free_space", "free_space_text", "resolve_device", "torch_write", "write_failure"]


class FileWriteError(OSError):
    """A file could not be written (a full disk, a lost mount).

    ``filename`` is the file that was being written, ``strerror`` the reason with the free space left
    on its file system ("No space left on device; 12 kB free"); ``str()`` gives both as one line.
    """

    def __str__(self) -> str:
        return f"could not write {self.filename} ({self.strerror})"


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``path`` (its nearest
    existing folder); None when it cannot be asked."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return st.f_bavail * st.f_frsize


def free_space_text(path: str | os.PathLike) -> str:
    """``free_space`` in words, for error messages: "12.3 kB free on its file system"."""
    free = free_space(path)
    return "free space unknown" if free is None else f"{_size(free)} free on its file system"


#: torch's zip writer (``torch.save``, ``torch.export.save``) reports a failed write as a RuntimeError
#: from ``inline_container.cc`` ("unexpected pos N vs M", "PytorchStreamWriter failed writing file").
_TORCH_WRITER = re.compile(r"inline_container\.cc|PytorchStreamWriter failed|unexpected pos \d+")
#: safetensors and other Rust writers end an I/O error with "(os error N)".
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
#: Below this much free space after a failed torch write, the failure is taken to be a full disk.
_NEARLY_FULL = 1 << 20


def _write_failure(err: BaseException, path: Path, tmp: str) -> FileWriteError | None:
    """The `FileWriteError` a writer's failure on ``tmp`` (staged for ``path``) means, or None when it is
    not an I/O failure (a bug in the writer, an interrupt: those propagate unchanged).

    Measured while the partial temporary still exists, so that "0 B free" shows the disk filled up.
    """
    code: int | None = None
    if isinstance(err, OSError) and err.errno is not None:
        code = err.errno
    elif type(err).__name__ == "SafetensorError" and (found := _OS_ERROR_CODE.search(str(err))):
        code = int(found.group(1))
    elif isinstance(err, RuntimeError) and _TORCH_WRITER.search(str(err)):
        free_now = free_space(tmp)
        code = errno.ENOSPC if free_now is not None and free_now < _NEARLY_FULL else errno.EIO
    if code is None:
        return None
    written = os.path.getsize(tmp) if tmp and os.path.exists(tmp) else 0
    reason = os.strerror(code) if code != errno.EIO or isinstance(err, OSError) else \
        f"{os.strerror(code)}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
    where = free_space_text(tmp or path)  # measured with the partial file still there: what was left
    detail = f"{reason} after {_size(written)} of it; {where}" if written else f"{reason}; {where}"
    return FileWriteError(code, detail, str(path))


def write_failure(path: str | os.PathLike, err: BaseException | None = None) -> FileWriteError:
    """The `FileWriteError` for a failed write of ``path`` done without `atomic_write`: ``err`` is what
    the writer raised, or None for a writer that only returns False (``cv2.imwrite``); the free space
    then tells a full disk from another I/O error."""
    if err is not None:
        found = _write_failure(err, Path(path), "")
        if found is not None:
            return found
    free = free_space(path)
    code = errno.ENOSPC if free is not None and free < _NEARLY_FULL else errno.EIO
    return FileWriteError(code, f"{os.strerror(code)}; {free_space_text(path)}", str(path))


def _umask() -> int:
    # os.umask both sets and returns; set it back at once (no thread reads it in between here).
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _GuardedFile(io.RawIOBase):
    """A file for torch's zip writer: keeps the system's error of the first failed write and ignores
    every write after it.

    Given a file name, the writer reports a full disk only as "unexpected pos N vs M"; and a writer left
    unfinished by an error tries again to write the end of the archive when it is garbage-collected,
    which on a still-full disk throws inside a C++ destructor and aborts the whole process.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.failed: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.raw.seekable()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.failed is not None:
            return len(view)  # swallowed: the file is abandoned
        done = 0
        try:
            while done < len(view):
                n = self.raw.write(view[done:])
                if not n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError as err:
            self.failed = err
            raise
        return done


def torch_write(save: Callable[[IO[bytes]], object], path: str | os.PathLike) -> None:
    """Run a torch archive writer (``lambda f: torch.save(obj, f)``, ``torch.export.save``) on ``path``
    so that a failed write raises the system's `OSError` (``ENOSPC`` on a full disk) and never aborts
    the process later (see `_GuardedFile`)."""
    with open(path, "wb", buffering=0) as raw:
        guarded = _GuardedFile(raw)
        try:
            save(guarded)  # type: ignore[arg-type]
        except RuntimeError as err:
            if guarded.failed is None:
                raise
            raise guarded.failed from err


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
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            except OSError as err:  # no room for the folder or the file's entry
                raise (_write_failure(err, path, "") or err) from err
            os.close(fd)
            temps.append((tmp, path))
            _call_writer(write, tmp, path)
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


def _call_writer(write: Callable[[str], object], tmp: str, path: Path) -> None:
    """``write(tmp)``, with an I/O failure (whatever type the writer raises for it) as `FileWriteError`."""
    try:
        write(tmp)
    except FileWriteError:
        raise
    except Exception as err:
        failure = _write_failure(err, path, tmp)
        if failure is None:
            raise
        raise failure from err


def atomic_write_with_side_files(out: Path, write: Callable[[Path], None]) -> None:
    """`atomic_write` for writers that may add side files beside ``out`` (an ONNX weight file): write
    through a private folder beside ``out``, then rename everything into place.

    ``write`` gets the staged path (same file name as ``out``, so that an ONNX side file it references
    keeps its name). Side files move first: a reader never sees a new ``out`` pointing at missing data.
    A failed export leaves an existing ``out`` untouched and no partial file.
    """
    try:
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as err:
        raise (_write_failure(err, out, "") or err) from err
    try:
        staged = staging / out.name
        _call_writer(lambda p: write(Path(p)), str(staged), out)
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
