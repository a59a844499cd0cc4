"""Segment a whole collection: a JSONL manifest of images and their expressions -> ``predictions.jsonl``.

``detris predict --input MANIFEST.jsonl --out DIR`` and `segment_collection`. What happens:

* the manifest is read once (`read_manifest`): one ``{"image": ..., "expressions": [...]}`` (or
  ``"text": ...``) object per line, image paths relative to the manifest's folder; a bad line is named
  ``file:line`` and skipped (or, ``strict``, the whole manifest is refused before any work); an
  ``(image, expression)`` pair given twice is segmented once;
* `detris.predictor.Predictor.predict_many` segments the pairs this process owns: DataLoader workers read,
  letterbox and tokenize while the model runs, forwards are filled across images, and every mask comes
  from the one inference path (`detris.inference.segment`);
* a writer thread turns each mask into its record (COCO compressed RLE, box, area, score) and appends it
  to the output as one whole line, flushed to the kernel at once; unreadable images go to
  ``errors.jsonl`` and never stop the run;
* ``resume``: the pairs already in the output files are skipped; a line torn by a kill (no final
  newline) is not counted and is cut off before appending;
* under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment) the pairs still to do are dealt
  out image by image (the ``i``-th image to rank ``i % world_size``); each rank appends to
  ``predictions.rank<R>.jsonl`` and rank 0, once every rank is done, merges everything into
  ``predictions.jsonl`` in manifest order (whatever world sizes earlier, interrupted runs had). All
  hosts must see ``DIR`` (a shared file system).

The final ``predictions.jsonl`` holds one line per pair of the manifest, in manifest order, without
duplicates, and is the same file whether the run was interrupted and resumed or not, and whatever the
number of processes (with ``batch_invariant``, the default, the masks do not depend on the batching).
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from pycocotools import mask as coco_mask
from tqdm.auto import tqdm

from .predictor import NO_MATCH, ImagePredictions, Prediction, Predictor, check_texts
from .utils import atomic_write, check_output_dir, write_failure
from .visualize import render_overlay, save_image, save_mask

__all__ = ["ERRORS_FILE", "PREDICTIONS_FILE", "CollectionOptions", "Manifest", "ManifestEntry", "Ranks",
           "encode_rle", "join_ranks", "mask_bbox", "merge_outputs", "prediction_record", "read_jsonl",
           "read_manifest", "segment_collection"]

PREDICTIONS_FILE = "predictions.jsonl"
ERRORS_FILE = "errors.jsonl"
#: What a manifest line looks like (said in every error about one).
LINE_EXAMPLE = '{"image": "photos/a.jpg", "expressions": ["the dog on the left", "the red car"]}'
_RANK_FILE = re.compile(r"^(predictions|errors)\.rank(\d+)\.jsonl$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


# ------------------------------------------------------------------------------------------ the manifest


@dataclass(frozen=True)
class ManifestEntry:
    """One usable manifest line: the image as written, where it is, and its expressions (no repeats)."""

    line: int
    image: str
    path: Path
    expressions: tuple[str, ...]


@dataclass
class Manifest:
    """A parsed manifest: its entries in file order and the bad lines as ``(line number, problem)``."""

    path: Path
    entries: list[ManifestEntry]
    problems: list[tuple[int, str]] = field(default_factory=list)

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def pairs(self) -> Iterator[tuple[str, str]]:
        """Every ``(image as written, expression)`` pair, in manifest order."""
        for entry in self.entries:
            for text in entry.expressions:
                yield entry.image, text


def _parse_line(raw: bytes, base: Path, word_len: int) -> tuple[str, Path, list[str]]:
    """One manifest line -> (image as written, resolved path, expressions); ValueError says what is wrong."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON object ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError('no "image" path (a non-empty string)')
    if ("expressions" in obj) == ("text" in obj):
        raise ValueError('give the expressions as "expressions": [...] or one as "text": "...", not both or neither')
    texts = obj["expressions"] if "expressions" in obj else [obj["text"]]
    if not isinstance(texts, list) or ("text" in obj and not isinstance(obj["text"], str)):
        raise ValueError('"expressions" must be a list of strings ("text" a string)')
    try:
        texts, _ = check_texts(texts, word_len)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    path = Path(image).expanduser()
    return image, path if path.is_absolute() else base / path, texts


