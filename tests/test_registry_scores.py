"""The official README's numbers in the registry (mIoU and oIoU tables of commit c94b1e1), and
``detris eval`` printing ours beside both."""

from __future__ import annotations

import argparse

import pytest

from detris.cli.evaluate import _paper_scores, _report
from detris.registry import REGISTRY

#: The oIoU table of the official README, row by row: RefCOCO val/testA/testB, RefCOCO+ val/testA/testB,
#: G-Ref val(u)/test(u), G-Ref val(g).
OIOU = {
    "detris-b": [74.3, 77.6, 71.4, 65.6, 72.0, 56.5, 65.2, 66.4, 63.2],
    "detris-l": [76.1, 78.3, 73.2, 67.9, 73.3, 60.2, 66.8, 68.0, 65.0],
}
COLUMNS = [("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"), ("refcoco+", "val"),
           ("refcoco+", "testA"), ("refcoco+", "testB"), ("refcocog-umd", "val"), ("refcocog-umd", "test"),
           ("refcocog-google", "val")]


@pytest.mark.parametrize("variant", sorted(OIOU))
def test_every_released_model_has_the_readme_oiou(variant):
    for (data, split), value in zip(COLUMNS, OIOU[variant], strict=True):
        assert REGISTRY[f"{variant}.{data}"].paper_oiou[split] == value


def test_the_mixed_model_has_both_tables():
    mixed = REGISTRY["detris-l-mixed.mixed"]
    assert mixed.paper_oiou == {"refcoco val": 80.7, "refcoco testA": 82.2, "refcoco testB": 77.9,
                                "refcoco+ val": 73.1, "refcoco+ testA": 77.5, "refcoco+ testB": 66.0,
                                "refcocog_umd val": 73.2, "refcocog_umd test": 74.7}
    assert set(mixed.paper_oiou) == set(mixed.paper_miou)
    assert _paper_scores("detris-l-mixed.mixed", "refcoco+", "testB") == {"mIoU": 70.2, "oIoU": 66.0}


def test_eval_prints_ours_beside_both(capsys):
    args = argparse.Namespace(model="detris-b.refcoco", dataset="refcoco", split="testA", save_predictions=None,
                              json=None)
    result = {"expressions": 10, "mIoU": 0.5, "oIoU": 0.25, "Pr@50": 0.5, "Pr@60": 0.4, "Pr@70": 0.3,
              "Pr@80": 0.2, "Pr@90": 0.1, "skipped": [], "skipped_expressions": 0}
    _report(args, None, "unc", False, result)
    out = capsys.readouterr().out
    assert ("official README for detris-b.refcoco on refcoco testA: mIoU 78.20 (ours 50.00), "
            "oIoU 77.60 (ours 25.00)") in out
    assert _paper_scores("my-model", "refcoco", "val") == {}
