"""``detris serve``: a small Gradio web demo around `detris.predictor.Predictor`.

Upload an image, type one referring expression per line, press *Segment*: the page shows one overlay
(mask tinted, expression written on it) per expression and a status line.

Serving choices, and why:

* One inference at a time (``default_concurrency_limit=1``) behind a bounded queue (``max_size``):
  the model is not meant to run concurrently on a small machine, and a full queue answers
  "queue is full" at once instead of letting requests pile up in memory.
* ``api_open=False``: the REST routes that would skip the queue are closed, so the bound holds for
  API clients too.
* Uploads are capped twice: by Gradio's ``max_file_size`` (the upload route refuses bigger files) and
  by the handler, which also reads the pixel count from the file header *before* decoding, so a small
  file that decodes to a giant image (a "decompression bomb") is refused with a message.
* Every refusal (no image, unreadable image, empty or too many expressions) is a ``gr.Error`` with a
  sentence that says what to do; the server keeps serving.
* Offline: no analytics or version check (``GRADIO_ANALYTICS_ENABLED=False``), no share tunnel, no
  server-side rendering (which would start Node), the default theme's fonts are served locally.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .bundled import DEMO_MODEL_NAME
from .data.images import ImageLoadError, load_image
from .predictor import NO_MATCH, Predictor, check_texts
from .visualize import render_overlay

if TYPE_CHECKING:  # gradio is an optional dependency (the ``demo`` extra)
    import gradio as gr

__all__ = [
    "DemoInputError",
    "DemoLimits",
    "build_app",
    "launch_app",
    "make_handler",
    "parse_expressions",
    "import_gradio",
    "segment_upload",
]

log = logging.getLogger(__name__)

#: Model directory used when ``--model`` is not given (written by ``make demo``).

#: Environment that keeps Gradio and the Hugging Face client from calling home. Set before gradio is
#: imported because some of it is read at import time; values the user set explicitly are kept.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
}

_INSTALL_HINT = 'the web demo needs Gradio: pip install "detris[demo]"'

#: Longest caption drawn on an overlay; the full expression is still in the status text.
_CAPTION_CHARS = 120


class DemoInputError(ValueError):
    """A request the demo refuses; the message is meant for the person using the page."""


@dataclass(frozen=True)
class DemoLimits:
    """What one request may ask for.

    Attributes:
        max_upload_mb: largest image file, in MiB (also passed to Gradio's upload route).
        max_pixels: largest image, width x height; checked from the file header before decoding.
            The default (4096 x 4096) keeps a request with ``max_expressions`` probability maps and
            overlays at full size around 1 GB.
        max_expressions: most expressions (lines) per request.
        max_text_chars: longest text box content, in characters (tokenising megabytes of text would
            hold the single worker for nothing: the model reads only its first ``word_len`` tokens).
    """

    max_upload_mb: float = 20.0
    max_pixels: int = 4096 * 4096
    max_expressions: int = 8
    max_text_chars: int = 4000

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        for name in ("max_pixels", "max_expressions", "max_text_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)


# ------------------------------------------------------------------------------ request handling


def parse_expressions(text: str | None, limits: DemoLimits = DemoLimits()) -> list[str]:
    """The expressions in the text box: one per line, surrounding spaces removed, blank lines skipped.

    Raises:
        DemoInputError: no expression, too many, or too much text.
    """
    text = text or ""
    if len(text) > limits.max_text_chars:
        raise DemoInputError(
            f"the text is {len(text)} characters long; at most {limits.max_text_chars} are accepted "
            "(the model reads only the first few words of each expression anyway)"
        )
    lines = [line.strip() for line in text.splitlines()]
    expressions = [line for line in lines if line]
    if not expressions:
        raise DemoInputError(
            "type a referring expression, e.g. 'the dog on the left' (one expression per line)"
        )
    if len(expressions) > limits.max_expressions:
        raise DemoInputError(
            f"{len(expressions)} expressions given; at most {limits.max_expressions} per request "
            "(one per line)"
        )
    return expressions


def _check_image_file(path: str | os.PathLike, limits: DemoLimits) -> None:
    """Refuse files over the size limits without decoding them.

    Only the header is read here (``Image.open`` is lazy); anything PIL cannot even open is left to
    `load_image`, whose error message names the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DemoInputError("the uploaded image is no longer on the server; upload it again")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise DemoInputError(
            f"the image file is {size / 2**20:.1f} MB; at most {limits.max_upload_mb:g} MB is accepted"
        )
    too_big = f"at most {limits.max_pixels / 1e6:.1f} MP is accepted: resize it and try again"
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        # PIL refuses headers over twice its MAX_IMAGE_PIXELS before we see the size.
        raise DemoInputError(
            f"the image has over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP; {too_big}"
        ) from None
    except Exception:  # unreadable files get load_image's precise message
        return
    if width * height > limits.max_pixels:
        raise DemoInputError(
            f"the image is {width}x{height} pixels ({width * height / 1e6:.1f} MP); {too_big}"
        )


def _short(text: str, limit: int = _CAPTION_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def segment_upload(
    predictor: Predictor,
    image: None | str | os.PathLike,
    text: str | None,
    threshold: float | None = None,
    limits: DemoLimits = DemoLimits(),
) -> tuple[list[tuple[Image.Image, str]], str]:
    """One demo request: overlays and a status text for an uploaded image file and the text box.

    Args:
        predictor: the model.
        image: path of the uploaded file (None when nothing was uploaded).
        text: the text box: one expression per line.
        threshold: mask threshold, strictly between 0 and 1 (default: the model's stored one).
        limits: request limits.

    Returns:
        ``(overlays, status)``: one ``(PIL image at the image's displayed size, caption)`` per
        expression, in order, and a human-readable summary.

    Raises:
        DemoInputError, ImageLoadError, ValueError: the request is refused; the message says why.
    """
    if image is None or (isinstance(image, str) and not image):
        raise DemoInputError("upload an image first (PNG, JPEG, WebP, BMP, GIF or TIFF)")
    expressions = parse_expressions(text, limits)
    threshold = predictor.processing.threshold if threshold is None else threshold
    if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) < 1.0):
        raise DemoInputError(f"the threshold must be strictly between 0 and 1, got {threshold!r}")
    # Text errors (an expression with no tokens) are cheaper to find than image errors.
    check_texts(expressions, predictor.word_len)
    _check_image_file(image, limits)
    rgb = load_image(image)

    start = time.perf_counter()
    predictions = predictor.predict(rgb, expressions, threshold=float(threshold))
    seconds = time.perf_counter() - start

    height, width = rgb.shape[:2]
    overlays = []
    lines = [
        f"{len(predictions)} expression(s) on a {width}x{height} image in {seconds:.2f} s "
        f"({predictor.device.type}, threshold {float(threshold):g})."
    ]
    for k, p in enumerate(predictions, start=1):
        # A no-target head's decision is said on the overlay and in its caption; a model without that
        # head (every official checkpoint) only found nothing above the threshold.
        decided = p.no_target and p.no_target_probability is not None
        label = f"{_short(p.text)} ({NO_MATCH})" if decided else _short(p.text)
        caption = f"{_short(p.text, 80)} ({NO_MATCH})" if decided else _short(p.text, 80)
        overlays.append((render_overlay(rgb, p.mask, label), caption))
        share = 100.0 * p.area / float(p.mask.size)
        note = f"{share:.1f} % of the image"
        if decided:
            note = f"{NO_MATCH} (no-target probability {p.no_target_probability:.2f})"
        elif p.area == 0:
            note = f"nothing above the threshold: {NO_MATCH}"
        if p.truncated:
            note += f"; cut to the model's {predictor.word_len} tokens"
        lines.append(f"{k}. {_short(p.text, 80)}: {note}")
    return overlays, "\n".join(lines)


