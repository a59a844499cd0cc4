"""The ``detris`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..bundled import DEMO_MODEL_NAME
from ..utils import FileWriteError


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from ..build import build_model
    from ..variants import get_variant, list_variants

    if args.pretrained:
        return _print_pretrained(args.json)
    names = list_variants() if args.variant == "all" else [args.variant]
    rows: list[dict[str, Any]] = []
    for name in names:
        cfg = get_variant(name)
        # Shapes only: the meta device builds even DETRIS-L instantly and allocates nothing.
        with torch.device("meta"):
            counts = build_model(cfg).parameter_counts()
        share = 100.0 * counts["adapters"] / counts["backbones"]
        rows.append({"variant": cfg.name, **counts, "adapter_share_percent": round(share, 2)})
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    print(f"{'variant':<16}{'total':>12}{'trainable':>12}{'adapters':>12}{'adapter share':>16}")
    for r in rows:
        print(
            f"{r['variant']:<16}{r['total'] / 1e6:>11.2f}M{r['trainable'] / 1e6:>11.2f}M"
            f"{r['adapters'] / 1e6:>11.2f}M{r['adapter_share_percent']:>14.2f} %"
        )
    print("adapter share = adapter parameters / parameters of the two backbones (adapters included)")
    return 0


def _print_pretrained(as_json: bool) -> int:
    """``detris info --pretrained``: the registry of released checkpoints."""
    import dataclasses

    from ..registry import REGISTRY

    entries = [REGISTRY[n] for n in sorted(REGISTRY)]
    if as_json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return 0
    print(f"{'name':<27}{'variant':<16}{'word_len':>9}  {'Hub file':<44}{'paper mIoU (%)'}")
    for e in entries:
        where = f"{e.hub_repo}/{e.hub_file}" if e.hub_file else ("bundled" if e.hub_repo is None else "not confirmed")
        miou = ", ".join(f"{k} {v:.1f}" for k, v in e.paper_miou.items()) or "-"
        print(f"{e.name:<27}{e.variant:<16}{e.word_len:>9}  {where:<44}{miou}")
    print("load one with detris.from_pretrained(name) or --model name; licence of the released weights: "
          f"{entries[0].licence}")
    return 0


def _cmd_convert_official(args: argparse.Namespace) -> int:
    from ..pretrained import load_official_checkpoint

    overrides = {"word_len": args.word_len} if args.word_len else {}
    model = load_official_checkpoint(args.checkpoint, variant=args.variant, **overrides)
    out = model.save_pretrained(args.out)
    how = "given" if args.variant else "read off the checkpoint's shapes"
    print(f"converted {args.checkpoint} ({model.config.name}, {how}; word_len {model.config.word_len}) -> {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(out_dir=Path(args.out), seed=args.seed, minutes=args.minutes, overrides=args.overrides)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_eval_command

    return run_eval_command(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run_train_command

    return run_train_command(args)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import run_predict_command

    return run_predict_command(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run_serve_command

    return run_serve_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import run_export_command

    return run_export_command(args)


#: What --model accepts (one resolver for every command: detris.pretrained.resolve_model_dir).
MODEL_HELP = ("a model directory, a Hub repo id, a registry name (detris info --pretrained), or an official "
              ".pth (a local file or owner/name/path/in/repo.pth)")
#: Help of --word-len for the commands that take a model by name.
WORD_LEN_HELP = ("token length of an official .pth the registry does not know (22 for RefCOCOg-umd models; "
                 "default: the registry's, else 17)")


def _dtype_name(name: str) -> str:
    """A ``--dtype`` value with the short forms (``bf16``, ...) read as torch's names."""
    from ..precision import ALIASES

    return ALIASES.get(name, name)


def _add_dtype_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--dtype", default=default, type=_dtype_name,
                   choices=["auto", "float32", "bfloat16", "float16", "int8"],
                   help=f"compute precision (default {default}); auto = bfloat16 where the CPU (avx512_bf16, "
                        "AMX) or GPU computes it natively, float32 elsewhere; float16 on a GPU only; int8: "
                        "int8 vision-tower Linear layers, CPU only; fp32, bf16 and fp16 are read as the same")


def _add_model_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    """--model (one resolver for every command) and --word-len; optional ones default to the bundled model."""
    if required:
        p.add_argument("--model", required=True, help=MODEL_HELP)
    else:
        p.add_argument("--model", default=DEMO_MODEL_NAME,
                       help=f"{MODEL_HELP} (default: the bundled {DEMO_MODEL_NAME}, which knows synthetic shapes only)")
    p.add_argument("--word-len", type=int, default=None, help=WORD_LEN_HELP)


