"""Hostile input: a seeded, fast subset of the fuzz targets, and one regression test per finding.

The targets live in ``fuzz_targets.py`` (shared with ``fuzz_run.py``, the long run). Each
hypothesis test below runs a fixed, derandomised set of mutated inputs through one reader; the
contract (a result, or a documented exception naming the file) is checked inside the target.
"""

from __future__ import annotations

import json
import pickle
import random
import resource
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import fuzz_targets
from fuzz_targets import TARGETS, make_case

FAST = settings(derandomize=True, max_examples=12, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

_SEEDS: dict[str, list[bytes]] = {}


def _run_target(name: str, case_seed: int, tmp_path_factory) -> None:
    target = TARGETS[name]
    if name not in _SEEDS:
        _SEEDS[name] = target.seeds()
    data = make_case(target, _SEEDS[name], random.Random(case_seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's "Corrupt EXIF data" and friends: expected here
        target.check(data, tmp_path_factory.mktemp(name))


@pytest.mark.parametrize("name", sorted(set(TARGETS) - {"safetensors", "official"}))
@FAST
@given(case_seed=st.integers(0, 2**32 - 1))
def test_fuzz_target_keeps_the_contract(name, case_seed, tmp_path_factory):
    _run_target(name, case_seed, tmp_path_factory)


@pytest.mark.parametrize("name", ["safetensors", "official"])
@settings(FAST, max_examples=6)
@given(case_seed=st.integers(0, 2**32 - 1))
def test_fuzz_weight_files_keep_the_contract(name, case_seed, tmp_path_factory):
    # Fewer cases: every input is a 17 MB detris-tiny weight file.
    _run_target(name, case_seed, tmp_path_factory)


@FAST
@given(text=st.text(st.characters(codec=None), max_size=300), length=st.integers(2, 40))
def test_tokenizer_takes_any_unicode(text, length):
    from detris.tokenizer import tokenize

    ids = tokenize([text, text * 3], context_length=length)
    assert ids.shape == (2, length) and ids.dtype == torch.long
    assert int(ids.max()) < 49408 and int(ids[0, 0]) == 49406


def test_tokenizer_takes_100k_characters_in_bounded_time():
    from detris.tokenizer import tokenize

    for text in ("\U0001f600" * 100_000, "\ud800x" * 50_000, "the dog " * 12_500):
        start = time.perf_counter()
        ids = tokenize(text, context_length=17)
        assert ids.shape == (1, 17) and time.perf_counter() - start < 5.0


# ------------------------------------------------------------------------------------------ findings
def _refer_root(tmp_path: Path, refs: bytes | None = None, instances: bytes | None = None) -> Path:
    return fuzz_targets._write_refer(tmp_path, refs_bytes=refs, instances_bytes=instances)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_pickle_with_a_huge_memo_index_costs_no_memory(tmp_path):
    """Finding: the C unpickler sized its memo by ``LONG_BINPUT 0x7fffffff`` (a 9-byte file -> ~16 GB)."""
    from detris.data.safe_pickle import safe_load_pickle

    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02]r" + struct.pack("<I", 0x7FFFFFFF) + b".")
    before, start = _peak_rss_mb(), time.perf_counter()
    assert safe_load_pickle(path) == []
    assert time.perf_counter() - start < 1.0 and _peak_rss_mb() - before < 100


def test_pickle_of_shared_references_is_not_expanded(tmp_path):
    """Finding: 40 levels of ``[a, a]`` (a 200-byte pickle) were decoded into 2**40 copies (a hang)."""
    from detris.data.safe_pickle import safe_load_pickle

    value: list = ["x"]
    for _ in range(40):
        value = [value, value]
    path = tmp_path / "shared.p"
    path.write_bytes(pickle.dumps(value, protocol=2))
    start = time.perf_counter()
    out = safe_load_pickle(path)
    assert time.perf_counter() - start < 1.0 and out[0] is out[1]


@pytest.mark.parametrize("kind", ["cycle", "deep"])
def test_cyclic_or_deep_pickle_is_refused_naming_the_file(tmp_path, kind):
    """Finding: a list containing itself, or nested 100k deep, escaped as RecursionError."""
    from detris.data.refer import load_refer

    if kind == "cycle":
        value: list = []
        value.append(value)
        data = pickle.dumps(value, protocol=2)
    else:
        data = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."  # EMPTY_LIST x N, APPEND x N-1
    root = _refer_root(tmp_path, refs=data)
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p"):
        load_refer(root, "refcoco")


def test_unsafe_pickle_error_is_a_value_error():
    """So that the command line's ``except ValueError`` reports it in one line."""
    from detris.data.safe_pickle import UnsafePickleError

    assert issubclass(UnsafePickleError, ValueError) and issubclass(UnsafePickleError, pickle.UnpicklingError)


@pytest.mark.parametrize("instances, problem", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "expected a COCO object"),
    (b'{"images": {}, "annotations": []}', "must hold a list"),
    (b'{"images": [{"file_name": "a.jpg"}], "annotations": []}', r"images\[0\] is not a usable record"),
    (b'{"images": [{"id": 11, "file_name": "a.jpg", "height": 0, "width": 5}], "annotations": []}',
     "positive integer 'height'"),
    (b'{"images": [], "annotations": [7]}', r"annotations\[0\]"),
])
def test_malformed_instances_json_is_refused_naming_the_file(tmp_path, instances, problem):
    """Findings: each of these escaped as UnicodeDecodeError / TypeError / KeyError without the file."""
    from detris.data.refer import load_refer

    root = _refer_root(tmp_path, instances=instances)
    with pytest.raises(ValueError, match=problem) as info:
        load_refer(root, "refcoco")
    assert "instances.json" in str(info.value)