def read_manifest(path: str | os.PathLike, word_len: int = 77, strict: bool = False) -> Manifest:
    """Read a JSONL manifest (see `LINE_EXAMPLE`); blank lines are ignored.

    Args:
        path: the manifest file.
        word_len: the model's token length (only used to check that each expression has tokens).
        strict: refuse the manifest when any line is bad, instead of listing the bad lines.

    Returns:
        a `Manifest`; an ``(image, expression)`` pair met again later is dropped there.

    Raises:
        FileNotFoundError: no such manifest.
        ValueError: ``strict`` and some line is bad (every bad line named ``file:line``), or no usable line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such manifest file (one JSON object per line: {LINE_EXAMPLE})")
    manifest = Manifest(path, [])
    seen: set[tuple[str, str]] = set()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                image, where, texts = _parse_line(raw, path.parent, word_len)
            except ValueError as exc:
                manifest.problems.append((number, str(exc)))
                continue
            fresh = tuple(t for t in dict.fromkeys(texts) if (image, t) not in seen)
            seen.update((image, t) for t in fresh)
            if fresh:
                manifest.entries.append(ManifestEntry(number, image, where, fresh))
    if strict and manifest.problems:
        listed = "; ".join(f"{manifest.where(n)}: {p}" for n, p in manifest.problems[:5])
        more = f" (and {len(manifest.problems) - 5} more)" if len(manifest.problems) > 5 else ""
        raise ValueError(f"{listed}{more}; each line must look like {LINE_EXAMPLE} (without --strict bad lines "
                         "are skipped and listed in errors.jsonl)")
    if not manifest.entries:
        raise ValueError(f"--input {path}: no usable line (each line must look like {LINE_EXAMPLE})")
    return manifest


# ------------------------------------------------------------------------------------------ records


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """bool ``(H, W)`` -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (column-major runs)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[int]:
    """The box ``[x, y, w, h]`` (pixels, COCO order) around a bool ``(H, W)`` mask; ``[0, 0, 0, 0]`` when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def prediction_record(image: str, pred: Prediction, files: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``predictions.jsonl`` record of one expression.

    ``score`` is the mean probability inside the mask, to 6 decimals (0.0 for an empty mask); ``files``
    (the PNGs written for it, relative to the output folder) is added as is.
    """
    area = int(pred.mask.sum())
    score = round(float(pred.probability[pred.mask].mean()), 6) if area else 0.0
    record = {"image": image, "expression": pred.text, "rle": encode_rle(pred.mask), "bbox": mask_bbox(pred.mask),
              "area": area, "score": score, "no_target": bool(pred.no_target)}
    return {**record, **(files or {})}


# ------------------------------------------------------------------------------------------ line files


