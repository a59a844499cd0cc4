"""A dataset of your own: one JSON line per image and expressions, masks as PNG files or COCO RLE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .coco import segmentation_to_mask
from .images import ImageLoadError
from .pipeline import Entry, ExpressionDataset, PathLike, Tokenizer

__all__ = ["JsonlSegDataset"]

def _read_mask_png(path: Path) -> np.ndarray:
    """A mask image -> uint8 0/1. Palette/1-bit: any non-zero index; otherwise values >= half range."""
    if not path.is_file():
        raise ImageLoadError(f"mask file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except Exception as exc:  # PIL's decoders raise many types on damaged files (see data/images.py)
        raise ImageLoadError(f"{path}: cannot read mask image ({type(exc).__name__}: {exc})") from exc
    if mode in ("P", "PA", "1"):
        plane = arr[..., 0] if arr.ndim == 3 else arr
        return (plane != 0).astype(np.uint8)
    if arr.ndim == 3:
        # Colour masks: a pixel is foreground when any colour channel is on (alpha ignored).
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.size and arr.max() <= 1:
        return (arr > 0).astype(np.uint8)  # a 0/1 mask
    if np.issubdtype(arr.dtype, np.floating):
        return (arr >= 0.5).astype(np.uint8)
    half = 32768 if (arr.dtype != np.uint8 and arr.max() > 255) else 128
    return (arr >= half).astype(np.uint8)


def _parse_mask_field(kind: str, value: Any, where: str, base: Path) -> tuple[str, Any]:
    """Check one JSONL mask field; returns ``(kind, value)`` with mask paths resolved against ``base``
    and ``mask`` / ``rle`` as lists (several = the union: a multi-target expression)."""
    if kind == "mask":
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not paths or not all(isinstance(v, str) and v for v in paths):
            raise ValueError(f"{where}: 'mask' must be a path string to a PNG mask, or a non-empty list of them")
        return "mask", [str(base / v) for v in paths]
    if kind == "polygon":
        ok = isinstance(value, list) and value and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            for p in value
        )
        if not ok:
            raise ValueError(
                f"{where}: 'polygon' must be a list of polygons [[x0, y0, x1, y1, x2, y2, ...], ...], "
                f"each with an even number (>= 6) of numbers"
            )
        return "polygon", value
    rles = [value] if isinstance(value, dict) else value
    if not isinstance(rles, list) or not rles:
        raise ValueError(f"{where}: 'rle' must be an RLE object or a non-empty list of them")
    for rle in rles:
        _check_rle(rle, where)
    if len({tuple(r["size"]) for r in rles}) > 1:
        raise ValueError(f"{where}: the RLEs of one line must have the same size, got {[r['size'] for r in rles]}")
    return "rle", rles


def _check_rle(value: Any, where: str) -> None:
    size: Any = value.get("size") if isinstance(value, dict) else None
    counts: Any = value.get("counts") if isinstance(value, dict) else None
    ok_size = isinstance(size, list) and len(size) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    )
    ok_counts = isinstance(counts, str) or (
        isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
    )
    if not (ok_size and ok_counts):
        raise ValueError(f"{where}: 'rle' must be {{\"size\": [h, w], \"counts\": [ints] or \"compressed string\"}}")
    if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
        raise ValueError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, expected h*w = {size[0] * size[1]}")


class JsonlSegDataset(ExpressionDataset):
    """Referring-segmentation data in a simple JSON-lines file.

    One JSON object per line, one referred object per line::

        {"image": "images/cat.jpg", "sentence": "the cat on the left", "mask": "masks/cat_left.png"}
        {"image": "images/cat.jpg", "sentence": "right cat", "polygon": [[10, 20, 50, 20, 50, 80, 10, 80]]}
        {"image": "/data/dog.png", "sentences": ["brown dog", "the dog"], "rle": {"size": [480, 640], "counts": "..."}, "id": "dog-1"}
        {"image": "images/cat.jpg", "sentence": "both cats", "mask": ["masks/cat_left.png", "masks/cat_right.png"]}
        {"image": "images/cat.jpg", "sentence": "the purple dog", "no_target": true}

    Fields:

    * ``image`` (required): image path.
    * ``sentence`` (a string) or ``sentences`` (a non-empty list of strings): the expression(s). With
      several, train mode draws one per epoch, val mode uses the first, test mode yields each.
    * exactly one mask, at the image's size (after EXIF rotation):
      ``mask``: path of a PNG (0/1 or 0/255 grey, or a palette PNG where any non-zero index is the
      object; grey values >= 128 count as foreground); ``polygon``: a list of polygons, each
      ``[x0, y0, x1, y1, ...]`` in pixels (COCO convention, at least 3 points); ``rle``: a COCO RLE
      ``{"size": [h, w], "counts": [...] | "..."}`` (uncompressed or compressed). An expression that
      refers to several objects gives a list of ``mask`` paths, of ``rle`` objects, or several polygons:
      its ground truth is their union.
    * or ``"no_target": true`` and no mask: the expression refers to nothing in the image (its ground
      truth is empty). A file with such a line is ``generalized``: evaluated with the GRES metrics.
    * ``id`` (optional): reported as ``ref_id``; defaults to the line number. ``sent_id`` is the index
      of the sentence within the line.

    Relative paths are resolved against the JSONL file's folder; relative ``image`` paths against
    ``image_root`` instead when it is given. Blank lines and lines starting with ``#`` are ignored.
    The file is validated when the dataset is built; errors name the file and line number.

    Args:
        path: the ``.jsonl`` file.
        image_root: optional base folder for relative image paths.
        mode, input_size, word_len, tokenizer, seed, skip_bad, empty_sentences: as in `ReferSegDataset`
            (``mode`` defaults to ``train``).
    """

    def __init__(
        self,
        path: PathLike,
        image_root: PathLike | None = None,
        mode: str = "train",
        input_size: int = 448,
        word_len: int = 17,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        skip_bad: bool = False,
        empty_sentences: str = "error",
    ) -> None:
        super().__init__(mode, input_size, word_len, tokenizer, seed, skip_bad, empty_sentences)
        self.path = Path(path)
        self.name = self.path.stem
        self.generalized = False  # set by the first "no_target" line
        if not self.path.is_file():
            raise FileNotFoundError(f"JSONL annotation file not found: {self.path}")
        base = self.path.parent
        img_base = Path(image_root) if image_root is not None else base
        self.image_root = img_base
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            self._entries.append(self._parse_line(line, lineno, base, img_base))
        if not self._entries:
            raise ValueError(f"{self.path}: no records found (expected one JSON object per line)")
        self._finalize(str(self.path))

    def _parse_line(self, line: str, lineno: int, base: Path, img_base: Path) -> Entry:
        where = f"{self.path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        known = {"image", "sentence", "sentences", "mask", "polygon", "rle", "id", "no_target"}
        unknown = sorted(set(rec) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
        image = rec.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where}: 'image' must be a non-empty path string")
        ref_id = rec.get("id", lineno)
        if not isinstance(ref_id, (int, str)) or isinstance(ref_id, bool):
            raise ValueError(f"{where}: 'id' must be a string or an integer")

        if ("sentence" in rec) == ("sentences" in rec):
            raise ValueError(f"{where}: give exactly one of 'sentence' (string) or 'sentences' (list of strings)")
        texts = [rec["sentence"]] if "sentence" in rec else rec["sentences"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{where}: 'sentence' must be a string / 'sentences' a non-empty list of strings")
        for k, t in enumerate(texts):
            if not t.strip() and self.empty_sentences == "error":
                raise ValueError(
                    f"{where}: empty sentence (ref_id={ref_id}, sent_id={k}); write the expression or "
                    f"pass empty_sentences='drop'"
                )

        no_target = rec.get("no_target", False)
        if not isinstance(no_target, bool):
            raise ValueError(f"{where}: 'no_target' must be true or false")
        kinds = [k for k in ("mask", "polygon", "rle") if k in rec]
        expected_hw: tuple[int, int] | None = None
        if no_target:
            if kinds:
                raise ValueError(f"{where}: a 'no_target' line refers to nothing, so it has no {kinds[0]!r}")
            spec: tuple[Any, ...] = (lineno, "none", None)
        else:
            if len(kinds) != 1:
                raise ValueError(
                    f"{where}: give exactly one of 'mask', 'polygon' or 'rle' (got {kinds or 'none'}), "
                    f"or \"no_target\": true for an expression that refers to nothing"
                )
            kind, value = kinds[0], rec[kinds[0]]
            spec = (lineno, *_parse_mask_field(kind, value, where, base))
            if kind == "rle":
                size = spec[2][0]["size"]
                expected_hw = (int(size[0]), int(size[1]))
        self.generalized = self.generalized or no_target
        return Entry(
            ref_id=ref_id,
            image_path=str(img_base / image),  # an absolute `image` replaces the base
            sentences=tuple(enumerate(texts)),
            dataset=self.path.stem,
            expected_hw=expected_hw,
            mask_spec=spec,
            no_target=no_target,
        )

    def _load_mask(self, entry: Entry, height: int, width: int) -> np.ndarray:
        lineno, kind, value = entry.mask_spec
        if kind == "none":
            return np.zeros((height, width), np.uint8)
        if kind == "mask":
            masks = [_read_mask_png(Path(v)) for v in value]
            for path, m in zip(value, masks):
                if m.shape != masks[0].shape:
                    raise ImageLoadError(f"{self.path}:{lineno}: mask {path} is {m.shape[0]}x{m.shape[1]}, "
                                         f"the line's first mask {masks[0].shape[0]}x{masks[0].shape[1]}")
            return np.bitwise_or.reduce(masks) if len(masks) > 1 else masks[0]
        try:
            if kind == "rle":
                out = np.zeros((height, width), np.uint8)
                for rle in value:
                    out |= segmentation_to_mask(rle, height, width, strict=True)
                return out
            return segmentation_to_mask(value, height, width, strict=True)
        except ValueError as exc:
            raise ValueError(f"{self.path}:{lineno}: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"JsonlSegDataset(path={str(self.path)!r}, mode={self.mode!r}, records={self.num_refs}, "
            f"items={len(self)}, input_size={self.input_size}, word_len={self.word_len})"
        )
