"""Letterbox, normalisation and test-time post-processing against hand-built references."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detris.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    Letterbox,
    inverse_warp,
    letterbox_image,
    letterbox_mask,
    letterbox_matrix,
    normalize_image,
)
from detris.postprocess import binarize, logits_to_probability

# (original h, original w, target) including very non-square inputs and non-square targets.
CASES = [
    (480, 640, 448),
    (640, 480, 448),
    (37, 1000, 448),
    (1000, 37, 448),
    (448, 448, 448),
    (300, 300, 448),
    (123, 457, (448, 672)),
    (500, 200, (336, 224)),
]


def hand_points(h: int, w: int, target) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """The three corners of the original image and where a centred, aspect-preserving letterbox puts them."""
    th, tw = (target, target) if isinstance(target, int) else target
    s = min(th / h, tw / w)
    bx = (tw - w * s) / 2
    by = (th - h * s) / 2
    src = np.float32([[0, 0], [w, 0], [0, h]])
    dst = np.float32([[bx, by], [bx + w * s, by], [bx, by + h * s]])
    return src, dst, s, bx, by


@pytest.mark.parametrize("h,w,target", CASES)
def test_matrix_equals_three_point_affine(h, w, target):
    src, dst, s, bx, by = hand_points(h, w, target)
    mat, inv = letterbox_matrix(h, w, target)
    assert mat.shape == (2, 3) and inv.shape == (2, 3)
    assert mat.dtype == np.float64 and inv.dtype == np.float64
    # Same construction as the official code: bit-identical matrices.
    np.testing.assert_array_equal(mat, cv2.getAffineTransform(src, dst))
    np.testing.assert_array_equal(inv, cv2.getAffineTransform(dst, src))
    # And the analytic form: uniform scale, centred offsets (float32 points -> small error).
    np.testing.assert_allclose(mat, [[s, 0, bx], [0, s, by]], atol=2e-4, rtol=1e-5)
    np.testing.assert_allclose(inv, [[1 / s, 0, -bx / s], [0, 1 / s, -by / s]], atol=2e-3, rtol=1e-5)


def test_matrix_known_numbers():
    # 100 x 200 into 448: scale 2.24, content 448 x 224 starting at y = 112.
    mat, inv = letterbox_matrix(100, 200, 448)
    np.testing.assert_allclose(mat, [[2.24, 0, 0], [0, 2.24, 112]], atol=1e-5)
    np.testing.assert_allclose(inv, [[1 / 2.24, 0, 0], [0, 1 / 2.24, -50]], atol=1e-5)


@pytest.mark.parametrize("h,w,target", CASES)
def test_image_equals_direct_cv2(h, w, target):
    rng = np.random.default_rng(h * 7 + w)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    src, dst, *_ = hand_points(h, w, target)
    th, tw = (target, target) if isinstance(target, int) else target
    expected = cv2.warpAffine(
        img, cv2.getAffineTransform(src, dst), (tw, th), flags=cv2.INTER_CUBIC,
        borderValue=(0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),
    )
    out, mat, inv = letterbox_image(img, target)
    assert out.shape == (th, tw, 3) and out.dtype == np.float32
    # Warped as uint8 (rounded, saturated), then handed out as float.
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_image_border_and_content():
    img = np.zeros((100, 200, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 200, 250
    out, _, _ = letterbox_image(img, 448)
    # Border = CLIP mean * 255 rounded by cv2 into uint8: 122.77 -> 123, 116.75 -> 117, 104.09 -> 104.
    np.testing.assert_array_equal(out[0, 0], [123, 117, 104])
    np.testing.assert_array_equal(out[447, 447], [123, 117, 104])
    np.testing.assert_array_equal(out[100, 224], [123, 117, 104])
    # Content occupies rows 112..335 (224 rows), full width.
    np.testing.assert_array_equal(out[120:328, 5:443], np.broadcast_to([10, 200, 250], (208, 438, 3)))


def test_image_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        letterbox_image(np.zeros((10, 10, 3), np.float32), 448)
    with pytest.raises(ValueError, match="RGB"):
        letterbox_image(np.zeros((10, 10), np.uint8), 448)
    with pytest.raises(ValueError):
        letterbox_image(np.zeros((10, 10, 3), np.uint8), (448, 0))


@pytest.mark.parametrize("h,w,target", CASES[:4] + CASES[6:])
def test_mask_equals_direct_cv2(h, w, target):
    rng = np.random.default_rng(h + w)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (max(w // 3, 1), max(h // 3, 1)), 20, 0, 360, 1, -1)
    mask[rng.integers(0, h, 10), rng.integers(0, w, 10)] = 1
    src, dst, *_ = hand_points(h, w, target)
    th, tw = (target, target) if isinstance(target, int) else target
    expected = cv2.warpAffine(mask * 255, cv2.getAffineTransform(src, dst), (tw, th),
                              flags=cv2.INTER_LINEAR, borderValue=0) / 255.0
    mat, _ = letterbox_matrix(h, w, target)
    for m in (mask, mask.astype(bool), mask * 255, mask.astype(np.float32)):
        out = letterbox_mask(m, mat, target)
        assert out.dtype == np.float32 and out.shape == (th, tw)
        np.testing.assert_array_equal(out, expected.astype(np.float32))
    # Soft edges are kept (no re-binarisation) when the image is rescaled.
    if (h, w) != (th, tw):
        assert np.any((out > 0) & (out < 1))


def test_mask_rejects_non_binary():
    mat, _ = letterbox_matrix(10, 10, 14)
    with pytest.raises(ValueError):
        letterbox_mask(np.full((10, 10), 3, np.int64), mat, 14)
    with pytest.raises(ValueError):
        letterbox_mask(np.zeros((10, 10, 1), np.uint8), mat, 14)


def _random_blobs(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    for _ in range(3):
        center = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)))
        axes = (int(rng.integers(w // 8, w // 4)) + 1, int(rng.integers(h // 8, h // 4)) + 1)
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    poly = np.stack([rng.integers(0, w, 4), rng.integers(0, h, 4)], 1).astype(np.int32)
    cv2.fillConvexPoly(mask, cv2.convexHull(poly), 1)
    return mask


@pytest.mark.parametrize(
    "h,w,target",
    [(480, 640, 448), (640, 480, 448), (120, 700, 448), (700, 120, 448), (60, 80, 448),
     (1000, 300, 448), (333, 517, (448, 672)), (250, 900, (224, 448))],
)
def test_letterbox_then_inverse_recovers_mask(h, w, target):
    rng = np.random.default_rng(h * w)
    for _ in range(3):
        mask = _random_blobs(h, w, rng)
        mat, inv = letterbox_matrix(h, w, target)
        soft = letterbox_mask(mask, mat, target)
        back = inverse_warp(soft, inv, h, w)
        assert back.shape == (h, w) and back.dtype == np.float32
        pred = back > 0.35
        gt = mask.astype(bool)
        iou = np.logical_and(pred, gt).sum() / np.logical_or(pred, gt).sum()
        assert iou >= 0.98, f"round-trip IoU {iou:.4f} for {h}x{w} -> {target}"


def test_normalize_hand_values():
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (255, 0, 128)
    arr[1, 2] = (7, 77, 177)
    out = normalize_image(arr)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (3, 2, 3) and out.is_contiguous()
    mean, std = np.array(CLIP_MEAN), np.array(CLIP_STD)
    # Hand-computed in float64: (v / 255 - mean) / std per channel.
    expected00 = (np.array([255, 0, 128]) / 255 - mean) / std
    expected12 = (np.array([7, 77, 177]) / 255 - mean) / std
    expected_zero = (0 - mean) / std
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected00, atol=1e-6)
    np.testing.assert_allclose(out[:, 1, 2].numpy(), expected12, atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1].numpy(), expected_zero, atol=1e-6)
    assert abs(float(out[0, 0, 0]) - 1.9303361) < 1e-6  # (1 - 0.48145466) / 0.26862954
    # The order of operations is the official one, step by step in float32 (bit-exact).
    f32 = np.float32
    for c, v in enumerate((255, 0, 128)):
        step = (f32(v) / f32(255.0) - f32(CLIP_MEAN[c])) / f32(CLIP_STD[c])
        assert float(out[c, 0, 0]) == float(step)
    # A float input holding the same values gives the same tensor.
    torch.testing.assert_close(normalize_image(arr.astype(np.float32)), out, rtol=0, atol=0)
    # The obvious wrong order (x / 255 / std - mean) is far off, so the check above can fail.
    wrong = 128 / 255 / CLIP_STD[2] - CLIP_MEAN[2]
    assert abs(float(out[2, 0, 0]) - wrong) > 0.1


def test_normalize_rejects_bad_shape():
    with pytest.raises(ValueError):
        normalize_image(np.zeros((3, 4, 4), np.uint8))


def test_inverse_warp_equals_direct_cv2():
    h, w = 130, 290
    src, dst, *_ = hand_points(h, w, 448)
    prob = np.random.default_rng(0).random((448, 448)).astype(np.float32)
    expected = cv2.warpAffine(prob, cv2.getAffineTransform(dst, src), (w, h),
                              flags=cv2.INTER_CUBIC, borderValue=0)
    _, inv = letterbox_matrix(h, w, 448)
    out = inverse_warp(prob, inv, h, w)
    assert out.shape == (h, w) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # float64 input is computed in float32, as the official float32 prediction.
    np.testing.assert_array_equal(inverse_warp(prob.astype(np.float64), inv, h, w), expected)
    with pytest.raises(ValueError, match="2-D"):
        inverse_warp(prob[None], inv, h, w)


# ------------------------------------------------------------------------------- postprocess
def test_postprocess_constant_logit():
    logits = torch.full((2, 1, 32, 32), 1.5)
    sizes = [(100, 200), (333, 77)]
    out = logits_to_probability(logits, [Letterbox.fit(h, w, 448) for h, w in sizes])
    assert [o.shape for o in out] == sizes
    expected = 1 / (1 + math.exp(-1.5))  # 0.8175744761936437
    for o in out:
        assert o.dtype == np.float32
        # Away from the last row/column the map is the constant sigmoid value.
        np.testing.assert_allclose(o[:-1, :-1], expected, atol=1e-6)
    # 333 x 77: the last original row samples the 448 map at y = 332 * 448/333 = 446.7, whose cubic
    # footprint reaches row 448 outside the map; the official border value 0 replaces a
    # negative-weight neighbour there, so the edge row overshoots (official behaviour, kept).
    assert out[1][-1].min() > expected + 0.05


def test_postprocess_follows_official_order():
    # A step edge: left half +4, right half -4 at 32x32; image 100x200 letterboxed into 448.
    logits = torch.full((1, 1, 32, 32), -4.0)
    logits[..., :16] = 4.0
    h, w = 100, 200
    src, dst, *_ = hand_points(h, w, 448)
    inv_hand = cv2.getAffineTransform(dst, src)
    # The protocol written out: sigmoid, bicubic(align_corners=True) to 448, inverse affine cubic.
    up = F.interpolate(torch.sigmoid(logits), size=(448, 448), mode="bicubic", align_corners=True)
    expected = cv2.warpAffine(up[0, 0].numpy(), inv_hand, (w, h), flags=cv2.INTER_CUBIC, borderValue=0)
    by_hand = Letterbox((h, w), (448, 448), cv2.getAffineTransform(src, dst), inv_hand)
    out = logits_to_probability(logits, [by_hand])[0]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Interpolating the logits before the sigmoid gives visibly different maps near the edge.
    swapped = torch.sigmoid(F.interpolate(logits, size=(448, 448), mode="bicubic", align_corners=True))
    swapped = cv2.warpAffine(swapped[0, 0].numpy(), inv_hand, (w, h), flags=cv2.INTER_CUBIC, borderValue=0)
    assert np.abs(swapped - expected).max() > 1e-2
    mask = binarize(out)
    assert mask.dtype == np.bool_ and mask.shape == (h, w)
    assert mask[:, :95].all() and not mask[:, 105:].any()


def test_binarize_is_strict():
    prob = np.array([0.35, np.nextafter(np.float32(0.35), np.float32(1)), 0.2, 0.9], np.float32)
    np.testing.assert_array_equal(binarize(prob), [False, True, False, True])
    np.testing.assert_array_equal(binarize(torch.tensor([0.5, 0.5]), threshold=0.5), [False, False])


def test_postprocess_rejects_bad_shapes():
    box = Letterbox.fit(10, 10, 448)
    with pytest.raises(ValueError, match=r"\(N, 1, h, w\)"):
        logits_to_probability(torch.zeros(1, 32, 32), [box])
    with pytest.raises(ValueError, match="one per sample"):
        logits_to_probability(torch.zeros(2, 1, 32, 32), [box])


@pytest.mark.parametrize("h,w", [(112, 112), (448, 672)])
def test_input_already_at_size_is_unchanged_like_the_cv2_warp(h, w):
    # An image already at the input size skips the warp; cv2's identity warp must give the same values.
    rng = np.random.default_rng(h)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    src, dst, *_ = hand_points(h, w, (h, w))
    by_cv2 = cv2.warpAffine(img, cv2.getAffineTransform(src, dst), (w, h), flags=cv2.INTER_CUBIC,
                            borderValue=(1, 2, 3))
    out, mat, _ = letterbox_image(img, (h, w))
    np.testing.assert_array_equal(out, by_cv2.astype(np.float32))
    mask = (rng.random((h, w)) > 0.5).astype(np.uint8)
    expected = cv2.warpAffine(mask * 255, cv2.getAffineTransform(src, dst), (w, h), flags=cv2.INTER_LINEAR,
                              borderValue=0) / 255.0
    np.testing.assert_array_equal(letterbox_mask(mask, mat, (h, w)), expected.astype(np.float32))