def _add_info_and_conversion(sub: Any) -> None:
    p = sub.add_parser("info", help="parameter counts of a variant")
    p.add_argument("--variant", default="all", help="detris-b, detris-l, detris-l-mixed, detris-tiny or all")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--pretrained", action="store_true", help="list the released checkpoints (the registry)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert-official", help="official DETRIS .pth -> config.json + model.safetensors")
    p.add_argument("checkpoint", help="checkpoint written by the official train.py")
    p.add_argument("--variant", default=None,
                   help="detris-b, detris-l or detris-l-mixed (default: read off the checkpoint's shapes)")
    p.add_argument("--word-len", type=int, default=None, help="token length (22 for RefCOCOg-umd models)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_convert_official)


def _add_predict_parser(sub: Any) -> None:
    """``detris predict``: ``--image`` (one image or a folder, the same ``--text``) or ``--input`` (a collection)."""
    p = sub.add_parser("predict", help="segment the objects that expressions refer to in your images",
                       description="One image or a folder with the same --text for every image (--image), or a "
                                   "whole collection, each image with its own expressions (--input MANIFEST.jsonl).")
    _add_model_arguments(p, required=False)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file, or a folder of images (with --text)")
    source.add_argument("--input", metavar="MANIFEST.jsonl",
                        help='a collection: one JSON object per line, {"image": "path", "expressions": ["...", '
                             '"..."]} (or "text": "..."), paths relative to the manifest\'s folder; writes '
                             "OUT/predictions.jsonl (COCO RLE, box, area, score per expression) and OUT/errors.jsonl")
    p.add_argument("--text", action="append", metavar="EXPRESSION",
                   help="referring expression for --image (repeatable: one mask per expression)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold (default: the model's stored one, 0.35 in the official protocol)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; under "
                                                  "torchrun cuda:LOCAL_RANK)")
    _add_dtype_argument(p, "auto")
    p.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=True,
                   help="run the model one expression at a time, so that every mask is the one that image and that "
                        "expression alone give, whatever else shares the batch, and equals `detris eval`'s bit for "
                        "bit (default); --no-batch-invariant: one forward per batch, faster (most of all on a GPU), "
                        "a pixel at the threshold may differ")
    group = p.add_argument_group("collections (--input)")
    group.add_argument("--batch-size", type=int, default=8, help="expressions per forward, across images (default 8)")
    group.add_argument("--workers", type=int, default=2,
                       help="loader processes that read, letterbox and tokenize images ahead of the model (default 2)")
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in OUT: skip the pairs already in its predictions")
    group.add_argument("--strict", action="store_true", help="refuse a manifest with any bad line (default: skip "
                                                             "bad lines and list them in errors.jsonl)")
    group.add_argument("--save-masks", action="store_true", help="also write OUT/masks/*.png (0/255)")
    group.add_argument("--overlays", action="store_true", help="also write OUT/overlays/*.png")
    p.set_defaults(func=_cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detris", description="DETRIS referring image segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_info_and_conversion(sub)

    p = sub.add_parser("eval", help="evaluate on a REFER or gRefCOCO dataset with the official protocol")
    _add_model_arguments(p, required=True)
    p.add_argument("--dataset", required=True,
                   help="refcoco, refcoco+, refcocog_umd, refcocog_google, grefcoco (GRES metrics)")
    p.add_argument("--split", required=True, help="val, testA, testB, test")
    p.add_argument("--data-root", required=True, help="folder holding refcoco/, refcoco+/, refcocog/, grefcoco/ "
                                                      "(detris data download --root writes this layout)")
    p.add_argument("--image-root", default=None,
                   help="folder holding the COCO train2014 images (default: DATA_ROOT/images/train2014)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--save-predictions", default=None, help="folder for <ref_id>_<sent_id>.png masks")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them")
    _add_dtype_argument(p, "float32")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from ('auto': the run's last one)")
    p.add_argument("--save-full", action="store_true", help="save every weight, not only the trained ones")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="synthetic end-to-end demo on CPU")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a demo setting, e.g. --set train.lr=2e-3 (as `detris train --set`)")
    p.set_defaults(func=_cmd_demo)

    _add_predict_parser(sub)

    p = sub.add_parser("serve", help="web demo (Gradio)")
    _add_model_arguments(p, required=False)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting beyond this are rejected")
    p.add_argument("--cache-minutes", type=float, default=10.0,
                   help="uploads and overlays older than this are deleted from the server (default: 10)")
    _add_dtype_argument(p, "auto")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("export", help="export a model (its input size and token length; any batch size)")
    _add_model_arguments(p, required=True)
    p.add_argument("--format", required=True, choices=["onnx", "torch-export"])
    p.add_argument("--out", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="fix the graph's batch size (default: any batch size)")
    p.set_defaults(func=_cmd_export)

    from .data import add_data_parser

    add_data_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        # Expected user errors (missing files, bad values: every error type detris raises for its
        # input derives from one of these): one clear line, no traceback. A TypeError is a bug and keeps
        # its traceback.
        print(f"detris {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileWriteError as err:
        # An output could not be written (a full disk): the file and the free space, in one line.
        print(f"detris {args.command}: error: {err}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
