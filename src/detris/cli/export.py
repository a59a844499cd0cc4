"""``detris export``: a model as an ONNX file or a ``torch.export`` program."""

from __future__ import annotations

import argparse
import sys
import time

from ..export import (
    MissingExportDependency,
    check_batch_size,
    check_format,
    export_model,
    prepare_output,
    require_packages,
)
from ..pretrained import from_pretrained, resolve_model_dir

__all__ = ["run_export_command"]


def run_export_command(args: argparse.Namespace) -> int:
    """``detris export --model DIR_OR_HUB_ID --format onnx|torch-export --out FILE [--batch-size B]``.

    Everything that can be checked without the model (format, batch size, output path, packages) is
    checked before the model is loaded.
    """
    try:
        fmt = check_format(args.format)
        batch_size = check_batch_size(args.batch_size)
        require_packages(fmt)
    except MissingExportDependency as err:
        print(f"detris export: error: {err}", file=sys.stderr)
        return 2
    out = prepare_output(args.out, fmt)
    model_dir = resolve_model_dir(str(args.model), args.word_len)
    model = from_pretrained(model_dir)
    cfg = model.config
    start, started_at = time.perf_counter(), time.time()
    path = export_model(model, fmt, out, batch_size=batch_size)
    side = 4 * cfg.image_size // cfg.patch_size
    b = "B" if batch_size is None else batch_size
    # An ONNX weight side file counts only if this export wrote it (not one left by an earlier export).
    files = [path, path.with_name(path.name + ".data")]
    size_mb = sum(f.stat().st_size for f in files if f.is_file() and f.stat().st_mtime >= started_at - 1) / 1e6
    print(
        f"exported {cfg.name} from {model_dir} to {path} ({fmt}, {size_mb:.1f} MB, "
        f"{time.perf_counter() - start:.1f} s)\n"
        f"  inputs : images float32 ({b}, 3, {cfg.image_size}, {cfg.image_size}) CLIP-normalised, "
        f"tokens int64 ({b}, {cfg.word_len})\n"
        f"  output : logits float32 ({b}, 1, {side}, {side}); "
        f"mask = sigmoid -> bicubic -> inverse letterbox -> > {model.processing.threshold}"
    )
    return 0
