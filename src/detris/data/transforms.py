"""The official DETRIS letterbox: one affine map from the original image to the model input and back.

Every path that feeds the model (training, evaluation, the Predictor) and every path that maps a
prediction back to the original image goes through this module, so that the numbers we get are the
numbers the official code gets.  The facts reproduced here (checked against the official
``utils/dataset.py`` and ``engine/engine.py``):

* The forward map is built by ``cv2.getAffineTransform`` from three float32 corner points
  ``(0,0), (w,0), (0,h)`` to their letterboxed positions, with ``scale = min(H/h, W/w)`` and the
  content centred; the inverse map is ``cv2.getAffineTransform`` with the point sets swapped (not a
  matrix inversion, which differs in the last bits).
* The image is warped while still ``uint8`` (bicubic, border value ``CLIP_MEAN * 255``), so cv2
  rounds and saturates the result to 0..255; only then is it converted to float and normalised.
* The mask is warped as ``uint8`` 0/255 with bilinear interpolation and border 0, then divided by
  255 in float64; it is *not* re-binarised.
* Normalisation is ``((x / 255) - mean) / std`` in float32 torch arithmetic, in that order.
* A prediction is mapped back with the inverse map, bicubic, border 0, as float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = [
    "Letterbox",
    "CLIP_MEAN",
    "CLIP_STD",
    "BORDER_VALUE",
    "letterbox_matrix",
    "letterbox_image",
    "letterbox_mask",
    "normalize_image",
    "inverse_warp",
]

#: Per-channel RGB mean of CLIP; the official code normalises DINOv2 inputs with it too.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
#: Per-channel RGB standard deviation of CLIP.
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: Fill value of the letterbox border (before normalisation): the mean colour, so it normalises to ~0.
BORDER_VALUE: tuple[float, float, float] = tuple(c * 255 for c in CLIP_MEAN)  # type: ignore[assignment]

SizeLike = int | Sequence[int]


def _target_hw(size: SizeLike) -> tuple[int, int]:
    """Turn ``size`` (int for a square, or ``(height, width)``) into a checked ``(H, W)`` pair."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        try:
            pair = tuple(int(s) for s in size)
        except TypeError as exc:
            raise TypeError(
                f"size must be an int or a (height, width) pair, got {size!r}"
            ) from exc
        if len(pair) != 2:
            raise ValueError(f"size must be an int or a (height, width) pair, got {size!r}")
        hw = (pair[0], pair[1])
    if hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"target size must be positive, got (height, width) = {hw}")
    return hw


def letterbox_matrix(h: int, w: int, size: SizeLike) -> tuple[np.ndarray, np.ndarray]:
    """Affine maps between an ``h x w`` image and its letterboxed ``size`` version.

    Args:
        h, w: height and width of the original image, in pixels.
        size: target size, an int (square) or ``(height, width)``.

    Returns:
        ``(mat, inv)``: two ``(2, 3)`` float64 matrices in cv2 ``warpAffine`` convention.
        ``mat @ (x, y, 1)`` is where the original pixel ``(x, y)`` lands in the model input;
        ``inv`` maps model-input coordinates back to the original image.
    """
    if int(h) <= 0 or int(w) <= 0:
        raise ValueError(f"image size must be positive, got (h, w) = ({h}, {w})")
    in_h, in_w = _target_hw(size)
    h, w = int(h), int(w)
    # One isotropic scale so the whole image fits; the leftover is split evenly on both sides.
    scale = min(in_h / h, in_w / w)
    new_h, new_w = h * scale, w * scale
    off_x, off_y = (in_w - new_w) / 2.0, (in_h - new_h) / 2.0
    # The corner points are float32 on purpose: the official matrices are solved from float32
    # points, and solving from float64 points gives matrices that differ in the last bits.
    corners = np.array([[0, 0], [w, 0], [0, h]], dtype=np.float32)
    placed = np.array(
        [[off_x, off_y], [off_x + new_w, off_y], [off_x, off_y + new_h]], dtype=np.float32
    )
    mat = cv2.getAffineTransform(corners, placed)
    # The official inverse is solved from the swapped points rather than inverted numerically.
    inv = cv2.getAffineTransform(placed, corners)
    return mat, inv


def _is_identity(mat: np.ndarray) -> bool:
    return bool(np.array_equal(np.asarray(mat, dtype=np.float64), np.eye(2, 3)))


