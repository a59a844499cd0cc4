"""``detris predict``: masks, overlays and ``predictions.json`` for one image or a folder of them
(``--image``), or ``predictions.jsonl`` for a whole collection (``--input MANIFEST.jsonl``,
`detris.collection`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..data.images import ImageLoadError, load_image
from ..precision import dtype_name
from ..predictor import NO_MATCH, Predictor, check_texts
from ..pretrained import resolve_model_dir
from ..utils import atomic_write, check_output_dir

__all__ = ["IMAGE_SUFFIXES", "run_collection_command", "run_predict_command"]

#: Options that only mean something for a collection, with their defaults.
_COLLECTION_ONLY = {"resume": False, "strict": False, "save_masks": False, "overlays": False}

#: File suffixes ``detris predict --image FOLDER`` picks up (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _image_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(
                f"--image {path}: the folder holds no image files (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        return files
    if not path.exists():
        raise FileNotFoundError(f"--image {path}: no such file or folder")
    return [path]


def _output_stems(files: Sequence[Path]) -> Iterator[str]:
    """File stems, made unique: ``a.jpg`` and ``a.png`` in one folder become ``a_jpg`` and ``a_png``."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f.stem] = counts.get(f.stem, 0) + 1
    for f in files:
        yield f.stem if counts[f.stem] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"


def run_predict_command(args: argparse.Namespace) -> int:
    """``detris predict``: masks, overlays and ``predictions.json`` for one image or a folder of them
    (``--image``), or ``predictions.jsonl`` for a collection (``--input``, `run_collection_command`).

    A single unreadable image is an error (exit 2); in a folder, unreadable images are listed under
    ``"errors"`` in ``predictions.json`` and on stderr, and the others are still processed.
    """
    if args.input is not None:
        return run_collection_command(args)
    return _run_images(args)


def _check_mode(args: argparse.Namespace) -> None:
    """Options of the other mode are refused rather than ignored."""
    if args.input is not None and args.text:
        raise ValueError("--text goes with --image; with --input each manifest line carries its own expressions")
    if args.input is None:
        if not args.text:
            raise ValueError("--image needs at least one --text EXPRESSION (or give a manifest with --input)")
        used = [k for k, default in _COLLECTION_ONLY.items() if getattr(args, k, default) != default]
        if used:
            raise ValueError(f"--{used[0].replace('_', '-')} works with --input MANIFEST.jsonl, not with --image")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must be strictly between 0 and 1, got {args.threshold}")
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")


def run_collection_command(args: argparse.Namespace) -> int:
    """``detris predict --input MANIFEST.jsonl``: one process, or one rank of a ``torchrun`` launch."""
    import torch

    from ..collection import CollectionOptions, join_ranks, leave_ranks, segment_collection

    _check_mode(args)
    ranks = join_ranks()
    try:
        device = args.device
        if device in (None, "cuda") and ranks.world_size > 1 and torch.cuda.is_available():
            device = f"cuda:{ranks.local_rank}"
        # Rank 0 resolves (and downloads) the model first; the others then find it in the cache.
        if ranks.rank == 0:
            model_dir = resolve_model_dir(args.model, args.word_len)
        ranks.barrier()
        if ranks.rank != 0:
            model_dir = resolve_model_dir(args.model, args.word_len)
        predictor = Predictor.from_pretrained(model_dir, device=device, dtype=args.dtype)
        options = CollectionOptions(batch_size=args.batch_size, workers=args.workers, resume=args.resume,
                                    strict=args.strict, save_masks=args.save_masks, overlays=args.overlays,
                                    threshold=args.threshold, batch_invariant=args.batch_invariant,
                                    progress=sys.stderr.isatty())
        summary = segment_collection(predictor, args.input, args.out, options, ranks)
    finally:
        leave_ranks()
    if ranks.rank == 0:
        out = Path(args.out).expanduser()
        problems = f"; {summary['errors']} unreadable image(s), {summary['bad_lines']} bad line(s) in {out / 'errors.jsonl'}"
        print(f"detris predict: {summary['expressions']} expression(s) of {summary['images']} image(s) segmented"
              + (f" by rank 0 of {ranks.world_size}" if ranks.world_size > 1 else "")
              + (f", {summary['already_done']} already done" if args.resume else "")
              + f" with {args.model} -> {out / 'predictions.jsonl'} ({summary['written']} line(s))"
              + (problems if summary["errors"] or summary["bad_lines"] else ""))
    return 0


def _run_images(args: argparse.Namespace) -> int:
    """``detris predict --image``: one image or a folder, the same expressions for each."""
    from tqdm import tqdm

    from ..visualize import render_overlay, save_image, save_mask

    _check_mode(args)
    image_arg = Path(args.image).expanduser()
    files = _image_files(image_arg)
    out_dir = Path(args.out).expanduser()
    check_output_dir(out_dir)
    predictor = Predictor.from_pretrained(resolve_model_dir(args.model, args.word_len), device=args.device, dtype=args.dtype)
    texts, _ = check_texts(args.text, predictor.word_len)
    threshold = predictor.processing.threshold if args.threshold is None else args.threshold

    records, errors = [], []
    single = not image_arg.is_dir()
    for path, stem in tqdm(list(zip(files, _output_stems(files))), desc="predict", unit="image",
                           disable=single or not sys.stderr.isatty()):
        try:
            rgb = load_image(path)
        except ImageLoadError as exc:
            if single:
                raise
            errors.append({"image": str(path), "error": str(exc)})
            print(f"detris predict: skipped {path}: {exc}", file=sys.stderr)
            continue
        preds = predictor.predict(rgb, texts, threshold=threshold, batch_invariant=args.batch_invariant)
        entries = []
        for i, p in enumerate(preds):
            mask_name, overlay_name = f"{stem}_{i}_mask.png", f"{stem}_{i}_overlay.png"
            save_mask(out_dir / mask_name, p.mask)
            # Said on the overlay when a no-target head decided it (see the web page).
            decided = p.no_target and p.no_target_probability is not None
            caption = f"{p.text} ({NO_MATCH})" if decided else p.text
            save_image(out_dir / overlay_name, render_overlay(rgb, p.mask, caption))
            entries.append({
                "index": i,
                "text": p.text,
                "mask": mask_name,
                "overlay": overlay_name,
                "area": p.area,
                "area_fraction": p.area / float(p.mask.size),
                "max_probability": float(np.max(p.probability)) if p.probability.size else math.nan,
                "truncated": p.truncated,
                # Said in words, so that an all-zero mask is never mistaken for a failed write.
                "result": NO_MATCH if p.no_target else "object found",
                "no_target": p.no_target,
                "no_target_probability": p.no_target_probability,
            })
        records.append({"image": str(path), "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                        "predictions": entries})
    summary = {
        "model": str(args.model),
        "variant": predictor.model.config.name,
        "threshold": threshold,
        "dtype": dtype_name(predictor.dtype),
        "images": records,
        "errors": errors,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    atomic_write(out_dir / "predictions.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"detris predict: {len(records)} image(s) x {len(texts)} expression(s) with {args.model} -> {out_dir}"
          + (f" ({len(errors)} unreadable image(s) skipped)" if errors else ""))
    return 0 if records else 2