def make_handler(
    predictor: Predictor, limits: DemoLimits = DemoLimits()
) -> Callable[..., tuple[list[tuple[Image.Image, str]], str]]:
    """The Gradio event handler: `segment_upload` with every refusal turned into a ``gr.Error``.

    ``gr.Error`` shows its message in the page (and reaches API clients) without a traceback; an
    unexpected exception is logged with its traceback and answered with a short message, so a bug hit
    by one request does not look like a dead server to the next.
    """
    gr = import_gradio()

    # A refused input is the user's to fix, not a server fault: no traceback in the log.
    error_options = _supported(gr.Error.__init__, title="Cannot segment", print_exception=False)

    def segment_image(image: str | None, text: str | None, threshold: float | None = None):
        """Segment the object each line of ``text`` refers to in ``image``."""
        try:
            return segment_upload(predictor, image, text, threshold, limits)
        except (ImageLoadError, ValueError, TypeError) as exc:
            raise gr.Error(_user_message(exc, image), **error_options) from None
        except Exception as exc:  # the server must keep serving
            log.exception("detris serve: request failed")
            raise gr.Error(
                f"Internal error ({type(exc).__name__}); the request was not processed", title="Error"
            ) from None

    return segment_image


def _user_message(exc: Exception, image: Any) -> str:
    """The exception's message for the page: without the server-side path of the upload.

    The path of Gradio's cache copy means nothing to the person who uploaded the file, and shows how
    the server stores files.
    """
    message = str(exc)
    if isinstance(exc, ImageLoadError) and image is not None:
        path = str(image)
        if message.startswith(f"{path}: "):
            message = message[len(path) + 2 :]
        message = message.replace(f" {path!r}", "").replace(f" {path}", "").replace(path, "the file")
        return f"The uploaded image cannot be used: {message}"
    return message[:1].upper() + message[1:] if message else type(exc).__name__


