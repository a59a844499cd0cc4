"""Generalized referring segmentation end to end: the synthetic multi-/no-target grammar (checked by a
parser written here), the gRefCOCO layout it writes (read back and decoded with pycocotools), JSONL
multi-/no-target lines, the mixed set with gRefCOCO, the optional no-target head (off: the official
model; on: its loss and decision), and ``detris eval --dataset grefcoco`` whose reported numbers are
recomputed from ``predictions.jsonl``, the PNGs and the raw annotation files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask

from detris.build import build_model
from detris.cli import main
from detris.data.catalog import open_dataset
from detris.data.datasets import GReferSegDataset, JsonlSegDataset
from detris.data.grefer import GReferAnnotations
from detris.data.synthetic import (
    COLORS,
    SHAPES,
    SIDES,
    SIZES,
    SyntheticScenes,
    write_grefcoco_layout,
    write_refer_layout,
)
from detris.data.synthetic.groups import pick_group_expressions
from detris.engine.task import SegmentationTask
from detris.inference import prepare_image, segment
from detris.predictor import NO_MATCH, Predictor
from model_fixtures import random_tiny_model, save_random_tiny
from refer_fixtures import toy_tokenizer

INPUT_SIZE = 112

# ------------------------------------------------------------------------------------------ grammar

_PLURAL = {f"{s}s": s for s in SHAPES} | {"shapes": None}
_COUNT = {"two": 2, "three": 3, "four": 4, "five": 5}


def _attributes(words: list[str]) -> tuple[str | None, str | None, str | None]:
    size = words.pop(0) if words and words[0] in SIZES else None
    colour = words.pop(0) if words and words[0] in COLORS else None
    assert len(words) == 1, words
    return size, colour, words[0]


def _fits(obj: Any, size: str | None, colour: str | None, shape: str | None) -> bool:
    return (size in (None, obj.size)) and (colour in (None, obj.color)) and (shape in (None, obj.shape))


def _referred(text: str, objects: list[Any]) -> set[int]:
    """The objects an expression of the generalized grammar refers to, read from its words alone."""
    side = next((s for s in SIDES if text.endswith(" " + s)), None)
    body = text[: -len(side) - 1] if side else text
    words = body.split()
    if words[0] == "both":
        count, words = 2, words[1:]
    elif words[:2] == ["all", "the"]:
        count, words = None, words[2:]
    elif words[0] == "the" and words[1] in _COUNT:
        count, words = _COUNT[words[1]], words[2:]
    else:  # "the [size] colour shape": a singular description
        size, colour, shape = _attributes(words[1:])
        return {i for i, o in enumerate(objects) if _fits(o, size, colour, shape)}
    size, colour, noun = _attributes(words)
    group = [i for i, o in enumerate(objects) if _fits(o, size, colour, _PLURAL[noun])]
    if side is not None:
        axis, sign = {"on the left": (0, 1), "on the right": (0, -1), "at the top": (1, 1), "at the bottom": (1, -1)}[side]
        group = sorted(group, key=lambda i: sign * objects[i].centroid[axis])[:count]
    elif count is not None:
        assert len(group) == count, (text, group)
    return set(group)


def test_generalized_grammar_means_what_it_says():
    scenes = SyntheticScenes(40, seed=11, max_objects=5)
    kinds = {"multi": 0, "no target": 0, "side": 0}
    for scene in scenes:
        rng = np.random.default_rng(scene.index)
        for targets, texts in pick_group_expressions(scene.objects, 0.07 * 256, 50, 50, 10, rng):
            for text in texts:
                assert _referred(text, scene.objects) == set(targets), (scene.index, text)
            kinds["no target" if not targets else "multi"] += 1
            kinds["side"] += any(t.split()[-1] in ("left", "right", "top", "bottom") for t in texts)
            assert len(targets) != 1
    assert all(n > 10 for n in kinds.values()), kinds


# ------------------------------------------------------------------------------------------ layout

SPLITS = {"train": 3, "val": 3}


@pytest.fixture(scope="module")
def glayout(tmp_path_factory):
    root = tmp_path_factory.mktemp("gref")
    return write_grefcoco_layout(root, splits=SPLITS, seed=5, image_size=None, max_objects=4, max_expressions=2,
                                 multi_target_refs=1, no_target_refs=2)


def _truth(lay) -> dict[int, dict[str, Any]]:
    """Per ref: its image size and union mask, decoded from the raw JSON files with pycocotools."""
    refs = json.loads(lay.refs_path.read_text())
    inst = json.loads(lay.instances_path.read_text())
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    out = {}
    for ref in refs:
        im = images[ref["image_id"]]
        gt = np.zeros((im["height"], im["width"]), bool)
        for a in ref["ann_id"]:
            if a != -1:
                gt |= coco_mask.decode(anns[a]["segmentation"]).astype(bool)
        out[ref["ref_id"]] = {"gt": gt, "no_target": ref["ann_id"] == [-1], "ref": ref, "file": im["file_name"]}
    return out


def test_grefcoco_layout_reads_back(glayout, tmp_path):
    truth = _truth(glayout)
    kinds = [len(t["ref"]["ann_id"]) if not t["no_target"] else 0 for t in truth.values()]
    assert kinds.count(0) == 2 * sum(SPLITS.values()) and any(k >= 2 for k in kinds)
    ds = GReferSegDataset(GReferAnnotations(glayout.data_root), "val", image_root=glayout.image_root,
                          input_size=INPUT_SIZE, tokenizer=toy_tokenizer)
    assert ds.generalized and ds.mode == "test"
    assert len(ds) == sum(len(t["ref"]["sentences"]) for t in truth.values() if t["ref"]["split"] == "val")
    for i in range(len(ds)):
        item = ds[i]
        t = truth[item["ref_id"]]
        assert np.array_equal(item["mask_orig"].numpy().astype(bool), t["gt"])
        assert item["no_target"] == t["no_target"] == (not t["gt"].any())
        assert item["sentence"] in [s["sent"] for s in t["ref"]["sentences"]]
    # The scenes are those of the REFER writer with the same seed: same pixels, same single-object refs.
    refer = write_refer_layout(tmp_path, "refcoco", splits=SPLITS, seed=5, image_size=None, max_objects=4,
                               max_expressions=2)
    a = cv2.imread(str(glayout.image_root / "grefcoco_000002.png"))
    b = cv2.imread(str(refer.image_root / "refcoco_000002.png"))
    assert np.array_equal(a, b)


def test_mixed_set_with_grefcoco(glayout):
    # The gRefCOCO writer shares the image folder layout; a REFER part from the same root.
    write_refer_layout(glayout.data_root, "refcoco", splits=SPLITS, seed=5, image_size=None, max_objects=4,
                       image_root=glayout.image_root)
    mixed = open_dataset("mixed", glayout.data_root, "val", "val", glayout.image_root, input_size=INPUT_SIZE,
                         tokenizer=toy_tokenizer, parts=("refcoco", "grefcoco"))
    assert mixed.generalized and [p.name for p in mixed.parts] == ["refcoco", "grefcoco"]
    items = [mixed[i] for i in range(len(mixed))]
    assert {it["dataset"] for it in items} == {"refcoco", "grefcoco"}
    assert any(it["no_target"] for it in items) and not any(it["no_target"] for it in items if it["dataset"] == "refcoco")
    assert not open_dataset("mixed", glayout.data_root, "val", "val", glayout.image_root, tokenizer=toy_tokenizer,
                            parts=("refcoco",)).generalized


# ------------------------------------------------------------------------------------------ JSONL


def _rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def test_jsonl_multi_and_no_target_lines(tmp_path):
    h, w = 40, 60
    cv2.imwrite(str(tmp_path / "img.png"), np.full((h, w, 3), 120, np.uint8))
    a, b = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    a[2:10, 3:20], b[20:35, 30:55] = 1, 1
    cv2.imwrite(str(tmp_path / "a.png"), a * 255)
    cv2.imwrite(str(tmp_path / "b.png"), b * 255)
    lines = [
        {"image": "img.png", "sentence": "both boxes", "mask": ["a.png", "b.png"]},
        {"image": "img.png", "sentence": "the two boxes", "rle": [_rle(a), _rle(b)]},
        {"image": "img.png", "sentence": "the left box", "mask": "a.png"},
        {"image": "img.png", "sentence": "the purple star", "no_target": True},
    ]
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    ds = JsonlSegDataset(path, mode="test", input_size=INPUT_SIZE, tokenizer=toy_tokenizer)
    assert ds.generalized
    got = [ds[i] for i in range(4)]
    union = (a | b).astype(bool)
    assert np.array_equal(got[0]["mask_orig"].numpy().astype(bool), union)
    assert np.array_equal(got[1]["mask_orig"].numpy().astype(bool), union)
    assert np.array_equal(got[2]["mask_orig"].numpy().astype(bool), a.astype(bool))
    assert not got[3]["mask_orig"].any() and got[3]["no_target"] and not got[0]["no_target"]
    path.write_text(json.dumps(lines[2]))
    assert not JsonlSegDataset(path, mode="test", tokenizer=toy_tokenizer).generalized


@pytest.mark.parametrize("record, message", [
    ({"image": "i.png", "sentence": "x", "no_target": True, "mask": "a.png"}, "has no 'mask'"),
    ({"image": "i.png", "sentence": "x", "no_target": "yes"}, "'no_target' must be true or false"),
    ({"image": "i.png", "sentence": "x"}, "no_target"),
    ({"image": "i.png", "sentence": "x", "mask": []}, "non-empty list"),
    ({"image": "i.png", "sentence": "x", "rle": [{"size": [2, 2], "counts": [4]}, {"size": [3, 3], "counts": [9]}]},
     "same size"),
])
def test_jsonl_bad_generalized_lines(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message) as info:
        JsonlSegDataset(path, tokenizer=toy_tokenizer)
    assert f"{path}:1" in str(info.value)


# ------------------------------------------------------------------------------------------ the head


def test_head_off_is_the_official_model():
    model = build_model("detris-tiny")
    assert model.no_target_head is None and not model.config.no_target_head
    assert not [k for k in model.state_dict() if "no_target" in k]
    assert len(model.trainable_modules()) == len(model.adapter_modules()) + 3


def test_head_formula_by_hand():
    model = build_model("detris-tiny", no_target_head=True)
    head = model.no_target_head
    g = torch.Generator().manual_seed(0)
    feats, sent, logits = torch.randn(2, 64, 4, 4, generator=g), torch.randn(2, 64, generator=g), \
        torch.randn(2, 1, 16, 16, generator=g)
    with torch.no_grad():
        got = head(feats, sent, logits)
    f, s, lg = feats.double().numpy(), sent.double().numpy(), logits.double().numpy()
    prob = 1 / (1 + np.exp(-lg))
    weight = prob.reshape(2, 1, 4, 4, 4, 4).mean(axis=(3, 5))  # 4x4 blocks of the 16x16 map
    masked = (f * weight).sum(axis=(2, 3)) / weight.sum(axis=(2, 3))
    lin = lambda m, x: x @ m.weight.detach().double().numpy().T + m.bias.detach().double().numpy()  # noqa: E731
    x = np.concatenate([f.mean(axis=(2, 3)), masked, lin(head.txt, s),
                        lg.reshape(2, -1).max(1, keepdims=True), prob.reshape(2, -1).mean(1, keepdims=True)], 1)
    expected = lin(head.mlp[2], np.maximum(lin(head.mlp[0], x), 0))[:, 0]
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_head_loss_and_gradients():
    torch.manual_seed(0)
    model = build_model("detris-tiny", image_size=INPUT_SIZE, no_target_head=True).train()
    images, tokens = torch.randn(3, 3, INPUT_SIZE, INPUT_SIZE), torch.randint(1, 400, (3, 17))
    mask = torch.zeros(3, 1, INPUT_SIZE, INPUT_SIZE)
    mask[0, :, 10:50, 10:50] = 1  # sample 0 has a target; 1 and 2 have none
    torch.manual_seed(1)
    step = SegmentationTask(model)(images, tokens, mask)
    torch.manual_seed(1)  # the same dropout draws
    logits, nt = model(images, tokens)
    assert torch.equal(step.output.logits, logits) and nt.shape == (3,)
    labels = torch.tensor([0.0, 1.0, 1.0])
    target = F.interpolate(mask, size=logits.shape[-2:], mode="nearest")
    by_hand = F.binary_cross_entropy_with_logits(logits, target) + 0.1 * F.binary_cross_entropy_with_logits(nt, labels)
    torch.testing.assert_close(step.loss.total, by_hand)
    # The head's loss shapes the shared features but never the mask logits' own layer.
    model.zero_grad()
    model.no_target_head(model.encode(images, tokens)["decoder"], model.encode(images, tokens)["sentence"],
                         logits.detach()).sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.proj.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.decoder.parameters())


@pytest.mark.parametrize("bias", [20.0, -20.0])
def test_no_target_decision_empties_the_user_mask(bias):
    model = random_tiny_model(INPUT_SIZE, no_target_head=True)
    with torch.no_grad():
        model.no_target_head.mlp[2].bias.fill_(bias)
    rgb = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    pixels, box = prepare_image(rgb, INPUT_SIZE)
    seg = segment(model, pixels[None].expand(2, -1, -1, -1), torch.randint(1, 400, (2, 17)), [box] * 2)
    assert all(m.any() for m in seg.raw_masks)
    assert seg.no_target == [bias > 0] * 2
    assert all(p is not None and (p > 0.99 if bias > 0 else p < 0.01) for p in seg.no_target_probabilities)
    assert all((not m.any()) == (bias > 0) for m in seg.masks)
    pred = Predictor(model, device="cpu").predict(rgb, ["the red circle", "a star"])
    assert [p.no_target for p in pred] == [bias > 0] * 2 and all(p.no_target_probability is not None for p in pred)
    if bias > 0:
        assert all(p.area == 0 for p in pred)


def test_predict_cli_says_no_matching_object(tmp_path, capsys):
    model = random_tiny_model(INPUT_SIZE, no_target_head=True)
    with torch.no_grad():
        model.no_target_head.mlp[2].bias.fill_(20.0)
    model.save_pretrained(tmp_path / "m")
    cv2.imwrite(str(tmp_path / "img.png"), np.full((50, 70, 3), 90, np.uint8))
    assert main(["predict", "--model", str(tmp_path / "m"), "--image", str(tmp_path / "img.png"),
                 "--text", "the purple star", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    entry = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]["predictions"][0]
    assert entry["result"] == NO_MATCH and entry["no_target"] is True and entry["area"] == 0
    assert entry["no_target_probability"] > 0.99


def test_web_page_says_no_matching_object(tmp_path):
    from detris.app import segment_upload

    model = random_tiny_model(INPUT_SIZE, no_target_head=True)
    with torch.no_grad():
        model.no_target_head.mlp[2].bias.fill_(20.0)
    cv2.imwrite(str(tmp_path / "img.png"), np.full((50, 70, 3), 90, np.uint8))
    overlays, status = segment_upload(Predictor(model, device="cpu"), str(tmp_path / "img.png"), "the purple star")
    assert f"the purple star: {NO_MATCH} (no-target probability 1.00)" in status
    assert overlays[0][1] == f"the purple star ({NO_MATCH})"


# ------------------------------------------------------------------------------------------ eval


def _recompute(rows: list[dict[str, Any]]) -> dict[str, float]:
    """ReLA's metrics from the JSONL rows alone (formulas written out, not the package's meter)."""
    tp = sum(1 for r in rows if not r["has_target"] and r["no_target"])
    fn = sum(1 for r in rows if not r["has_target"] and not r["no_target"])
    fp = sum(1 for r in rows if r["has_target"] and r["no_target"])
    tn = sum(1 for r in rows if r["has_target"] and not r["no_target"])
    ious = [1.0 if (not r["has_target"] and r["no_target"]) else
            (r["I"] / r["U"] if r["has_target"] and not r["no_target"] and r["U"] else 0.0) for r in rows]
    target_ious = [iou for iou, r in zip(ious, rows) if r["has_target"]]
    nan = float("nan")
    return {
        "gIoU": sum(ious) / len(rows), "cIoU": sum(r["I"] for r in rows) / sum(r["U"] for r in rows),
        "N-acc": tp / (tp + fn) if tp + fn else nan, "T-acc": tn / (tn + fp) if tn + fp else nan,
        **{f"Pr@{t}": sum(iou >= t / 100 for iou in target_ious) / len(target_ious) for t in (70, 80, 90)},
        "TP": tp, "FN": fn, "FP": fp, "TN": tn,
    }


@pytest.mark.parametrize("head", [True, False])
def test_eval_grefcoco_end_to_end_recomputes(glayout, tmp_path, capsys, head):
    model_dir = save_random_tiny(tmp_path / "model", INPUT_SIZE, no_target_head=head)
    if head:  # centre the random head's logits on this split so that it answers both ways
        from detris.pretrained import from_pretrained
        model = from_pretrained(model_dir).eval()
        ds = GReferSegDataset(GReferAnnotations(glayout.data_root), "val", image_root=glayout.image_root,
                              input_size=INPUT_SIZE)
        items = [ds[i] for i in range(len(ds))]
        with torch.no_grad():
            _, nt = model(torch.stack([it["image"] for it in items]),
                          torch.stack([it["tokens"] for it in items]))
            model.no_target_head.mlp[2].bias -= nt.median()
        model.save_pretrained(model_dir)
    pred, out_json = tmp_path / "pred", tmp_path / "m.json"
    rc = main(["eval", "--model", str(model_dir), "--dataset", "grefcoco", "--split", "val", "--data-root",
               str(glayout.data_root), "--image-root", str(glayout.image_root), "--device", "cpu",
               "--save-predictions", str(pred), "--json", str(out_json), "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert rc == 0 and "gIoU" in printed and "N-acc" in printed and "mIoU" not in printed
    report = json.loads(out_json.read_text())
    rows = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    truth = _truth(glayout)
    assert len(rows) == report["expressions"] == sum(
        len(t["ref"]["sentences"]) for t in truth.values() if t["ref"]["split"] == "val")
    for r in rows:
        t = truth[r["ref_id"]]
        png = cv2.imread(str(pred / r["mask"]), cv2.IMREAD_UNCHANGED) > 0
        assert r["has_target"] == (not t["no_target"]) and png.shape == t["gt"].shape
        if r["no_target"]:
            assert not png.any()  # the mask a user gets
        else:  # the saved mask is the mask scored: I and U from the PNG and the ground truth
            inter, union = int((png & t["gt"]).sum()), int((png | t["gt"]).sum())
            assert (r["I"], r["U"]) == ((inter, union) if r["has_target"] else (0, union))
        assert isinstance(r["no_target"], bool) and (r["no_target_probability"] is None) != head
        if not head:
            assert r["no_target"] == (not png.any())
    expected = _recompute(rows)
    for key, value in expected.items():
        got = report[key]
        assert (got is None and math.isnan(value)) or got == pytest.approx(value), key
    assert report["metrics"] == "gres" and report["no_target_expressions"] == expected["TP"] + expected["FN"] > 0
    if head:
        assert expected["TP"] + expected["FP"] > 0 and expected["TN"] + expected["FN"] > 0


# ------------------------------------------------------------------------------------------ export


def test_export_with_the_head_has_a_second_output(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from detris.export import export_model, read_metadata

    model = random_tiny_model(INPUT_SIZE, no_target_head=True)
    images, tokens = torch.randn(3, 3, INPUT_SIZE, INPUT_SIZE), torch.randint(1, 400, (3, 17))
    with torch.no_grad():
        logits, nt = model(images, tokens)
    path = export_model(model, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "no_target_logits"]
    got_logits, got_nt = session.run(None, {"images": images.numpy(), "tokens": tokens.numpy()})
    np.testing.assert_allclose(got_logits, logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_nt, nt.numpy(), atol=1e-4)
    assert "no_target_logits" in read_metadata(path)["outputs"]


# ------------------------------------------------------------------------------------------ training


def test_generalized_synthetic_training_validates_with_gres_metrics(tmp_path):
    from detris.engine import loop
    from detris.engine.config import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    overrides = [
        "model.overrides.image_size=56", "model.overrides.no_target_head=true", "data.synthetic.train_images=6",
        "data.synthetic.val_images=2", "data.synthetic.image_size=[64, 64]", "data.synthetic.max_objects=3",
        "train.batch_size=4", "train.epochs=1", "train.max_steps=2", "train.max_minutes=null", "train.num_threads=1",
        "output.progress=false", "output.plot=false", "output.tensorboard=false", f"output.dir={tmp_path}",
    ]
    cfg = load_config(configs / "synthetic-gres-tiny.yaml", overrides)
    assert cfg.data.synthetic.generalized and cfg.model.overrides["no_target_head"]
    torch.manual_seed(0)
    summary = loop.train(cfg)
    assert set(summary["last_val"]) == {"gIoU", "cIoU", "N-acc", "T-acc", "Pr@70", "Pr@80", "Pr@90", "count"}
    assert "gIoU" in summary["best"] and (tmp_path / "best" / "config.json").is_file()
    weights = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["weights"]
    assert any(k.startswith("no_target_head.") for k in weights)  # trained and checkpointed with the rest
    assert json.loads((tmp_path / "data" / "grefcoco" / "grefs(unc).json").read_text())
