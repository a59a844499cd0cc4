"""Overlays for humans: a mask tinted over the image with the referring expression beside it.

Pure PIL + numpy, no model code; used by the demo, the trainer's validation previews and anyone who
wants to look at a prediction.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .utils import write_failure

__all__ = ["overlay_mask", "draw_caption", "render_overlay", "caption_band", "render_readable", "save_overlay",
           "side_by_side", "save_image", "save_mask"]

#: Tint of the predicted mask (RGB) and of the ground-truth outline.
PRED_COLOR: tuple[int, int, int] = (255, 40, 200)
TRUE_COLOR: tuple[int, int, int] = (40, 255, 80)


def _as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _as_mask(mask: np.ndarray, hw: tuple[int, int], name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != hw:
        raise ValueError(f"{name} has shape {m.shape} but the image is {hw[0]}x{hw[1]} (HxW)")
    return m.astype(bool)


def overlay_mask(
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    color: tuple[int, int, int] = PRED_COLOR,
    alpha: float = 0.5,
    outline: np.ndarray | None = None,
    outline_color: tuple[int, int, int] = TRUE_COLOR,
) -> np.ndarray:
    """Tint ``mask`` over ``image``; optionally draw the boundary of ``outline`` (e.g. the ground truth).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool / 0-1 mask.
        color, alpha: tint colour and opacity.
        outline: optional second ``(H, W)`` mask whose 1-pixel boundary is drawn in ``outline_color``.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    img = _as_rgb(image)
    hw = img.shape[:2]
    m = _as_mask(mask, hw, "mask")
    out = img.astype(np.float32)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, dtype=np.float32)
    if outline is not None:
        o = _as_mask(outline, hw, "outline")
        # Boundary = mask minus its 4-neighbour erosion; no scipy/cv2 needed.
        inner = o.copy()
        inner[1:, :] &= o[:-1, :]
        inner[:-1, :] &= o[1:, :]
        inner[:, 1:] &= o[:, :-1]
        inner[:, :-1] &= o[:, 1:]
        out[o & ~inner] = outline_color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_caption(image: np.ndarray | Image.Image, text: str, font_size: int | None = None) -> Image.Image:
    """Write ``text`` on a dark band at the top of the image (wrapped to the width); size is unchanged."""
    img = Image.fromarray(_as_rgb(image))
    w, h = img.size
    size = font_size or max(10, min(h, w) // 20)
    font = _font(size)
    chars = max(8, int(w / (0.6 * size)))
    lines = textwrap.wrap(text, chars) or [""]
    band = (size + 4) * len(lines) + 4
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle([0, 0, w, min(band, h)], fill=(0, 0, 0, 150))
    for k, line in enumerate(lines):
        draw.text((4, 3 + k * (size + 4)), line, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def render_overlay(
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    text: str,
    true_mask: np.ndarray | None = None,
) -> Image.Image:
    """Predicted mask tinted, true mask outlined (if given), expression captioned; same size as ``image``."""
    return draw_caption(overlay_mask(image, mask, outline=true_mask), text)


#: Smallest side of a readable overlay (`render_readable`), in pixels.
READABLE_MIN_SIDE = 336


def caption_band(text: str, width: int, font_size: int) -> Image.Image:
    """A dark ``width``-wide band holding ``text`` in white, wrapped to the width."""
    font = _font(font_size)
    chars = max(8, int(width / (0.6 * font_size)))
    lines = textwrap.wrap(text, chars) or [""]
    line_height = font_size + 4
    band = Image.new("RGB", (width, line_height * len(lines) + 6), (24, 24, 24))
    draw = ImageDraw.Draw(band)
    for k, line in enumerate(lines):
        draw.text((4, 3 + k * line_height), line, fill=(255, 255, 255), font=font)
    return band


def render_readable(
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    text: str,
    true_mask: np.ndarray | None = None,
    min_side: int = READABLE_MIN_SIDE,
) -> Image.Image:
    """An overlay for a person to read: enlarged by a whole factor (nearest neighbour, so pixels stay
    sharp) until its smaller side is at least ``min_side``, with the expression in a band *above* the
    image so that the caption hides nothing of the scene.

    Returns:
        RGB image of width ``k * W`` and height ``k * H`` + the band, ``k = ceil(min_side / min(H, W))``
        (at least 1).
    """
    tinted = Image.fromarray(overlay_mask(image, mask, outline=true_mask))
    factor = max(1, -(-min_side // min(tinted.size)))
    big = tinted.resize((tinted.width * factor, tinted.height * factor), Image.Resampling.NEAREST)
    band = caption_band(text, big.width, max(12, big.width // 24))
    canvas = Image.new("RGB", (big.width, band.height + big.height))
    canvas.paste(band, (0, 0))
    canvas.paste(big, (0, band.height))
    return canvas


def side_by_side(panels: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """Paste images left to right on a white canvas (for comparing prediction and ground truth)."""
    if not panels:
        raise ValueError("side_by_side needs at least one image")
    h = max(p.height for p in panels)
    w = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return canvas


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    text: str,
    true_mask: np.ndarray | None = None,
) -> Path:
    """`render_readable` written to ``path`` as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(path, render_readable(image, mask, text, true_mask))


def save_image(path: str | os.PathLike, image: Image.Image) -> Path:
    """Write ``image`` to ``path`` (format from the suffix); a failed write (a full disk) raises
    `detris.utils.FileWriteError` naming the file and the free space, and leaves no partial file."""
    path = Path(path)
    try:
        image.save(path)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise write_failure(path, err) from err
    return path


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """A bool ``(H, W)`` mask as a 0/255 grey PNG (see `save_image`)."""
    return save_image(path, Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L"))