# ------------------------------------------------------------------------------------ the app


def _set_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _supported(fn: Callable, **kwargs: Any) -> dict:
    """``kwargs`` less those ``fn`` does not take.

    Used only for options that older Gradio 6 releases may lack and whose absence changes nothing
    that matters (layout details, log noise, features such as SSR that such a release does not have).
    """
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def import_gradio():
    """Import gradio with the offline settings in place; ImportError names the extra to install."""
    _set_offline_env()
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return gr


def _upload_component(gr: Any, **kwargs: Any) -> Any:
    """An image upload that hands the handler the uploaded file's path untouched.

    ``gr.Image(type="filepath")`` opens the file with PIL during pre-processing, so a corrupt upload
    fails there with a generic error before the handler can explain it; this template of ``gr.Image``
    (same page widget) skips that and lets `segment_upload` report the problem.
    """

    import gradio.component_meta as component_meta

    # Gradio's component metaclass writes a type stub (``app.pyi``) beside the module that defines a
    # component subclass; an installed package must not write into its own folder, so that hook is
    # switched off while the class is created.
    write_stub = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:

        class ImageUpload(gr.Image):
            is_template = True  # rendered by the frontend as a plain gr.Image

            def preprocess(self, payload: Any) -> str | None:
                path = getattr(payload, "path", None)
                url = getattr(payload, "url", None) or ""
                if payload is None or path is None or url.startswith("data:"):
                    # Nothing uploaded, or pasted/webcam data that only Gradio knows how to write out.
                    return super().preprocess(payload)
                return str(path)

    finally:
        component_meta.create_or_modify_pyi = write_stub
    return ImageUpload(**kwargs)


#: Shown when the page serves the bundled model, which has only ever seen synthetic scenes.
BUNDLED_MODEL_NOTE = (
    f"**`{DEMO_MODEL_NAME}` knows synthetic shapes only** (circles, squares, triangles and stars on grey). "
    "For photos, serve a released DETRIS checkpoint: `detris convert-official CKPT.pth "
    "--out DIR`, then `detris serve --model DIR`."
)


