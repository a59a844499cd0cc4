"""End-to-end tests of ``detris eval`` (official protocol) on a small synthetic REFER dataset.

The ground truth the predictions are scored against is decoded here with pycocotools straight from
``instances.json`` and the refs pickle (our own synthetic file), not through ``detris.data``.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from detris.cli import main
from detris.data import synthetic
from model_fixtures import save_random_tiny

SPLITS = {"train": 1, "val": 2, "testA": 1}
#: DETRIS-tiny at 112 px instead of its 224: four times less compute, and it checks that `eval` takes
#: the input size from the model's config rather than assuming 448 / 224.
INPUT_SIZE = 112


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> synthetic.ReferLayout:
    root = tmp_path_factory.mktemp("refer")
    lay = synthetic.write_refer_layout(
        root,
        "refcoco",  # the folder `load_refer(root, "refcoco")` reads, with refs(unc).p
        splits=SPLITS,
        seed=3,
        image_size=None,  # a size drawn per image: non-square, portrait and landscape
        max_objects=3,
        max_expressions=2,
        segmentation="polygon",  # the common COCO case (RLE is covered by the data tests)
    )
    sizes = [(im["height"], im["width"]) for im in json.loads(lay.instances_path.read_text())["images"]]
    assert any(h != w for h, w in sizes), sizes
    return lay


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random DETRIS-tiny whose predictions are neither empty nor full."""
    return save_random_tiny(tmp_path_factory.mktemp("model") / "detris-tiny-random", INPUT_SIZE)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def eval_argv(model_dir: Path, lay: synthetic.ReferLayout, *extra: str, split: str = "val") -> list[str]:
    return [
        "eval", "--model", str(model_dir), "--dataset", "refcoco", "--split", split,
        "--data-root", str(lay.data_root), "--image-root", str(lay.image_root), "--device", "cpu", *extra,
    ]


def expected_sentences(lay: synthetic.ReferLayout, split: str) -> list[dict[str, Any]]:
    """Every (ref, sentence) of a split, with its image and decoded ground truth, from the raw files."""
    with open(lay.refs_path, "rb") as f:
        refs = pickle.load(f)  # our own synthetic file, written a moment ago
    inst = json.loads(lay.instances_path.read_text())
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    out = []
    for ref in refs:
        if ref["split"] != split:
            continue
        im = images[ref["image_id"]]
        h, w = im["height"], im["width"]
        rles = coco_mask.frPyObjects(anns[ref["ann_id"]]["segmentation"], h, w)
        gt = coco_mask.decode(coco_mask.merge(rles)).astype(bool)
        for s in ref["sentences"]:
            out.append({"ref_id": ref["ref_id"], "sent_id": s["sent_id"], "sentence": s["sent"],
                        "file_name": im["file_name"], "size": (h, w), "gt": gt})
    return out


@pytest.fixture(scope="module")
def batch8_run(layout, model_dir, tmp_path_factory) -> dict[str, Any]:
    """One ``detris eval`` at batch 8 with predictions and JSON (shared by several tests)."""
    out = tmp_path_factory.mktemp("eval8")
    # capsys is function-scoped, so a module-scoped run captures its output by hand.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(eval_argv(model_dir, layout, "--batch-size", "8", "--save-predictions", str(out / "pred"),
                            "--json", str(out / "metrics.json")))
    return {"rc": rc, "out": stdout.getvalue(), "err": stderr.getvalue(), "pred": out / "pred",
            "json": out / "metrics.json"}


# ------------------------------------------------------------------------------------------ tests


def test_eval_table_and_json(batch8_run, layout):
    assert batch8_run["rc"] == 0, batch8_run["err"]
    sents = expected_sentences(layout, "val")
    lines = batch8_run["out"].splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["split", "expressions"])
    assert lines[header].split() == ["split", "expressions", "mIoU", "oIoU", "Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90"]
    row = lines[header + 1].split()
    assert row[0] == "val" and int(row[1]) == len(sents)

    data = json.loads(batch8_run["json"].read_text())
    assert data["expressions"] == data["total_expressions"] == len(sents)
    assert data["skipped"] == [] and data["skipped_expressions"] == 0
    assert (data["dataset"], data["split"], data["split_by"]) == ("refcoco", "val", "unc")
    assert (data["input_size"], data["word_len"]) == (INPUT_SIZE, 17)
    # The printed percentages are the JSON fractions x 100 with 2 decimals.
    for key, cell in zip(["mIoU", "oIoU", "Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90"], row[2:]):
        assert cell == f"{100 * data[key]:.2f}"
        assert data["percent"][key] == round(100 * data[key], 2)