@pytest.mark.parametrize("edit, problem", [
    ({"ref_id": "seven"}, "not an integer"),
    ({"ann_id": [201]}, "not an integer"),
    ({"split": 3}, "split that is not a string"),
    ({"sentences": "left man"}, "'sentences' must be a list"),
    ({"sentences": [{"sent": 5}]}, "'sentences' must be a list"),
])
def test_malformed_refs_are_refused_naming_the_file(tmp_path, edit, problem):
    from detris.data.refer import load_refer

    refs, _ = fuzz_targets._refer_content()
    refs[1].update(edit)
    root = _refer_root(tmp_path, refs=pickle.dumps(refs, protocol=2))
    with pytest.raises(ValueError, match=problem) as info:
        load_refer(root, "refcoco")
    assert "refs(unc).p" in str(info.value)


@pytest.mark.parametrize("segmentation, problem", [
    ({"size": [2, 2], "counts": "0000"}, "cover 0 pixels"),  # runs short of h*w: uninitialised memory
    ({"size": [2, 2], "counts": ""}, "cover 0 pixels"),
    ({"size": [2, 2], "counts": [1, 100, 3]}, "cover 104 pixels"),
    ({"size": [2, 2], "counts": "0\x7f"}, "hold the character"),
    ({"size": [[2], 2], "counts": "0"}, "malformed segmentation"),
    ([[0, 0, float("nan"), 0, 5, 5]], "not finite"),  # segfaulted inside pycocotools
    ([[0, 0, 1e9, 0, 1e9, 1e9]], "far outside"),  # asked pycocotools for ~40 GB
])
def test_rle_and_polygons_pycocotools_cannot_take_are_refused(segmentation, problem):
    """Findings: pycocotools trusts its input; these gave garbage masks, a segfault or exhausted memory."""
    from detris.data.coco import segmentation_to_mask

    with pytest.raises(ValueError, match=problem):
        segmentation_to_mask(segmentation, 2, 2)


def test_compressed_rle_check_agrees_with_pycocotools():
    from pycocotools import mask as coco_mask

    from detris.data.coco import _rle_total, segmentation_to_mask

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = np.asfortranarray((rng.random((h, w)) < rng.random()).astype(np.uint8))
        counts = coco_mask.encode(mask)["counts"]
        assert _rle_total(counts) == h * w
        assert np.array_equal(segmentation_to_mask({"size": [h, w], "counts": counts.decode()}, h, w), mask)


def test_jsonl_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    from detris.data.datasets import JsonlSegDataset

    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"image": "a.png", "sentence": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"data\.jsonl: not UTF-8"):
        JsonlSegDataset(path, tokenizer=fuzz_targets._tiny_tokenizer)


def test_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    from detris.engine.config import ConfigError, load_config

    path = tmp_path / "run.yaml"
    path.write_bytes(b"train:\n  lr: 1e-4 # \xff\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: not UTF-8"):
        load_config(path)


def _official_bytes(obj) -> bytes:
    return fuzz_targets._torch_bytes(obj)


@pytest.mark.parametrize("make, problem", [
    (lambda: _official_bytes({"state_dict": {"a": torch.zeros(2)}})[:-30] + b"\x00" * 30, "not a readable"),
    (lambda: _official_bytes([1, 2, 3]), "holds a list"),
    (lambda: _official_bytes({"epoch": 3}), "holds no tensors"),
    (lambda: _official_bytes(torch.zeros(3)), "holds a Tensor"),
])
def test_damaged_or_odd_official_checkpoint_is_refused_naming_the_file(tmp_path, make, problem):
    """Findings: zipfile.BadZipFile, AttributeError, RuntimeError escaped; 'no tensors' did not name the file."""
    from detris.pretrained import load_official_checkpoint
    from detris.weights import CheckpointError

    path = tmp_path / "best_model.pth"
    path.write_bytes(make())
    with pytest.raises(CheckpointError, match=problem) as info:
        load_official_checkpoint(path)
    assert str(path) in str(info.value)


