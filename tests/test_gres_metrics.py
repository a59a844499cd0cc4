"""gRefCOCO metrics against hand-counted cases: every outcome, an empty prediction on a target
sample, a multi-target union, the >= of Pr@ at exactly 0.8 (ReLA's refer_evaluation.py, docs/gres.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detris.gres_metrics import GresMeter, gres_outcome


def _mask(*cells: tuple[int, int], shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    m = np.zeros(shape, bool)
    for r, c in cells:
        m[r, c] = True
    return m


EMPTY = _mask()
# (name, prediction, ground truth, predicted no-target, expected outcome, IoU, I, U), counted by hand.
CASES = [
    ("A target, 3 of 4 hit", _mask((0, 0), (0, 1), (1, 0), (2, 2), (2, 3), (3, 3)),
     _mask((0, 0), (0, 1), (1, 0), (1, 1)), False, "TN", 3 / 7, 3, 7),
    ("B no target, said so", _mask((3, 3), (3, 2)), EMPTY, True, "TP", 1.0, 0, 0),
    ("C no target, painted 5", _mask((0, 0), (0, 1), (0, 2), (0, 3), (1, 0)), EMPTY, False, "FN", 0.0, 0, 5),
    ("D target, said none", _mask((0, 0), (3, 3)), _mask((0, 0), (1, 1), (2, 2)), True, "FP", 0.0, 0, 4),
    ("E target, empty mask", EMPTY, _mask((1, 1), (2, 2)), False, "TN", 0.0, 0, 2),
    ("F two targets, both", _mask((0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)),
     _mask((0, 0), (0, 1), (1, 0), (1, 1)) | _mask((2, 2), (2, 3), (3, 2), (3, 3)), False, "TN", 1.0, 8, 8),
    ("G target, IoU exactly 0.8", _mask((0, 0), (0, 1), (0, 2), (0, 3)),
     _mask((0, 0), (0, 1), (0, 2), (0, 3), (1, 0)), False, "TN", 0.8, 4, 5),
]


@pytest.mark.parametrize(("name", "pred", "gt", "no_target", "kind", "iou", "inter", "union"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_sample_is_counted_as_rela_counts_it(name, pred, gt, no_target, kind, iou, inter, union):
    out = gres_outcome(pred, gt, no_target)
    assert (out.kind, out.intersection, out.union) == (kind, inter, union)
    assert out.iou == pytest.approx(iou)


def test_the_summary_of_all_cases():
    meter = GresMeter()
    for _name, pred, gt, no_target, *_ in CASES:
        meter.add(pred, gt, no_target)
    s = meter.summary()
    assert (s["TP"], s["FN"], s["FP"], s["TN"], s["count"], s["no_target"]) == (1, 1, 1, 4, 7, 2)
    assert s["gIoU"] == pytest.approx((3 / 7 + 1 + 0 + 0 + 0 + 1 + 0.8) / 7)
    assert s["cIoU"] == pytest.approx(15 / 31)  # ΣI = 3+8+4, ΣU = 7+5+4+2+8+5
    assert s["N-acc"] == pytest.approx(1 / 2) and s["T-acc"] == pytest.approx(4 / 5)
    # Pr@ over the 5 target samples, IoU >= t: F (1.0) and G (exactly 0.8) for 0.7 and 0.8, F for 0.9.
    assert (s["Pr@70"], s["Pr@80"], s["Pr@90"]) == pytest.approx((2 / 5, 2 / 5, 1 / 5))


def test_undefined_ratios_are_nan_not_zero():
    meter = GresMeter()
    meter.add(_mask((0, 0)), _mask((0, 0)), False)  # one target sample, perfect
    s = meter.summary()
    assert math.isnan(s["N-acc"]) and s["T-acc"] == 1.0 and s["gIoU"] == 1.0
    empty = GresMeter()
    empty.add(EMPTY, EMPTY, True)
    assert math.isnan(empty.summary()["cIoU"]) and math.isnan(empty.summary()["Pr@70"])


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="shape"):
        gres_outcome(np.zeros((2, 2)), np.zeros((3, 3)), False)
