"""``detris eval``: a model on a REFER or gRefCOCO split with the official protocol; a table, optionally JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..data.catalog import (
    DATASET_NAMES,
    EVAL_DATASET_NAMES,
    MIXED,
    dataset_folder,
    load_annotations,
    segmentation_dataset,
)
from ..data.images import ImageLoadError
from ..evaluate import (
    GRES_METRIC_KEYS,
    METRIC_KEYS,
    PREDICTIONS_JSONL,
    evaluate,
    format_table,
    json_safe,
)
from ..fetch.sources import SOURCES, download_command
from ..postprocess import DEFAULT_THRESHOLD
from ..precision import INT8, dtype_name, quantize_vision_int8, resolve_dtype
from ..pretrained import from_pretrained, resolve_model_dir
from ..registry import REGISTRY
from ..utils import resolve_device
from ..weights import read_model_dir

__all__ = ["run_eval_command"]

#: Where the images are under ``--data-root`` when ``--image-root`` is not given (the download's layout).
DEFAULT_IMAGE_DIR = SOURCES["coco-train2014"].target


def _check_images(dataset: Any, image_root: Path, skip_bad: bool) -> list[str]:
    """Stat every image of the split before the model is loaded; returns the missing paths.

    None found means ``--image-root`` is wrong: an error. Some missing is an error without
    ``--skip-bad`` (they would stop the run midway), a warning with it.
    """
    paths = dataset.image_paths()
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and len(missing) == len(paths):
        raise FileNotFoundError(
            f"none of the {len(paths)} images of this split is under --image-root {image_root} "
            f"(first expected: {missing[0]}); --image-root must be the folder the 'file_name' entries of "
            f"instances.json are relative to (COCO train2014 for RefCOCO/+/g; `detris data download "
            f"coco-train2014 --root DATA_ROOT` puts it in DATA_ROOT/{DEFAULT_IMAGE_DIR})"
        )
    if missing and not skip_bad:
        shown = "\n  ".join(missing[:5]) + ("\n  ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images of this split are missing under --image-root "
            f"{image_root}:\n  {shown}\npass --skip-bad to evaluate without them"
        )
    return missing


def _image_root(args: argparse.Namespace) -> Path:
    """``--image-root``, or ``DATA_ROOT/images/train2014`` (where `detris data download` puts COCO)."""
    if args.image_root:
        return Path(args.image_root)
    default = Path(args.data_root) / DEFAULT_IMAGE_DIR
    if not default.is_dir():
        raise FileNotFoundError(
            f"no --image-root given and {default} (where `detris data download` puts the COCO train2014 images) "
            f"is not there; pass --image-root, or fetch the images: {download_command('coco-train2014', args.data_root)}"
        )
    return default


def _read_annotations(args: argparse.Namespace) -> Any:
    """The REFER / gRefCOCO annotation set; a missing file's error ends with the command that fetches it."""
    try:  # the loaders raise FileNotFoundError naming the missing file (and the expected layout)
        return load_annotations(args.dataset, args.data_root)
    except FileNotFoundError as err:
        folder = dataset_folder(args.dataset)
        raise FileNotFoundError(f"{err}\nfetch it: {download_command(folder, args.data_root)}") from None


def _load_split(args: argparse.Namespace, cfg: Any) -> tuple[str, Any]:
    """The split as a test-mode dataset and its ``split_by``; every data error raised before the model
    is loaded."""
    source = _read_annotations(args)
    source.ref_ids(args.split)  # unknown split -> ValueError listing the available ones
    image_root = _image_root(args)
    if not image_root.is_dir():
        raise FileNotFoundError(
            f"--image-root {image_root} is not a folder; it must hold the images named by 'file_name' in "
            f"{source.instances_path} (COCO train2014 for RefCOCO/+/g and gRefCOCO)"
        )
    dataset = segmentation_dataset(
        source,
        args.split,
        "test",  # every sentence of every ref, as the official test loop
        image_root,
        input_size=cfg.image_size,
        word_len=cfg.word_len,
        skip_bad=bool(args.skip_bad),
    )
    missing = _check_images(dataset, image_root, bool(args.skip_bad))
    if missing:
        print(f"warning: {len(missing)} image(s) missing; they will be skipped", file=sys.stderr)
    return getattr(source, "split_by", "unc"), dataset


def _paper_miou(model: str, dataset: str, split: str) -> float | None:
    """The paper's mIoU (%) of a registry model on this dataset and split, if it reports one."""
    return _paper_scores(model, dataset, split).get("mIoU")