def letterbox_image(
    img: np.ndarray, size: SizeLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letterbox an RGB image to ``size`` exactly as the official data pipeline does.

    Args:
        img: ``(h, w, 3)`` uint8 RGB image (decode with cv2 and convert BGR->RGB, or use PIL).
        size: target size, an int (square) or ``(height, width)``.

    Returns:
        ``(warped, mat, inv)``: ``warped`` is ``(H, W, 3)`` float32 holding integer values 0..255
        (warped, not normalised; pass it to :func:`normalize_image`), ``mat``/``inv`` are the
        ``(2, 3)`` float64 forward and inverse maps from :func:`letterbox_matrix`.
    """
    _check_rgb(img)
    in_h, in_w = _target_hw(size)
    mat, inv = letterbox_matrix(img.shape[0], img.shape[1], (in_h, in_w))
    return _warp_image(img, mat, (in_h, in_w)), mat, inv


def _check_rgb(img: np.ndarray) -> None:
    """Refuse anything but the decoded ``(h, w, 3)`` uint8 RGB image the official pipeline warps."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"img must be a numpy array, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"img must be an (h, w, 3) RGB array, got shape {img.shape}; "
            "convert grayscale/RGBA images to RGB first"
        )
    if img.dtype != np.uint8:
        raise TypeError(
            f"img must be uint8 (0..255), got {img.dtype}; the official pipeline warps the decoded "
            "uint8 image, so convert with np.clip(x, 0, 255).astype(np.uint8) first"
        )


def _warp_image(img: np.ndarray, mat: np.ndarray, in_hw: tuple[int, int]) -> np.ndarray:
    """The uint8 RGB image warped by the forward map ``mat`` to ``in_hw``, as float32 0..255."""
    in_h, in_w = in_hw
    if _is_identity(mat):
        # Already the input size: cv2's bicubic warp by the identity returns the pixels unchanged
        # (its kernel weights at integer offsets are exactly 0 and 1), so skip the warp.
        return img.astype(np.float32)
    # Warping the uint8 image (not a float copy) matters: cv2 rounds and saturates the bicubic
    # result back to 0..255, and the official numbers include that rounding.
    warped = cv2.warpAffine(
        np.ascontiguousarray(img),
        mat,
        (in_w, in_h),
        flags=cv2.INTER_CUBIC,
        borderValue=list(BORDER_VALUE),
    )
    return warped.astype(np.float32)


