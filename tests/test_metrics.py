"""mIoU / oIoU / Pr@ against hand-computed values of the official formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detris.metrics import (
    PR_THRESHOLDS,
    SegmentationMeter,
    batch_intersection_union,
    batch_iou,
    sample_iou,
    train_batch_metrics,
)


def masks(pred_rows, gt_rows):
    return np.array(pred_rows, dtype=bool), np.array(gt_rows, dtype=bool)


def test_single_sample_hand_values():
    pred, gt = masks([[1, 1, 0], [1, 0, 0]], [[0, 1, 1], [1, 0, 1]])
    # I = 2 (two shared pixels), U = 5.
    m = SegmentationMeter()
    iou = m.update(pred, gt)
    assert iou == 2 / (5 + 1e-6)
    assert sample_iou(pred, gt) == 2 / (5 + 1e-6)
    s = m.summary()
    assert s["count"] == 1
    assert s["mIoU"] == pytest.approx(0.39999992, abs=1e-8)
    assert s["oIoU"] == 2 / 5  # no epsilon in the overall IoU


def test_empty_and_perfect_cases():
    z = np.zeros((4, 4), bool)
    gt = z.copy()
    gt[1:3, 1:3] = True
    m = SegmentationMeter()
    assert m.update(z, gt) == 0.0  # empty prediction: I = 0
    assert m.update(gt, z) == 0.0  # empty ground truth
    assert m.update(z, z) == 0.0  # both empty: 0 / (0 + 1e-6) = 0, not 1
    perfect = m.update(gt, gt)  # 4 / (4 + 1e-6)
    assert perfect == pytest.approx(0.99999975, abs=1e-9) and perfect < 1.0
    s = m.summary()
    assert s["mIoU"] == pytest.approx(0.99999975 / 4, abs=1e-9)
    assert s["oIoU"] == 4 / (4 + 4 + 0 + 4)  # I: 0+0+0+4, U: 4+4+0+4
    assert s["Pr@50"] == 0.25 and s["Pr@90"] == 0.25


def test_ground_truth_nonzero_counts_as_foreground():
    pred = np.array([[True, False]])
    gt = np.array([[1 / 255, 0.0]])  # the official code divides 0/255 masks by 255 (floats)
    assert sample_iou(pred, gt) == 1 / (1 + 1e-6)


def test_oiou_and_miou_across_samples():
    m = SegmentationMeter()
    m.add(2, 4)  # IoU ~ 0.5
    m.add(1, 8)  # IoU ~ 0.125
    m.add(30, 40)  # IoU ~ 0.75
    s = m.summary()
    assert s["oIoU"] == 33 / 52
    assert s["mIoU"] == pytest.approx((2 / 4.000001 + 1 / 8.000001 + 30 / 40.000001) / 3, abs=1e-12)
    assert s["count"] == 3


def test_pr_is_strict_and_uses_official_thresholds():
    m = SegmentationMeter()
    # U = 2**41: U + 1e-6 rounds to U in float64, so this IoU is exactly 0.5 -> not counted at 0.5.
    assert m.add(2**40, 2**41) == 0.5
    s = m.summary()
    assert s["Pr@50"] == 0.0
    # IoUs 0.55 .. 0.95 (approximately): each counts at every threshold below it.
    for inter in (55, 65, 75, 85, 95):
        m.add(inter, 100)
    s = m.summary()
    assert [s[k] for k in ("Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90")] == [5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]


def test_official_float32_threshold_quirk():
    # The official thresholds are float32(0.5..0.9): float32(0.7) = 0.699999988 < 0.7 and
    # float32(0.6) = 0.6000000238 > 0.6.
    assert PR_THRESHOLDS == (0.5, 0.6000000238418579, 0.699999988079071, 0.800000011920929, 0.8999999761581421)
    m = SegmentationMeter()
    m.add(7000, 10000)  # 0.69999999993 -> counted at Pr@70, as the official code does
    m.add(6000, 10000)  # 0.59999999994 -> not counted at Pr@60
    s = m.summary()
    assert s["Pr@70"] == 0.5
    assert s["Pr@60"] == 0.5  # only the 0.7 sample


def test_state_merge_and_tensor_roundtrip():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(40):
        gt = rng.random((8, 8)) > 0.5
        pred = rng.random((8, 8)) > 0.4
        samples.append((pred, gt))
    whole = SegmentationMeter()
    a, b = SegmentationMeter(), SegmentationMeter()
    for i, (p, g) in enumerate(samples):
        whole.update(p, g)
        (a if i % 3 else b).update(p, g)
    merged = SegmentationMeter().merge(a).merge(b)
    for key, value in whole.summary().items():
        assert merged.summary()[key] == pytest.approx(value, abs=1e-12)
    # State dict round trip.
    c = SegmentationMeter()
    c.load_state_dict(a.state_dict())
    assert c.summary() == a.summary()
    # all_reduce(SUM) of the vectors == merged meter.
    vec = a.to_tensor() + b.to_tensor()
    d = SegmentationMeter()
    d.load_tensor(vec)
    for key, value in whole.summary().items():
        assert d.summary()[key] == pytest.approx(value, abs=1e-12)
    # Hand check of the sums for the whole set.
    inter = sum(int(np.sum(p & g)) for p, g in samples)
    union = sum(int(np.sum(p | g)) for p, g in samples)
    assert whole.summary()["oIoU"] == inter / union
    # Not initialised: all_reduce is a no-op.
    assert whole.all_reduce() is whole


def test_empty_meter_is_nan():
    s = SegmentationMeter().summary()
    assert s["count"] == 0 and math.isnan(s["mIoU"]) and math.isnan(s["oIoU"]) and math.isnan(s["Pr@50"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        SegmentationMeter().update(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_batched_torch_matches_hand_values():
    pred = torch.zeros(3, 2, 3, dtype=torch.bool)
    gt = torch.zeros(3, 2, 3)
    pred[0, 0, :2] = True
    gt[0, 0, 1:] = 1  # I = 1, U = 3
    pred[1] = True
    gt[1] = 1  # I = U = 6
    # sample 2: both empty
    inter, union = batch_intersection_union(pred, gt)
    assert inter.tolist() == [1, 6, 0] and union.tolist() == [3, 6, 0]
    ious = batch_iou(pred, gt)
    assert ious.dtype == torch.float64
    assert ious.tolist() == [1 / (3 + 1e-6), 6 / (6 + 1e-6), 0.0]
    m = SegmentationMeter()
    out = m.update_batch(pred, gt)
    assert out.tolist() == ious.tolist()
    assert m.summary()["oIoU"] == 7 / 9


def test_train_batch_metrics_hand_values():
    # sigmoid(2) = 0.88 >= 0.35 -> 1, sigmoid(-2) = 0.12 -> 0.
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0], [2.0, 2.0, -2.0, -2.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    iou, pr = train_batch_metrics(logits, target)
    # sample 0: I = 1, U = 3; sample 1: I = U = 2.
    expected = 100 * (1 / 3 + 2 / 2) / 2
    assert float(iou) == pytest.approx(expected, abs=1e-3)
    assert float(pr) == pytest.approx(50.0)
    # The training monitor uses >= on the probability: logit 0 with threshold 0.5 counts.
    iou, _ = train_batch_metrics(torch.zeros(1, 2), torch.ones(1, 2), threshold=0.5)
    assert float(iou) == pytest.approx(100.0, abs=1e-3)
