"""Image loading shared by the datasets and the Predictor.

`load_image` turns whatever a user hands us (a path, a PIL image or an array) into the one format the
pre-processing expects: a C-contiguous ``np.uint8`` array of shape ``(H, W, 3)`` in RGB order.

Conventions (chosen to match what the official code gets from ``cv2.imdecode(..., IMREAD_COLOR)``,
so that numbers computed from files agree with the original pipeline):

* EXIF orientation is applied (OpenCV's ``IMREAD_COLOR`` does this too), so ``H, W`` are the size of
  the image as displayed.
* Alpha is dropped, not composited: an RGBA pixel ``(r, g, b, a)`` becomes ``(r, g, b)``. OpenCV's
  ``IMREAD_COLOR`` does the same, and compositing would invent a background colour.
* Grey images (``L``, ``LA``, ``1``) are replicated to three channels.
* Palette images (``P``, ``PA``) are expanded through their palette (transparency ignored).
* ``CMYK`` (and other colour spaces PIL can convert) goes through PIL's conversion to RGB.
* 16-bit data (``I;16*`` and ``I`` modes, ``uint16`` arrays) keeps its high byte (``v >> 8``), which is
  exactly what OpenCV does when it reads a 16-bit PNG as 8-bit colour.
* Float data (PIL mode ``F``, float arrays) in ``[0, 1]`` is scaled by 255; float data whose maximum is
  above 1 is taken to be in ``[0, 255]`` already. Values are rounded and clipped to ``[0, 255]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageLoadError", "ImageNotFoundError", "ImageInput", "load_image"]

ImageInput = str | os.PathLike | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An image could not be read: corrupt, truncated, empty, not an image, or an unusable format.

    The message always names the file (or says that the input was an in-memory object).
    """


class ImageNotFoundError(ImageLoadError, FileNotFoundError):
    """The image file does not exist. Catchable both as `ImageLoadError` and as `FileNotFoundError`."""


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    # The [0, 1] convention is what ML code (ToTensor, matplotlib) produces; data already in
    # [0, 255] would be blown out by a second x255, so it is recognised by its range.
    if arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _array_to_rgb(arr: np.ndarray, source: str) -> np.ndarray:
    """Any supported numeric array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> uint8 (H, W, 3)."""
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]  # drop alpha (see module docstring)
        elif arr.shape[2] == 1:
            arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ImageLoadError(
            f"{source}: expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{source}: the image is empty (shape {tuple(arr.shape)})")

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        # Either byte order (PIL's I;16B arrives as big-endian '>u2'). OpenCV's 16 -> 8 bit rule: high byte.
        out = (arr.astype(np.uint16) >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        # Wider integers (PIL mode "I" is int32) carry 16-bit samples in practice (16-bit PNG/TIFF).
        out = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        out = _float_to_uint8(arr)
    else:
        raise ImageLoadError(f"{source}: unsupported array dtype {arr.dtype}")

    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def _pil_to_rgb(img: Image.Image, source: str) -> np.ndarray:
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make a readable image unreadable
        transposed = None
    if transposed is not None:
        img = transposed

    mode = img.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if mode in ("L", "1", "LA", "La", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        try:
            # convert("RGB") drops alpha without compositing, expands palettes and converts colour spaces.
            rgb = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageLoadError(f"{source}: cannot convert image mode {mode!r} to RGB ({exc})") from exc
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        # np.asarray understands the 16-bit and float modes; _array_to_rgb applies the bit-depth rules.
        return _array_to_rgb(np.asarray(img), source)
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"{source}: unsupported image mode {mode!r} ({exc})") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def load_image(image: ImageInput) -> np.ndarray:
    """Load an image as RGB ``np.uint8`` of shape ``(H, W, 3)`` (EXIF orientation applied, alpha dropped).

    Args:
        image: a file path (str or ``os.PathLike``), a ``PIL.Image.Image`` or a numpy array of shape
            ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (assumed RGB) or ``(H, W, 4)`` (RGBA).

    Returns:
        A new C-contiguous ``np.uint8`` array ``(H, W, 3)``; H and W are the displayed size.

    Raises:
        ImageNotFoundError: the path does not exist (also a ``FileNotFoundError``).
        ImageLoadError: the file is empty, truncated, corrupt, not an image, or of an unusable format;
            the message names the file.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, "<numpy array>")
    if isinstance(image, Image.Image):
        source = getattr(image, "filename", "") or "<PIL image>"
        try:
            image.load()
        except Exception as exc:  # as for files: whatever the decoder raises, the image is unreadable
            raise ImageLoadError(f"{source}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        return _pil_to_rgb(image, str(source))
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(
            f"load_image expects a path, a PIL.Image.Image or a numpy array, got {type(image).__name__}"
        )

    path = Path(image)
    if not path.is_file():
        raise ImageNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: the image file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            # load() forces the full decode now, so truncated data fails here and not later.
            img.load()
            return _pil_to_rgb(img, str(path))
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: image too large to decode safely ({exc})") from exc
    except Exception as exc:
        # PIL reports unknown formats as UnidentifiedImageError (an OSError), truncation as OSError,
        # malformed headers as SyntaxError/ValueError, and its format plugins let struct.error,
        # IndexError, ZeroDivisionError or MemoryError through on hostile bytes: all mean "unreadable".
        raise ImageLoadError(
            f"{path}: cannot read image ({type(exc).__name__}: {exc}); the file is corrupt, truncated "
            f"or not an image"
        ) from exc
