"""Reading pickles without running their code: the REFER ``refs(*).p`` files.

Unpickling runs code chosen by whoever wrote the file, so these files are read with `SafeUnpickler`,
which admits only the plain containers and scalars that REFER uses and refuses every class or function
reference. The official files were written by Python 2 (protocol 2); Python 2 byte strings are decoded
as UTF-8 (falling back to Latin-1), so keys and values come back as ``str`` whichever way they were
stored.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

__all__ = ["SafeUnpickler", "UnsafePickleError", "safe_load_pickle"]

PathLike = str | os.PathLike


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a class or function; REFER files never do, so the file is refused unread.

    Also a ``ValueError``, like every other "this file is not what it should be" error of detris, so that
    one ``except ValueError`` (the command line's) reports it as a user error.
    """


class SafeUnpickler(pickle._Unpickler):
    """An unpickler for data-only pickles: dicts, lists, tuples, str/bytes, int, float, bool, None.

    Every global lookup (``find_class``) and persistent id is refused, which is what stops a
    crafted pickle from calling ``os.system`` & co. through ``__reduce__``: building any object
    other than the built-in containers needs a global, and none is handed out.

    It is the pure-Python unpickler (about twice as slow as the C one: ~3 s for a 20 MB refs file)
    because the C unpickler sizes its memo table by the largest index a file names: a 1 kB file
    saying ``LONG_BINPUT 846096737`` makes it allocate and clear ~13 GB. This one keeps the memo in a
    dict, so memory stays proportional to the file.
    """

    def find_class(self, module: str, name: str) -> Any:  # the pickle API
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: this pickle references a class or function, but a "
            f"REFER refs file holds only lists, dicts, strings and numbers. The file is not a genuine "
            f"REFER annotation file (or is damaged); re-download it from the REFER release."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load a persistent id: not a plain-data pickle")


def _decode_py2_text(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """Recursively turn Python 2 byte strings (read with encoding='bytes') into str.

    Containers the pickle shares (its memo lets one list appear in a thousand places) are converted
    once and shared again: converting each appearance would turn a few kB of nested references into
    an exponential number of copies.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if not isinstance(value, (dict, list, tuple)):
        return value
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, tuple):
        out: Any = tuple(_decode_py2_text(v, memo) for v in value)
        memo[id(value)] = out
    elif isinstance(value, list):
        out = memo[id(value)] = []  # registered first: a list may contain itself
        out.extend(_decode_py2_text(v, memo) for v in value)
    else:
        out = memo[id(value)] = {}
        for k, v in value.items():
            out[_decode_py2_text(k, memo)] = _decode_py2_text(v, memo)
    return out


def safe_load_pickle(path: PathLike) -> Any:
    """Load a data-only pickle with `SafeUnpickler` and return its content with text as ``str``.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: the pickle references a class/function (e.g. a ``__reduce__`` payload).
        ValueError: the file is not a readable pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    data = path.read_bytes()
    try:
        # encoding='bytes' keeps Python 2 str as bytes instead of guessing Latin-1, so UTF-8 text in
        # the file survives; _decode_py2_text then makes everything str.
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except Exception as exc:  # any decoding failure means "not a usable pickle"
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    try:
        return _decode_py2_text(obj)
    except RecursionError:
        # A pickle can build a list nested thousands deep (or one that contains itself).
        raise ValueError(f"{path}: the pickle nests containers too deeply (or in a cycle) for a REFER file") from None