def test_saved_predictions_match_independent_scoring(batch8_run, layout):
    assert batch8_run["rc"] == 0, batch8_run["err"]
    sents = expected_sentences(layout, "val")
    pred_dir: Path = batch8_run["pred"]
    names = {f"{s['ref_id']}_{s['sent_id']}.png" for s in sents}
    assert {p.name for p in pred_dir.iterdir()} == names | {"predictions.jsonl"}

    records = [json.loads(line) for line in (pred_dir / "predictions.jsonl").read_text().splitlines()]
    # One record per expression, in dataset order.
    assert [(r["ref_id"], r["sent_id"], r["sentence"]) for r in records] == [
        (s["ref_id"], s["sent_id"], s["sentence"]) for s in sents
    ]
    ious, inters, unions, fg = [], 0, 0, 0
    for rec, s in zip(records, sents):
        png = Image.open(pred_dir / rec["mask"])
        assert png.mode == "L" and png.size == (s["size"][1], s["size"][0])  # PIL size is (W, H)
        pred = np.asarray(png)
        assert set(np.unique(pred)) <= {0, 255}
        p = pred == 255
        inter, union = int((p & s["gt"]).sum()), int((p | s["gt"]).sum())
        assert (rec["intersection"], rec["union"]) == (inter, union)
        assert rec["iou"] == inter / (union + 1e-6)
        ious.append(rec["iou"])
        inters, unions, fg = inters + inter, unions + union, fg + int(p.sum())
    total = sum(s["size"][0] * s["size"][1] for s in sents)
    assert 0 < fg < total  # the biased random model predicts something, not everything
    assert inters > 0

    data = json.loads(batch8_run["json"].read_text())
    assert data["mIoU"] == pytest.approx(float(np.mean(ious)), abs=1e-12)
    assert data["oIoU"] == pytest.approx(inters / unions, abs=1e-12)
    for key, t in zip(["Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90"], [0.5, 0.6, 0.7, 0.8, 0.9]):
        assert data[key] == pytest.approx(np.mean([iou > np.float32(t) for iou in ious]), abs=1e-12)


def test_batch_1_equals_batch_8(batch8_run, layout, model_dir, tmp_path, capsys):
    assert batch8_run["rc"] == 0, batch8_run["err"]
    rc, out, err = run_cli(
        eval_argv(model_dir, layout, "--batch-size", "1", "--workers", "1", "--save-predictions",
                  str(tmp_path / "pred"), "--json", str(tmp_path / "m.json")),
        capsys,
    )
    assert rc == 0, err
    a = json.loads(batch8_run["json"].read_text())
    b = json.loads((tmp_path / "m.json").read_text())
    for key in ("mIoU", "oIoU", "Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90", "expressions", "inter_sum", "union_sum"):
        assert a[key] == b[key], key
    assert (a["batch_size"], b["batch_size"]) == (8, 1)
    assert (batch8_run["pred"] / "predictions.jsonl").read_text() == (tmp_path / "pred" / "predictions.jsonl").read_text()
    for png in sorted(batch8_run["pred"].glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "pred" / png.name))), png.name


def test_missing_data_root_shows_layout_before_loading_model(layout, model_dir, tmp_path, capsys, monkeypatch):
    import detris.cli.evaluate

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the data is checked")

    monkeypatch.setattr(detris.cli.evaluate, "from_pretrained", no_load)
    argv = eval_argv(model_dir, layout)
    argv[argv.index("--data-root") + 1] = str(tmp_path / "nowhere")
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2
    assert "nowhere" in err and "Expected layout" in err
    assert "refcoco/    instances.json  refs(unc).p" in err

    # A data root without the dataset folder names the missing file.
    (tmp_path / "empty").mkdir()
    argv[argv.index("--data-root") + 1] = str(tmp_path / "empty")
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2 and "refs(unc).p" in err and "Expected layout" in err


def test_bad_split_model_and_image_root(layout, model_dir, tmp_path, capsys):
    rc, _, err = run_cli(eval_argv(model_dir, layout, split="testC"), capsys)
    assert rc == 2 and "testC" in err and "'val'" in err and "'testA'" in err

    argv = eval_argv(model_dir, layout)
    argv[argv.index("--model") + 1] = str(tmp_path / "no-model")
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and "model directory not found" in err and "config.json" in err

    argv = eval_argv(model_dir, layout)
    argv[argv.index("--image-root") + 1] = str(tmp_path)
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and "none of the" in err and "--image-root" in err


def test_corrupt_image_errors_or_is_skipped(layout, model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(layout.image_root, images)
    sents = expected_sentences(layout, "val")
    bad_name = sents[0]["file_name"]
    bad = images / bad_name
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    argv = eval_argv(model_dir, layout, "--batch-size", "4", "--json", str(tmp_path / "m.json"))
    argv[argv.index("--image-root") + 1] = str(images)

    # Through a DataLoader worker too: the error is the one line naming the file, not the worker's traceback.
    for workers in ("0", "1"):
        rc, _, err = run_cli(argv + ["--workers", workers], capsys)
        assert rc == 2 and str(bad) in err and "cannot read image" in err and "--skip-bad" in err
        assert "Traceback" not in err

    rc, out, err = run_cli(argv + ["--skip-bad"], capsys)
    assert rc == 0, err
    assert "skipped 1 unreadable image" in out and str(bad) in out
    data = json.loads((tmp_path / "m.json").read_text())
    n_bad = sum(s["file_name"] == bad_name for s in sents)
    assert data["skipped"] == [str(bad)]
    assert data["skipped_expressions"] == n_bad
    assert data["expressions"] == len(sents) - n_bad
    assert data["total_expressions"] == len(sents)


def test_evaluate_api_val_mode_and_train_mode_error(layout, model_dir):
    from detris import from_pretrained
    from detris.data import ReferSegDataset, load_refer
    from detris.evaluate import evaluate

    model = from_pretrained(model_dir).train()
    refer = load_refer(layout.data_root, "refcoco")
    kwargs = dict(image_root=layout.image_root, input_size=INPUT_SIZE, word_len=17)
    with pytest.raises(ValueError, match="train mode"):
        evaluate(model, ReferSegDataset(refer, "val", mode="train", **kwargs), progress=False)

    # val mode: the first sentence of each ref (the official validation during training).
    val = ReferSegDataset(refer, "val", mode="val", **kwargs)
    res = evaluate(model, val, batch_size=3, device="cpu", progress=False)
    assert res["expressions"] == res["total_expressions"] == val.num_refs
    assert 0.0 <= res["mIoU"] <= 1.0 and res["skipped"] == []
    assert model.training  # the caller's mode is restored