def test_image_with_a_huge_header_is_refused_before_decoding(tmp_path):
    """A 40-byte PNG claiming 100000 x 100000 pixels: PIL's bomb guard, reported as ImageLoadError."""
    from detris.data.images import ImageLoadError, load_image

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 64)
    chunk += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    before = _peak_rss_mb()
    with pytest.raises(ImageLoadError, match="too large") as info:
        load_image(path)
    assert str(path) in str(info.value) and _peak_rss_mb() - before < 100


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    """A real bomb: a few kB of zlib that decode to more pixels than the (lowered) bound."""
    from detris.data.images import ImageLoadError, load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1 << 20)
    path = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(path, optimize=True)
    assert path.stat().st_size < 20_000
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path)


def test_mutated_model_config_json_values_are_refused_naming_the_file(tmp_path):
    from detris.weights import CheckpointError, read_model_dir

    seed = json.loads(fuzz_targets._model_config_seeds()[0])
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"")
    for edit in ({"config": None}, {"config": {**seed["config"], "vision_width": "wide"}},
                 {"config": {**seed["config"], "vision_width": 10**9}},
                 {"config": {**seed["config"], "patch_size": 0}},  # long-run finding: ZeroDivisionError
                 {"processing": [1]}, {"adapter_only": True, "base_weights": {"dinov2": 3, "clip": None}}):
        (directory / "config.json").write_text(json.dumps({**seed, **edit}))
        with pytest.raises(CheckpointError) as info:
            read_model_dir(directory)
        assert str(directory / "config.json") in str(info.value)


@pytest.mark.parametrize("overrides", [
    # nine aliases nested six deep: a 1 kB file that expands to ~1M values (20 s and ~1 GB to write out)
    "\n".join(["    a0: &a0 [x, x]"] + [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]),
    "    loop: &loop [*loop]",  # a list that contains itself
])
def test_config_alias_bombs_are_refused_naming_the_file(tmp_path, overrides):
    """Finding: the config was accepted, then copied and written out expanded (config.yaml, checkpoints)."""
    from detris.engine.config import ConfigError, load_config

    path = tmp_path / "bomb.yaml"
    path.write_text(f"model:\n  variant: detris-tiny\n  overrides:\n{overrides}\ndata: {{dataset: synthetic}}\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: the config expands to more than 100000 values"):
        load_config(path)
    assert time.perf_counter() - start < 2.0


def test_mask_png_bomb_is_an_image_load_error(tmp_path, monkeypatch):
    """Finding: PIL's DecompressionBombError (not an OSError) escaped from a JSONL record's mask PNG."""
    from detris.data.datasets import JsonlSegDataset
    from detris.data.images import ImageLoadError

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "img.png")  # 400 px: under the bound
    Image.new("L", (64, 64)).save(tmp_path / "mask.png")
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "img.png", "sentence": "x", "mask": "mask.png"}))
    ds = JsonlSegDataset(tmp_path / "data.jsonl", mode="val", input_size=32, tokenizer=fuzz_targets._tiny_tokenizer)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px is now over twice the bound
    with pytest.raises(ImageLoadError, match=r"mask\.png: cannot read mask image \(DecompressionBombError"):
        ds[0]


@pytest.mark.parametrize("edit", ["drop_first_adapter", "scalar_pos_embed"])
def test_weights_missing_an_adapter_tensor_are_refused_naming_the_file(tmp_path, edit):
    """Long-run finding: the variant guess behind the error message raised KeyError (IndexError for a
    0-d tensor) on a model.safetensors lacking the first adapter's D_fc1.weight."""
    from safetensors.torch import load, save

    from detris.weights import CheckpointError

    sd = load(fuzz_targets._safetensors_seeds()[0])
    if edit == "drop_first_adapter":
        first = min(k for k in sd if ".adapter.D_fc1.weight" in k and k.startswith("dinov2."))
        del sd[first]
    else:
        sd["dinov2.pos_embed"] = torch.tensor(1.0)
    from detris.weights import load_trained_weights, read_model_dir

    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_bytes(fuzz_targets._model_config_seeds()[0])
    (directory / "model.safetensors").write_bytes(save(sd))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not fit the model"):
        load_trained_weights(fuzz_targets._tiny_model(), read_model_dir(directory))


@pytest.mark.parametrize("yaml_text, problem", [
    ('train:\n  lr: "\\U00110000"\n', r"not valid YAML \(ValueError: chr\(\) arg not in range"),  # PyYAML's own
    ('train:\n  lr: "\\UFFFFFFFF"\n', r"not valid YAML \(OverflowError"),
    ("5: 1\nmodel: {}\n", "has a key that is not a name: 5"),  # sorting the unknown keys raised TypeError
    ("train:\n  null: 1\n", "has a key that is not a name: None"),
])
def test_config_yaml_errors_outside_yamlerror_are_config_errors(tmp_path, yaml_text, problem):
    """Long-run findings: ValueError / OverflowError from PyYAML's scanner and TypeError from non-string keys."""
    from detris.engine.config import ConfigError, load_config

    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=problem) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_override_value_yaml_errors_name_the_override():
    from detris.engine.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match=r"override 'train.lr=\"\\\\UFFFFFFFF\"': value is not valid YAML"):
        apply_overrides({}, ['train.lr="\\UFFFFFFFF"'])