def read_jsonl(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(offset, length, record)`` of every complete JSON line of ``path`` (none when it is missing).

    A last line without its newline (torn by a kill) is not returned, nor is a line that is not JSON.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        offset = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # torn by a kill
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                print(f"detris predict: ignored a damaged line of {path} at byte {offset}", file=sys.stderr)
                record = None
            if isinstance(record, dict):
                yield offset, len(raw), record
            offset += len(raw)


def _complete_size(path: Path) -> int:
    """The length of ``path`` up to and including its last newline (what a torn last line is cut to)."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            start = max(0, pos - (1 << 16))
            f.seek(start)
            chunk = f.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            pos = start
    return 0


class _LineFile:
    """Appends whole lines to a file: one ``os.write`` per record (straight to the kernel, so a killed
    process loses nothing written), after cutting off a torn last line left by an earlier kill."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o666)  # the umask applies, as for open(path, "w")
        if append:
            os.ftruncate(self._fd, _complete_size(path))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line; a failed write (a full disk) cuts the file back to its last whole
        line and raises `detris.utils.FileWriteError` naming the file and the free space."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        whole = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as err:
            os.ftruncate(self._fd, whole)
            raise write_failure(self.path, err) from err

    def close(self) -> None:
        os.close(self._fd)


# ------------------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class Ranks:
    """This process's place in a ``torchrun`` launch: ``rank`` of ``world_size`` (``local_rank`` on its host)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for in a single process)."""
        if self.world_size > 1:
            dist.barrier()


#: How long rank 0 waits at a barrier for the slowest rank (a share of a big collection takes hours).
BARRIER_TIMEOUT = timedelta(days=7)


def join_ranks() -> Ranks:
    """Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by ``torchrun``) and, for several processes,
    join their group (gloo: it only carries barriers, on CPUs and GPUs alike).

    Raises:
        ValueError: the variables do not describe a rank of a world (the message names them).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE; launch with torchrun")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return Ranks(rank, world, local)


def leave_ranks() -> None:
    """Leave the process group `join_ranks` joined (no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ the run


@dataclass
class CollectionOptions:
    """How `segment_collection` runs (the ``detris predict --input`` options)."""

    batch_size: int = 8
    workers: int = 2
    resume: bool = False
    strict: bool = False
    save_masks: bool = False
    overlays: bool = False
    threshold: float | None = None
    batch_invariant: bool = True
    progress: bool = True


def _own_file(out_dir: Path, name: str, ranks: Ranks) -> Path:
    """Where this rank appends: ``predictions.jsonl`` itself for a single process, else ``.rank<R>``."""
    if name == PREDICTIONS_FILE and ranks.world_size == 1:
        return out_dir / name
    return out_dir / f"{name.removesuffix('.jsonl')}.rank{ranks.rank}.jsonl"


def _rank_files(out_dir: Path, kind: str) -> list[Path]:
    found = [(int(m.group(2)), p) for p in out_dir.iterdir() if (m := _RANK_FILE.match(p.name)) and m.group(1) == kind]
    return [p for _, p in sorted(found)]


def _done_pairs(out_dir: Path) -> set[tuple[str, str]]:
    """The ``(image, expression)`` pairs with a complete line in any predictions file of ``out_dir``."""
    done: set[tuple[str, str]] = set()
    for path in [out_dir / PREDICTIONS_FILE, *_rank_files(out_dir, "predictions")]:
        done.update((str(r.get("image")), str(r.get("expression"))) for _, _, r in read_jsonl(path))
    return done


def _check_fresh(out_dir: Path, resume: bool) -> None:
    if resume:
        return
    existing = [out_dir / PREDICTIONS_FILE] if (out_dir / PREDICTIONS_FILE).exists() else []
    existing += _rank_files(out_dir, "predictions")
    if existing:
        raise ValueError(f"{existing[0]} exists: pass --resume to continue that run, or choose an empty --out")


Share = list[tuple[ManifestEntry, tuple[str, ...]]]


def _share(manifest: Manifest, done: set[tuple[str, str]], ranks: Ranks) -> tuple[Share, int]:
    """This rank's images with the expressions they still need, and how many pairs were done before."""
    todo = []
    for entry in manifest.entries:
        left = tuple(t for t in entry.expressions if (entry.image, t) not in done)
        if left:
            todo.append((entry, left))
    skipped = sum(len(e.expressions) for e in manifest.entries) - sum(len(left) for _, left in todo)
    return todo[ranks.rank :: ranks.world_size], skipped


class _Writer:
    """A thread that turns results into records, PNGs and lines, off the model's critical path."""

    def __init__(self, out_dir: Path, lines: _LineFile, errors: _LineFile, options: CollectionOptions) -> None:
        self.out_dir, self.lines, self.errors, self.options = out_dir, lines, errors, options
        self._queue: queue.Queue[tuple[ManifestEntry, ImagePredictions] | None] = queue.Queue(maxsize=32)
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="detris-predict-writer", daemon=True)
        self._thread.start()

    def put(self, entry: ManifestEntry, result: ImagePredictions) -> None:
        if self.failure is not None:
            raise self.failure
        self._queue.put((entry, result))

    def close(self) -> None:
        """Write what is queued, stop the thread; re-raises its failure (a full disk) here."""
        self._queue.put(None)
        self._thread.join()
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        try:
            while (job := self._queue.get()) is not None:
                self._write(*job)
        except BaseException as exc:  # handed to the main thread by put() / close()
            self.failure = exc
            while self._queue.get() is not None:  # keep put() from blocking until close()
                pass

    def _write(self, entry: ManifestEntry, result: ImagePredictions) -> None:
        if result.error is not None:
            self.errors.write({"image": entry.image, "line": entry.line, "error": str(result.error)})
            tqdm.write(f"detris predict: skipped {entry.image} (line {entry.line}): {result.error}", file=sys.stderr)
        for pred in result.predictions:
            files = self._pngs(entry, entry.expressions.index(pred.text), pred, result.rgb)
            # The PNGs first: a line in the file means that everything of its pair is complete.
            self.lines.write(prediction_record(entry.image, pred, files))

    def _pngs(self, entry: ManifestEntry, k: int, pred: Prediction, rgb: np.ndarray | None) -> dict[str, str]:
        name = f"{entry.line:06d}_{k}_{_UNSAFE.sub('_', Path(entry.image).stem)[:60]}.png"
        files = {}
        if self.options.save_masks:
            files["mask_file"] = f"masks/{name}"
            save_mask(self.out_dir / files["mask_file"], pred.mask)
        if self.options.overlays and rgb is not None:
            files["overlay_file"] = f"overlays/{name}"
            decided = pred.no_target and pred.no_target_probability is not None
            save_image(self.out_dir / files["overlay_file"],
                       render_overlay(rgb, pred.mask, f"{pred.text} ({NO_MATCH})" if decided else pred.text))
        return files


def _run_share(predictor: Predictor, share: Share, out_dir: Path, options: CollectionOptions,
               ranks: Ranks) -> dict[str, int]:
    """Segment this rank's share, appending its lines; returns the counts of images, expressions, errors."""
    lines = _LineFile(_own_file(out_dir, PREDICTIONS_FILE, ranks), append=True)
    errors = _LineFile(_own_file(out_dir, ERRORS_FILE, ranks), append=False)
    writer = _Writer(out_dir, lines, errors, options)
    counts = {"images": 0, "expressions": 0, "errors": 0}
    bar = tqdm(total=len(share), unit="image", desc="predict", dynamic_ncols=True,
               disable=not options.progress or ranks.rank != 0)
    start = time.perf_counter()
    try:
        results = predictor.predict_many([(e.path, list(left)) for e, left in share], threshold=options.threshold,
                                         batch_size=options.batch_size, workers=options.workers,
                                         batch_invariant=options.batch_invariant, skip_errors=True,
                                         keep_images=options.overlays)
        for result in results:
            writer.put(share[result.index][0], result)
            counts["images"] += result.error is None
            counts["expressions"] += len(result.predictions)
            counts["errors"] += result.error is not None
            bar.update(1)
            bar.set_postfix_str(f"{counts['expressions'] / (time.perf_counter() - start):.1f} expr/s", refresh=False)
    finally:
        bar.close()
        try:
            writer.close()
        finally:
            lines.close()
            errors.close()
    return counts


def segment_collection(
    predictor: Predictor,
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: CollectionOptions | None = None,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Segment every ``(image, expression)`` pair of a manifest into ``out_dir/predictions.jsonl``.

    Each line: ``{"image", "expression", "rle": {"size": [H, W], "counts"}, "bbox": [x, y, w, h], "area",
    "score", "no_target"}`` (+ ``mask_file`` / ``overlay_file`` with ``save_masks`` / ``overlays``).
    Unreadable images and bad manifest lines are listed in ``out_dir/errors.jsonl``.

    Args:
        predictor: the model; every rank of a launch must use the same one.
        manifest_path: the JSONL manifest (`read_manifest`).
        out_dir: the output folder (created); shared by all ranks.
        options: `CollectionOptions`.
        ranks: this process's rank (`join_ranks`); default a single process.

    Returns:
        counts of this rank (``images``, ``expressions``, ``errors``), ``already_done`` pairs,
        ``bad_lines``, ``seconds``, and on rank 0 ``written`` (lines of the merged file).

    Raises:
        ValueError: a bad manifest with ``strict``, an earlier run's output without ``resume``, an
            output folder that cannot be written.
    """
    options = options or CollectionOptions()
    ranks = ranks or Ranks()
    manifest = read_manifest(manifest_path, predictor.word_len, options.strict)
    out_dir = Path(out_dir).expanduser()
    if ranks.rank == 0:
        check_output_dir(out_dir)
    ranks.barrier()
    _check_fresh(out_dir, options.resume)
    share, already = _share(manifest, _done_pairs(out_dir) if options.resume else set(), ranks)
    if ranks.rank == 0:
        _prepare_folder(out_dir, manifest, ranks, options)
    ranks.barrier()  # every rank has read the earlier lines before any rank appends
    start = time.perf_counter()
    summary: dict[str, Any] = {**_run_share(predictor, share, out_dir, options, ranks),
                               "already_done": already, "bad_lines": len(manifest.problems)}
    ranks.barrier()  # every share is written
    if ranks.rank == 0:
        summary["written"] = merge_outputs(out_dir, manifest)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def _prepare_folder(out_dir: Path, manifest: Manifest, ranks: Ranks, options: CollectionOptions) -> None:
    """Rank 0, before any rank writes: PNG folders, bad lines said, error files of other world sizes removed."""
    for wanted, name in ((options.save_masks, "masks"), (options.overlays, "overlays")):
        if wanted:
            (out_dir / name).mkdir(exist_ok=True)
    for number, problem in manifest.problems:
        print(f"detris predict: skipped {manifest.where(number)}: {problem}", file=sys.stderr)
    for path in _rank_files(out_dir, "errors"):
        if int(path.name.split(".rank")[1].split(".")[0]) >= ranks.world_size:
            path.unlink()


def merge_outputs(out_dir: str | os.PathLike, manifest: Manifest) -> int:
    """Rewrite ``predictions.jsonl`` from itself and every ``predictions.rank<R>.jsonl``: one line per pair
    of the manifest, in manifest order, each line as it was written; then ``errors.jsonl`` from the bad
    lines and the ``errors.rank<R>.jsonl`` files, in manifest order. The rank files are removed.

    Returns:
        the number of lines of ``predictions.jsonl``.
    """
    out_dir = Path(out_dir)
    order = {pair: i for i, pair in enumerate(manifest.pairs())}
    sources = [out_dir / PREDICTIONS_FILE, *_rank_files(out_dir, "predictions")]
    found: dict[int, tuple[int, int, int]] = {}
    foreign = 0
    for s, path in enumerate(sources):
        for offset, length, record in read_jsonl(path):
            pos = order.get((str(record.get("image")), str(record.get("expression"))))
            if pos is None:
                foreign += 1
            else:
                found.setdefault(pos, (s, offset, length))
    if foreign:
        print(f"detris predict: dropped {foreign} line(s) of pairs the manifest no longer holds", file=sys.stderr)

    def write(tmp: str) -> None:
        handles = {s: open(sources[s], "rb") for s in {s for s, _, _ in found.values()}}
        try:
            with open(tmp, "wb") as out:
                for pos in sorted(found):
                    s, offset, length = found[pos]
                    handles[s].seek(offset)
                    out.write(handles[s].read(length))
        finally:
            for handle in handles.values():
                handle.close()

    atomic_write(out_dir / PREDICTIONS_FILE, write)
    for path in sources[1:]:
        path.unlink()
    _merge_errors(out_dir, manifest)
    return len(found)


def _merge_errors(out_dir: Path, manifest: Manifest) -> None:
    rows: list[tuple[int, dict[str, Any]]] = [
        (n, {"manifest": manifest.where(n), "line": n, "error": p}) for n, p in manifest.problems]
    sources = _rank_files(out_dir, "errors")
    for path in sources:
        rows += [(int(r.get("line", 0)), r) for _, _, r in read_jsonl(path)]
    rows.sort(key=lambda row: row[0])
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in rows)
    atomic_write(out_dir / ERRORS_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for path in sources:
        path.unlink()
