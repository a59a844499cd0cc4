"""``detris predict --input MANIFEST.jsonl`` (`detris.collection`) and `Predictor.predict_many`.

References used here, none of them the code under test: pycocotools' decoder, box and area of an RLE;
the masks ``detris predict --image X --text Y`` writes as PNGs, one expression at a time; probabilities
from `Predictor.predict`; an uninterrupted single-process run (for killed, resumed and two-process runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from detris.cli import main
from detris.collection import PREDICTIONS_FILE, encode_rle, mask_bbox, read_manifest
from detris.data.images import ImageLoadError
from detris.predictor import Predictor
from model_fixtures import save_random_tiny

# pycocotools built against NumPy 1 warns about the `copy` keyword on every decode under NumPy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FIELDS = {"image", "expression", "rle", "bbox", "area", "score", "no_target"}
FLOAT32 = ["--device", "cpu", "--dtype", "float32"]  # the default (auto) may pick bfloat16


def picture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour waves with a few flat discs: masks of a random model are neither empty nor full."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([128 + 90 * np.sin(5 * xx + 2 * c + seed) * np.cos(3 * yy - c) for c in range(3)], -1)
    for _ in range(2):
        cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.1, 0.3)]
        img[(yy - cy * h / max(h, w)) ** 2 + (xx - cx * w / max(h, w)) ** 2 < r * r] = rng.integers(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


EXPRESSIONS = ["the red disc", "the thing on the left", "a big blue shape at the bottom right"]


def write_collection(root: Path, images: int = 6) -> Path:
    """``root/manifest.jsonl``: ``images`` pictures with 1-3 expressions each (PNG and JPEG, a nested
    folder, one absolute path, one ``"text"`` line, one repeated pair), one unreadable image, one bad line."""
    (root / "pics" / "sub").mkdir(parents=True)
    lines = []
    for i in range(images):
        name = f"pics/{'sub/' if i % 4 == 3 else ''}img{i}.{'jpg' if i % 3 == 2 else 'png'}"
        Image.fromarray(picture(40 + 9 * (i % 8), 90 - 5 * (i % 8), seed=i)).save(root / name)
        texts = EXPRESSIONS[: 1 + i % 3]
        image = str(root / name) if i == 1 else name
        lines.append({"image": image, "text": texts[0]} if len(texts) == 1 and i == 3 else
                     {"image": image, "expressions": texts})
    (root / "pics" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows = [json.dumps(line) for line in lines]
    rows.insert(2, json.dumps({"image": "pics/broken.jpg", "expressions": ["anything"]}))
    rows.insert(4, '{"image": "pics/img0.png", "expressions": ')  # bad JSON: line 5
    rows.append(json.dumps({"image": lines[0]["image"], "expressions": [EXPRESSIONS[0]]}))  # a repeated pair
    rows.insert(1, "")  # blank lines are allowed
    (root / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return root / "manifest.jsonl"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_random_tiny(tmp_path_factory.mktemp("model") / "tiny", image_size=112)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return write_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def reference(model_dir, collection, tmp_path_factory) -> Path:
    """An uninterrupted single-process run (two loader workers, forwards of 4 expressions)."""
    out = tmp_path_factory.mktemp("reference")
    rc, stdout, err = run(["predict", "--model", str(model_dir), "--input", str(collection), "--out", str(out),
                           "--batch-size", "4", "--workers", "2", *FLOAT32])
    assert rc == 0, err
    assert "12 expression(s) of 6 image(s)" in stdout and "1 unreadable image(s), 1 bad line(s)" in stdout
    return out


# ------------------------------------------------------------------------------------------ the records


def test_every_field_and_masks_equal_single_image_predict(model_dir, collection, reference, tmp_path):
    records = lines_of(reference / PREDICTIONS_FILE)
    manifest = read_manifest(collection)
    expected = [pair for pair in manifest.pairs() if pair[0] != "pics/broken.jpg"]
    assert [(r["image"], r["expression"]) for r in records] == expected  # manifest order, no repeat
    assert len(expected) == 12
    predictor = Predictor.from_pretrained(model_dir, device="cpu", dtype="float32")
    foreground = 0
    for k, rec in enumerate(records):
        assert set(rec) == FIELDS
        path = Path(rec["image"]) if Path(rec["image"]).is_absolute() else collection.parent / rec["image"]
        rc, _, err = run(["predict", "--model", str(model_dir), "--image", str(path), "--text", rec["expression"],
                          "--out", str(tmp_path / f"single{k}"), *FLOAT32])
        assert rc == 0, err
        single = np.asarray(Image.open(tmp_path / f"single{k}" / f"{path.stem}_0_mask.png")) == 255
        rle = {"size": rec["rle"]["size"], "counts": rec["rle"]["counts"].encode("ascii")}
        decoded = coco_mask.decode(rle).astype(bool)
        assert rec["rle"]["size"] == list(single.shape)
        assert np.array_equal(decoded, single), rec  # bit for bit
        assert rec["area"] == int(single.sum()) == int(coco_mask.area(rle))
        assert rec["bbox"] == [int(v) for v in coco_mask.toBbox(rle)]
        prob = predictor.predict(path, rec["expression"])[0].probability
        assert rec["score"] == (round(float(prob[single].mean()), 6) if single.any() else 0.0)
        assert rec["no_target"] is (not single.any())
        foreground += int(single.sum())
    assert 0 < foreground < sum(np.prod(r["rle"]["size"]) for r in records)


def test_errors_name_the_unreadable_image_and_the_bad_line(collection, reference):
    errors = lines_of(reference / "errors.jsonl")
    assert [e["line"] for e in errors] == [4, 6]
    assert errors[0]["image"] == "pics/broken.jpg" and "broken.jpg" in errors[0]["error"]
    assert errors[1]["manifest"] == f"{collection}:6" and "JSON" in errors[1]["error"]
    assert sorted(p.name for p in reference.iterdir()) == ["errors.jsonl", PREDICTIONS_FILE]


def test_encoder_and_box_against_pycocotools():
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (7, 5), (64, 33)]:
        for fill in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < fill
            rle = encode_rle(mask)
            back = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert np.array_equal(back.astype(bool), mask)
            expected = [int(v) for v in coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))))]
            assert mask_bbox(mask) == expected


def test_masks_and_overlays_and_batched_forwards(model_dir, collection, reference, tmp_path):
    rc, _, err = run(["predict", "--model", str(model_dir), "--input", str(collection), "--out", str(tmp_path),
                      "--batch-size", "3", "--workers", "0", "--no-batch-invariant", "--save-masks", "--overlays",
                      *FLOAT32])
    assert rc == 0, err
    ours, ref = lines_of(tmp_path / PREDICTIONS_FILE), lines_of(reference / PREDICTIONS_FILE)
    assert [(r["image"], r["expression"]) for r in ours] == [(r["image"], r["expression"]) for r in ref]
    for a, b in zip(ours, ref):
        mask = np.asarray(Image.open(tmp_path / a["mask_file"])) == 255
        overlay = Image.open(tmp_path / a["overlay_file"])
        assert mask.shape == tuple(a["rle"]["size"]) and overlay.size == mask.shape[::-1]
        assert np.array_equal(mask, coco_mask.decode({**a["rle"], "counts": a["rle"]["counts"].encode()}) == 1)
        # One forward per batch rounds differently from batch 1: a threshold pixel or two may move.
        assert abs(a["area"] - b["area"]) <= 0.002 * mask.size and abs(a["score"] - b["score"]) < 1e-3


# ------------------------------------------------------------------------------------------ refusals


def test_strict_refuses_a_bad_line_before_any_work(model_dir, collection, tmp_path):
    rc, _, err = run(["predict", "--model", str(model_dir), "--input", str(collection), "--out", str(tmp_path / "o"),
                      "--strict", *FLOAT32])
    assert rc == 2 and f"{collection}:6" in err and "--strict" in err
    assert not (tmp_path / "o" / PREDICTIONS_FILE).exists()


@pytest.mark.parametrize(("line", "message"), [
    ('["a.png"]', "expected a JSON object"),
    ('{"expressions": ["x"]}', '"image"'),
    ('{"image": "a.png"}', "not both or neither"),
    ('{"image": "a.png", "text": "x", "expressions": ["y"]}', "not both or neither"),
    ('{"image": "a.png", "expressions": "x"}', "list of strings"),
    ('{"image": "a.png", "expressions": []}', "no expression"),
    ('{"image": "a.png", "expressions": ["  "]}', "empty"),
    ('{"image": "a.png", "text": 3}', "list of strings"),
])
def test_bad_lines_are_named(tmp_path, line, message):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"image": "ok.png", "text": "fine"}\n' + line.encode() + b"\n\xff\xfe\n")
    parsed = read_manifest(manifest)
    assert [n for n, _ in parsed.problems] == [2, 3] and message in parsed.problems[0][1]
    assert "UTF-8" in parsed.problems[1][1]
    with pytest.raises(ValueError, match=f"{manifest}:2: "):
        read_manifest(manifest, strict=True)


def test_refusals(model_dir, collection, reference, tmp_path):
    base = ["predict", "--model", str(model_dir), *FLOAT32]
    rc, _, err = run(base + ["--input", str(collection), "--out", str(reference)])
    assert rc == 2 and "--resume" in err  # an earlier run's output is never overwritten silently
    rc, _, err = run(base + ["--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "none.jsonl" in err
    rc, _, err = run(base + ["--input", str(collection), "--text", "x", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--text goes with --image" in err
    rc, _, err = run(base + ["--image", str(collection.parent / "pics" / "img0.png"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--text" in err
    rc, _, err = run(base + ["--image", str(collection.parent / "pics" / "img0.png"), "--text", "x", "--resume",
                             "--out", str(tmp_path / "o")])
    assert rc == 2 and "--resume works with --input" in err
    (tmp_path / "empty.jsonl").write_text("\n\n")
    rc, _, err = run(base + ["--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no usable line" in err


# ------------------------------------------------------------------------------------------ resume


def test_resume_after_a_torn_line_and_other_world_sizes(model_dir, collection, reference, tmp_path):
    full = (reference / PREDICTIONS_FILE).read_bytes()
    lines = full.splitlines(keepends=True)
    # A single-process run killed in the middle of its 6th line.
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / PREDICTIONS_FILE).write_bytes(b"".join(lines[:5]) + lines[5][:40])
    # A three-process run killed early: each rank wrote some of its lines, rank 1 a torn one.
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    (ranks / "predictions.rank0.jsonl").write_bytes(lines[0] + lines[3])
    (ranks / "predictions.rank1.jsonl").write_bytes(lines[1] + lines[4][:-1])
    (ranks / "predictions.rank2.jsonl").write_bytes(lines[8] + b"{not json}\n")
    (ranks / "errors.rank2.jsonl").write_text('{"image": "stale", "line": 1, "error": "from an old run"}\n')
    for out, done in ((torn, 5), (ranks, 4)):
        rc, stdout, err = run(["predict", "--model", str(model_dir), "--input", str(collection), "--out", str(out),
                               "--resume", "--batch-size", "2", *FLOAT32])
        assert rc == 0, err
        assert f"{12 - done} expression(s)" in stdout and f"{done} already done" in stdout
        assert (out / PREDICTIONS_FILE).read_bytes() == full
        assert (out / "errors.jsonl").read_bytes() == (reference / "errors.jsonl").read_bytes()
        assert sorted(p.name for p in out.iterdir()) == ["errors.jsonl", PREDICTIONS_FILE]
    # Resuming a finished run does nothing and changes nothing.
    rc, stdout, err = run(["predict", "--model", str(model_dir), "--input", str(collection), "--out", str(torn),
                           "--resume", *FLOAT32])
    assert rc == 0 and "0 expression(s)" in stdout and "12 already done" in stdout
    assert (torn / PREDICTIONS_FILE).read_bytes() == full


def test_a_failed_write_stops_the_run_and_resume_completes_it(model_dir, collection, reference, tmp_path,
                                                              monkeypatch):
    import detris.collection

    real, calls = detris.collection.prediction_record, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(detris.collection, "prediction_record", full_disk)
    argv = ["predict", "--model", str(model_dir), "--input", str(collection), "--out", str(tmp_path), *FLOAT32]
    with pytest.raises(OSError, match="No space left"):  # raised by the writer thread, in the main thread
        run(argv + ["--workers", "1"])
    assert len(lines_of(tmp_path / PREDICTIONS_FILE)) == 3
    monkeypatch.undo()
    rc, stdout, err = run(argv + ["--resume"])
    assert rc == 0 and "3 already done" in stdout, err
    assert (tmp_path / PREDICTIONS_FILE).read_bytes() == (reference / PREDICTIONS_FILE).read_bytes()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "detris.cli", "predict", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_file(model_dir, tmp_path):
    manifest = write_collection(tmp_path / "big", images=40)
    base = ["--model", str(model_dir), "--input", str(manifest), "--batch-size", "2", "--workers", "1", *FLOAT32]
    whole = tmp_path / "whole"
    subprocess.run(_cli(*base, "--out", str(whole)), env=_env(), check=True, capture_output=True, timeout=600)
    total = len((whole / PREDICTIONS_FILE).read_bytes().splitlines())
    assert total == sum(1 + i % 3 for i in range(40))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*base, "--out", str(killed)), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            path = killed / PREDICTIONS_FILE
            if path.exists() and path.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    written = (killed / PREDICTIONS_FILE).read_bytes().count(b"\n")
    assert 10 <= written < total, written  # killed mid-way
    done = subprocess.run(_cli(*base, "--out", str(killed), "--resume"), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stdout
    assert (killed / PREDICTIONS_FILE).read_bytes() == (whole / PREDICTIONS_FILE).read_bytes()


@pytest.mark.slow
def test_torchrun_two_processes_write_the_single_process_file(model_dir, collection, tmp_path):
    """Two ranks of one thread each against one process of one thread: floating-point sums split over
    threads round differently (a score's last digit), so the thread count is the same on both sides."""
    args = ["--model", str(model_dir), "--input", str(collection), "--batch-size", "3", "--workers", "1", *FLOAT32]
    one = subprocess.run(_cli(*args, "--out", str(tmp_path / "one")), env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "detris.cli", "predict"]
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    two = subprocess.run(launcher + args + ["--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "by rank 0 of 2" in two.stdout
    for name in (PREDICTIONS_FILE, "errors.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["errors.jsonl", PREDICTIONS_FILE]


# ------------------------------------------------------------------------------------------ predict_many


def test_predict_many_streams_in_order_and_equals_predict(model_dir, collection):
    predictor = Predictor.from_pretrained(model_dir, device="cpu", dtype="float32")
    pics = sorted((collection.parent / "pics").rglob("img*"))
    items = [(str(p), EXPRESSIONS[: 1 + k % 3]) for k, p in enumerate(pics)]

    def generated():  # a generator: workers each iterate their own copy
        yield from items

    for workers in (0, 2):
        results = list(predictor.predict_many(generated(), batch_size=4, workers=workers))
        assert [r.index for r in results] == list(range(len(items)))
        for r, (path, texts) in zip(results, items):
            assert r.error is None and r.image == path and [p.text for p in r.predictions] == texts
            for p, alone in zip(r.predictions, (predictor.predict(path, t)[0] for t in texts)):
                assert np.array_equal(p.mask, alone.mask) and np.array_equal(p.probability, alone.probability)
    broken = [(items[0][0], "x"), (str(collection.parent / "pics" / "broken.jpg"), "y"), (items[1][0], "z")]
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        list(predictor.predict_many(broken))
    results = list(predictor.predict_many(broken, skip_errors=True, keep_images=True))
    assert [r.error is None for r in results] == [True, False, True]
    assert results[1].predictions == [] and results[0].rgb is not None and results[0].rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="empty"):
        list(predictor.predict_many([(items[0][0], ["ok", " "])]))