def build_app(
    predictor: Predictor,
    max_upload_mb: float = 20.0,
    queue_size: int = 16,
    *,
    max_pixels: int = DemoLimits.max_pixels,
    max_expressions: int = DemoLimits.max_expressions,
    title: str = "DETRIS referring segmentation",
    model_name: str | None = None,
    cache_minutes: float = 10.0,
) -> gr.Blocks:
    """The demo page as a Gradio Blocks app, queued and ready for `launch_app`.

    Args:
        predictor: the model to serve.
        max_upload_mb: largest image file accepted (MiB).
        queue_size: most requests waiting for the (single) worker; more are refused with "queue full".
        max_pixels: largest image (width x height).
        max_expressions: most expressions per request.
        title: page title and heading.
        model_name: what the model was loaded from, shown on the page (the bundled demo model's
            name adds a line saying what it knows and how to serve a released checkpoint instead).
        cache_minutes: uploads and rendered overlays older than this are deleted (checked every
            minute, or every ``cache_minutes`` when shorter). It must exceed the longest queue wait:
            identical uploads share one file, which a waiting request still needs.
    """
    gr = import_gradio()
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    if not cache_minutes > 0:
        raise ValueError(f"cache_minutes must be positive, got {cache_minutes}")
    cache_age = max(1, round(cache_minutes * 60))
    limits = DemoLimits(max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_expressions=max_expressions)
    handler = make_handler(predictor, limits)

    # delete_cache: uploads (refused ones included) and rendered overlays are written to Gradio's cache
    # folder; without a clean-up a long-running demo fills the disk. Gradio deletes only the files this
    # app created, and all of them when the server stops.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(min(60, cache_age), cache_age)) as app:
        gr.Markdown(
            f"## {title}\n"
            "Upload an image, type what to segment (one expression per line, at most "
            f"{limits.max_expressions}), and press **Segment**."
        )
        with gr.Row():
            with gr.Column():
                image = _upload_component(
                    gr, label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                    elem_id="detris-image",
                )
                text = gr.Textbox(
                    label="Referring expressions (one per line)", lines=3,
                    placeholder="the dog on the left\nthe red cup", max_length=limits.max_text_chars,
                    elem_id="detris-text",
                )
                threshold = gr.Slider(0.05, 0.95, value=predictor.processing.threshold, step=0.05, label="Mask threshold",
                                      elem_id="detris-threshold")
                button = gr.Button("Segment", variant="primary", elem_id="detris-run")
            with gr.Column():
                # fit_columns=False: a single overlay would otherwise fill the row and be cropped.
                gallery = gr.Gallery(label="Overlays", columns=2, height="auto", format="png", object_fit="contain",
                                     interactive=False, elem_id="detris-gallery",
                                     **_supported(gr.Gallery.__init__, fit_columns=False))
                status = gr.Textbox(label="Status", lines=3, interactive=False, elem_id="detris-status")
        if model_name == DEMO_MODEL_NAME:
            gr.Markdown(BUNDLED_MODEL_NOTE, elem_id="detris-model-note")
        gr.Markdown(
            f"Model: `{model_name or getattr(predictor.model.config, 'name', type(predictor.model).__name__)}` on "
            f"{predictor.device.type}. Files up to {limits.max_upload_mb:g} MB and "
            f"{limits.max_pixels / 1e6:.1f} MP. Requests are served one at a time; at most {queue_size} "
            "wait in the queue."
        )
        button.click(handler, inputs=[image, text, threshold], outputs=[gallery, status],
                     api_name="segment", concurrency_limit=1)

    app.queue(max_size=queue_size, default_concurrency_limit=1, api_open=False)
    app.detris_limits = limits  # read back by launch_app for the upload route's limit
    return app


def launch_app(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    block: bool = True,
    quiet: bool = False,
) -> None:
    """Serve ``app`` (from `build_app`) on ``host:port``, offline-safe.

    Args:
        block: wait until interrupted (the CLI); False returns once the server is up (tests).
        quiet: do not print the URL banner.
    """
    limits: DemoLimits = getattr(app, "detris_limits", DemoLimits())
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=limits.max_upload_bytes,
        share=False,  # a share link is a tunnel through Gradio's servers
        inbrowser=False,
        show_error=True,
        quiet=quiet,
        prevent_thread_lock=not block,
        # SSR would start a Node server; MCP and monitoring add endpoints the demo does not need.
        **_supported(app.launch, ssr_mode=False, mcp_server=False, enable_monitoring=False),
    )