def letterbox_mask(mask: np.ndarray, mat: np.ndarray, size: SizeLike) -> np.ndarray:
    """Warp a mask with the forward map from :func:`letterbox_matrix`, as the official training data.

    Args:
        mask: ``(h, w)`` mask. bool, or integers/floats with values in {0, 1}, are binary masks;
            a uint8 array with values above 1 is taken as a 0..255 grey mask (the official PNGs).
        mat: ``(2, 3)`` forward map.
        size: target size, an int (square) or ``(height, width)``.

    Returns:
        ``(H, W)`` float32 in [0, 1]; edges are soft (bilinear), not re-binarised.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (h, w), got shape {mask.shape}")
    if mask.dtype == np.uint8 and mask.size and mask.max() > 1:
        grey = mask
    elif mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer):
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ValueError(
                f"integer mask of dtype {mask.dtype} must hold 0/1 (or be uint8 0..255), "
                f"got values in [{mask.min()}, {mask.max()}]"
            )
        grey = mask.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(mask.dtype, np.floating):
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ValueError(
                f"float mask must lie in [0, 1], got values in [{mask.min()}, {mask.max()}]"
            )
        grey = np.rint(mask.astype(np.float64) * 255).astype(np.uint8)
    else:
        raise TypeError(f"unsupported mask dtype {mask.dtype}; use bool, 0/1 integers or uint8")
    in_h, in_w = _target_hw(size)
    if _is_identity(mat) and grey.shape == (in_h, in_w):
        # The identity warp returns the mask unchanged (see letterbox_image).
        return (grey / 255.0).astype(np.float32)
    # The official mask is a 0/255 uint8 PNG; warping it as uint8 rounds the bilinear edge values
    # to multiples of 1/255, which we keep for parity.
    warped = cv2.warpAffine(
        np.ascontiguousarray(grey),
        np.asarray(mat, dtype=np.float64),
        (in_w, in_h),
        flags=cv2.INTER_LINEAR,
        borderValue=0.0,
    )
    # Divide in float64 first (as the official code does with numpy) and round once to float32.
    return (warped / 255.0).astype(np.float32)


_MEAN_T = torch.tensor(CLIP_MEAN, dtype=torch.float32).reshape(3, 1, 1)
_STD_T = torch.tensor(CLIP_STD, dtype=torch.float32).reshape(3, 1, 1)


def normalize_image(arr: np.ndarray) -> torch.Tensor:
    """CLIP-normalise a letterboxed image.

    Args:
        arr: ``(H, W, 3)`` array with values 0..255 (uint8 or float), RGB.

    Returns:
        ``(3, H, W)`` contiguous float32 tensor ``((arr / 255) - CLIP_MEAN) / CLIP_STD``.
    """
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"arr must be an (H, W, 3) RGB array, got shape {arr.shape}")
    if not (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"arr must be uint8 or float with values 0..255, got {arr.dtype}")
    chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float32)
    # Three separate float32 ops in the official order; fusing them (e.g. precomputing
    # 1/(255*std)) would change the last bits of the input.
    return chw.div(255.0).sub_(_MEAN_T).div_(_STD_T).contiguous()


def inverse_warp(prob: np.ndarray, inv: np.ndarray, orig_h: int, orig_w: int) -> np.ndarray:
    """Map a model-input-sized map back to the original image (official test-time step).

    Args:
        prob: ``(H, W)`` float map at the model input size (probabilities, already upsampled).
        inv: ``(2, 3)`` inverse map from :func:`letterbox_matrix`.
        orig_h, orig_w: size of the original image.

    Returns:
        ``(orig_h, orig_w)`` float32 map (bicubic, border 0; values may overshoot [0, 1] slightly).
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"prob must be 2-D (H, W), got shape {prob.shape}; squeeze batch/channel axes")
    if not np.issubdtype(prob.dtype, np.floating):
        raise TypeError(f"prob must be a float map, got {prob.dtype}")
    inv = np.asarray(inv, dtype=np.float64)
    if inv.shape != (2, 3):
        raise ValueError(f"inv must be a (2, 3) affine matrix, got shape {inv.shape}")
    if int(orig_h) <= 0 or int(orig_w) <= 0:
        raise ValueError(f"original size must be positive, got ({orig_h}, {orig_w})")
    # The official prediction is float32 when it is warped back; do the same for parity.
    return cv2.warpAffine(
        np.ascontiguousarray(prob, dtype=np.float32),
        inv,
        (int(orig_w), int(orig_h)),
        flags=cv2.INTER_CUBIC,
        borderValue=0.0,
    )


@dataclass(frozen=True, eq=False)
class Letterbox:
    """The fit of one ``(h, w)`` image into the model's ``(H, W)`` input, both ways.

    The one object every path passes around (datasets, `Predictor`, evaluation, post-processing):
    forward for the image (`image`) and its mask (`mask`), inverse for a prediction (`restore`).

    Attributes:
        orig_size: ``(h, w)`` of the original image.
        input_size: ``(H, W)`` of the model input.
        matrix / inverse: the ``(2, 3)`` float64 forward and inverse maps of `letterbox_matrix`.
    """

    orig_size: tuple[int, int]
    input_size: tuple[int, int]
    matrix: np.ndarray
    inverse: np.ndarray

    @classmethod
    def fit(cls, h: int, w: int, size: SizeLike) -> Letterbox:
        """The letterbox of an ``h x w`` image into ``size`` (an int for a square, or ``(H, W)``)."""
        mat, inv = letterbox_matrix(h, w, size)
        return cls((int(h), int(w)), _target_hw(size), mat, inv)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB -> ``(H, W, 3)`` float32 with values 0..255 (see `letterbox_image`)."""
        if tuple(np.shape(rgb)[:2]) != self.orig_size:
            raise ValueError(f"this letterbox fits {self.orig_size} images, got shape {np.shape(rgb)}")
        _check_rgb(rgb)
        return _warp_image(rgb, self.matrix, self.input_size)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """``(h, w)`` mask -> ``(H, W)`` float32 in [0, 1] (see `letterbox_mask`)."""
        return letterbox_mask(mask, self.matrix, self.input_size)

    def restore(self, prob: np.ndarray) -> np.ndarray:
        """``(H, W)`` float map at the model input -> ``(h, w)`` float32 over the original image."""
        return inverse_warp(prob, self.inverse, *self.orig_size)
