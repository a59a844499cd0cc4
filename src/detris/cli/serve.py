"""``detris serve``: the web demo for a model (default: the bundled demo model)."""

from __future__ import annotations

import argparse
import sys

from ..app import build_app, import_gradio, launch_app
from ..bundled import DEMO_MODEL_NAME
from ..predictor import Predictor
from ..pretrained import resolve_model_dir

__all__ = ["run_serve_command"]


def run_serve_command(args: argparse.Namespace) -> int:
    """``detris serve``: load the model, build the page and serve it until interrupted.

    Returns:
        2 when Gradio is not installed (with the install command on stderr); the server's exit
        otherwise. Model errors propagate as FileNotFoundError / ValueError for the CLI to print.
    """
    try:
        import_gradio()
    except ImportError as exc:
        print(f"detris serve: error: {exc}", file=sys.stderr)
        return 2
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.queue_size < 1:
        raise ValueError(f"--queue-size must be at least 1, got {args.queue_size}")
    model_dir = resolve_model_dir(args.model or DEMO_MODEL_NAME, args.word_len)
    predictor = Predictor.from_pretrained(model_dir, device=args.device, dtype=getattr(args, "dtype", "auto"))
    app = build_app(predictor, max_upload_mb=args.max_upload_mb, queue_size=args.queue_size,
                    model_name=str(args.model or DEMO_MODEL_NAME), cache_minutes=args.cache_minutes)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"detris serve: listening on {args.host}: the demo has no authentication; anyone who can "
              "reach this address can use it", file=sys.stderr)
    print(f"detris serve: {predictor!r} from {args.model or DEMO_MODEL_NAME} ({model_dir})")
    launch_app(app, args.host, args.port)
    return 0