def _paper_scores(model: str, dataset: str, split: str) -> dict[str, float]:
    """The official README's ``{"mIoU": %, "oIoU": %}`` of a registry model on this dataset and split
    (the ones it reports; empty for a model or split it does not)."""
    entry = REGISTRY.get(model)
    if entry is None:
        return {}
    key = split if entry.dataset == dataset else f"{dataset} {split}"
    scores = {"mIoU": entry.paper_miou.get(key), "oIoU": entry.paper_oiou.get(key)}
    return {k: v for k, v in scores.items() if v is not None}


def _report(args: argparse.Namespace, cfg: Any, split_by: str, generalized: bool, result: dict[str, Any]) -> None:
    keys = GRES_METRIC_KEYS if generalized else METRIC_KEYS
    print(format_table([{"split": args.split, **result}], keys))
    if generalized:
        print(f"no-target expressions: {result['no_target_expressions']} of {result['expressions']} "
              f"(TP {result['TP']}, FN {result['FN']}; target: TN {result['TN']}, FP {result['FP']})")
    paper = {} if generalized else _paper_scores(str(args.model), args.dataset, args.split)
    if paper:
        print(f"official README for {args.model} on {args.dataset} {args.split}: "
              + ", ".join(f"{k} {v:.2f} (ours {100 * result[k]:.2f})" for k, v in paper.items()))
    if result["skipped"]:
        print(
            f"skipped {len(result['skipped'])} unreadable image(s) ({result['skipped_expressions']} expressions "
            f"not scored):"
        )
        for path in result["skipped"]:
            print(f"  {path}")
    if args.save_predictions:
        print(f"predictions: {args.save_predictions} ({result['expressions']} masks + {PREDICTIONS_JSONL})")
    if args.json:
        payload = {
            "model": str(args.model),
            "variant": cfg.name,
            "dataset": args.dataset,
            "split_by": split_by,
            "metrics": "gres" if generalized else "refer",
            "split": args.split,
            "input_size": cfg.image_size,
            "word_len": cfg.word_len,
            "threshold": DEFAULT_THRESHOLD,
            "dtype": args.dtype,
            **result,
            "percent": {k: round(100 * result[k], 2) for k in keys},
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_safe(payload), indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {out}")


def run_eval_command(args: argparse.Namespace) -> int:
    """``detris eval``: load a model and a REFER or gRefCOCO split, evaluate, print a table, optionally JSON.

    Every check that can fail on user input (device, model folder, data layout, split, image root)
    runs before the weights are loaded and before any image is decoded.

    Args:
        args: ``model, dataset, split, data_root, image_root, batch_size, workers, device,
            save_predictions, json, skip_bad`` (see ``detris eval --help``).

    Returns:
        0 on success (errors are raised: ``FileNotFoundError`` / ``ValueError`` with a clear message).
    """
    if int(args.batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if int(args.workers) < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.dataset not in DATASET_NAMES or args.dataset == MIXED:
        raise ValueError(f"unknown --dataset {args.dataset!r}; choose one of {', '.join(EVAL_DATASET_NAMES)}")
    device = resolve_device(args.device)
    model_dir = resolve_model_dir(str(args.model), args.word_len)
    cfg = read_model_dir(model_dir).config
    split_by, dataset = _load_split(args, cfg)
    dtype = resolve_dtype(getattr(args, "dtype", "float32"), device)
    model: Any = from_pretrained(model_dir)
    if dtype == INT8:
        model = quantize_vision_int8(model)
    args.dtype = dtype_name(dtype)
    protocol = "the official protocol" if dtype == torch.float32 else "not the protocol: boundary pixels may differ"
    print(
        f"model {args.model} ({cfg.name}, input {cfg.image_size} px, word_len {cfg.word_len}) on {device} in "
        f"{args.dtype} ({protocol}); "
        f"{args.dataset} ({split_by}) {args.split}: {dataset.num_refs} refs, {len(dataset)} expressions",
        flush=True,
    )
    try:
        result = evaluate(model, dataset, batch_size=int(args.batch_size), device=device, workers=int(args.workers),
                          save_predictions=args.save_predictions, progress=sys.stderr.isatty(),
                          dtype=None if dtype == INT8 else dtype)
    except ImageLoadError as exc:
        raise type(exc)(f"{exc}\n(pass --skip-bad to skip unreadable images and list them)") from None
    _report(args, cfg, split_by, dataset.generalized, result)
    return 0
