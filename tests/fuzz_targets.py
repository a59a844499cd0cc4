"""Fuzz targets shared by the fast suite (tests/test_fuzz.py) and the long runner (tests/fuzz_run.py).

Each target reads one kind of user file. It has seed inputs (real-layout files, built here) and a
``check(data, workdir)`` that writes ``data`` where the reader expects its file and runs the reader.
The contract every target enforces (see docs/reliability.md):

* the reader returns a result of the documented form, or
* it raises a documented exception type (`DOCUMENTED`: ``FileNotFoundError`` or ``ValueError``, which
  detris' own ``ConfigError``, ``ImageLoadError``, ``CheckpointError`` and ``UnsafePickleError`` are)
  whose message names the file it read;
* anything else (a library's ``KeyError``, ``struct.error``, ``RecursionError`` ...) escapes and is a
  finding. Hangs and memory growth are bounded by the runner (per-case time and RSS limits).
"""

from __future__ import annotations

import io
import json
import pickle
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from refer_fixtures import _as_py2, _ref_record, py2_pickle_dumps, uncompressed_rle

#: The exception types detris documents for "this input is not usable" (subclasses included).
DOCUMENTED: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)

#: The harness caps PIL's decompression-bomb threshold so that a mutated header claiming a huge image
#: is refused (the path under test) instead of allocating hundreds of MB per case.
FUZZ_MAX_IMAGE_PIXELS = 1 << 22


class ContractViolation(AssertionError):
    """A documented exception whose message does not name the file (or the override) it is about."""


def expect_contract(call: Callable[[], Any], names: Sequence[str]) -> Any:
    """``call()``; a documented exception is returned (not raised) after checking its message.

    Any other exception propagates: that is a finding.
    """
    try:
        return call()
    except DOCUMENTED as exc:
        message = str(exc)
        # A message may quote a name with repr() (an override holding a newline reads '...\\n...').
        if not any(name and (name in message or repr(name)[1:-1] in message) for name in names):
            raise ContractViolation(
                f"{type(exc).__name__} does not name {list(names)}: {message[:400]!r}"
            ) from exc
        return exc


# ------------------------------------------------------------------------------------------ mutation
_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                b"\x00\x00\x00\x00", b"\x80\x00\x00\x00", b"\xff\xff\xff\xff\xff\xff\xff\x7f"]


def mutate(data: bytes, rng: random.Random, ops: int = 3, hot: int = 0) -> bytes:
    """``ops`` random byte-level edits of ``data``: flips, interesting values, inserts, deletes,
    duplicated or truncated ranges. ``hot``: with it, most edits fall in the first and last ``hot``
    bytes (headers and zip directories of large files)."""
    buf = bytearray(data)
    for _ in range(ops):
        if not buf:
            buf.extend(rng.randbytes(rng.randint(1, 8)))
            continue
        if hot and len(buf) > 2 * hot and rng.random() < 0.8:
            pos = rng.randrange(hot) if rng.random() < 0.5 else len(buf) - 1 - rng.randrange(hot)
        else:
            pos = rng.randrange(len(buf))
        op = rng.randrange(7)
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            value = rng.choice(_INTERESTING)
            buf[pos:pos + len(value)] = value
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del buf[pos:pos + rng.randint(1, 32)]
        elif op == 4:
            end = min(len(buf), pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end] * rng.randint(1, 4)
        elif op == 5:
            del buf[pos:]
        else:
            buf[pos] = rng.randrange(256)
    return bytes(buf)


_TEXT_TOKENS = ['"', "{", "}", "[", "]", ",", ":", "-", "0", "-1", "1e999", "NaN", "Infinity", "null", "true",
                "\\u0000", "\\ud800", "\n", "\t", " ", "#", "&a", "*a", "!!python/object:os.system", "? ",
                "%YAML 1.1\n", "---\n", "\u00e9", "\U0001f600", "9" * 30, "\x00", "=", "."]


def mutate_text(data: bytes, rng: random.Random, ops: int = 3) -> bytes:
    """Character-level edits of a text file (byte edits mostly just break its UTF-8): syntax characters,
    odd numbers and escapes inserted, spans deleted or repeated."""
    text = data.decode("utf-8", "replace")
    for _ in range(ops):
        pos = rng.randrange(len(text) + 1)
        op = rng.randrange(4)
        if op == 0:
            text = text[:pos] + rng.choice(_TEXT_TOKENS) + text[pos:]
        elif op == 1:
            text = text[:pos] + text[pos + rng.randint(1, 12):]
        elif op == 2:
            text = text[:pos] + text[pos:pos + rng.randint(1, 40)] * rng.randint(2, 5) + text[pos:]
        else:
            text = text[:pos] + rng.choice(_TEXT_TOKENS) + text[pos + 1:]
    return text.encode("utf-8", "surrogatepass")


def _mutate_json_value(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """One structure-aware edit: a random subtree replaced by a value of another kind."""
    choices: list[Any] = [None, True, -1, 0, 2**63, 1e308, float("nan"), "", "x" * 50, "\u00e9\U0001f600",
                          [], {}, [[1, 2]], {"size": [2, 2], "counts": "0"}, 3.5, "12"]
    if isinstance(value, dict) and value and rng.random() < 0.85:
        key = rng.choice(list(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out[rng.choice(["id", "size", "counts", "extra", key + "_"])] = rng.choice(choices)
        else:
            out[key] = _mutate_json_value(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.85:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        roll = rng.random()
        if roll < 0.15:
            del out_list[i]
        elif roll < 0.25:
            out_list.append(rng.choice(out_list))
        else:
            out_list[i] = _mutate_json_value(out_list[i], rng, depth + 1)
        return out_list
    return rng.choice(choices)


def mutate_structure(value: Any, rng: random.Random, ops: int = 2) -> Any:
    """``ops`` structure-aware edits of plain data (dicts, lists, scalars)."""
    for _ in range(ops):
        value = _mutate_json_value(value, rng)
    return value


# ------------------------------------------------------------------------------------------ targets
@dataclass
class Target:
    """One reader under fuzz: its seed files, how to check one input, and how to make structured inputs."""

    name: str
    seeds: Callable[[], list[bytes]]
    check: Callable[[bytes, Path], Any]
    #: seed -> structure-aware variant (JSON/YAML/pickle content edited as data); None: bytes only.
    structured: Callable[[bytes, random.Random], bytes] | None = None
    #: mutate mostly the first/last ``hot`` bytes of large seeds (see `mutate`).
    hot: int = 0
    #: a text format: most edits are character-level (`mutate_text`).
    text: bool = False


def _tiny_tokenizer(texts: Sequence[str], context_length: int = 17) -> torch.Tensor:
    # The datasets call the tokenizer; the real one has its own target.
    return torch.ones(len(texts), context_length, dtype=torch.long)


# REFER ---------------------------------------------------------------------------------------------
def _refer_content() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A small refs list and instances dict in the REFER release's layout (polygon and both RLEs)."""
    mask = np.zeros((20, 24), np.uint8)
    mask[4:12, 6:18] = 1
    from pycocotools import mask as coco_mask

    compressed = coco_mask.encode(np.asfortranarray(mask))
    instances = {
        "images": [{"id": 11, "file_name": "a.jpg", "height": 20, "width": 24},
                   {"id": 12, "file_name": "b.jpg", "height": 30, "width": 16}],
        "annotations": [
            {"id": 201, "image_id": 11, "category_id": 1, "segmentation": [[2, 2, 20, 2, 20, 15, 2, 15]]},
            {"id": 202, "image_id": 11, "category_id": 1,
             "segmentation": {"size": [20, 24], "counts": compressed["counts"].decode("ascii")}},
            {"id": 203, "image_id": 11, "category_id": 1, "segmentation": uncompressed_rle(mask)},
            {"id": 204, "image_id": 12, "category_id": 1, "segmentation": [[1, 1, 10, 1, 5, 20], [0, 0, 1, 0]]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    refs = [_ref_record(1, 201, "train", ["left man", "guy"], 100) | {"image_id": 11},
            _ref_record(2, 202, "val", ["the block"], 200) | {"image_id": 11},
            _ref_record(3, 203, "testA", ["block"], 300) | {"image_id": 11},
            _ref_record(4, 204, "testAB", ["caf\u00e9 thing"], 400) | {"image_id": 12}]
    return refs, instances


def _write_refer(workdir: Path, refs_bytes: bytes | None = None, instances_bytes: bytes | None = None) -> Path:
    refs, instances = _refer_content()
    folder = workdir / "refer" / "refcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs(unc).p").write_bytes(refs_bytes if refs_bytes is not None else pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_bytes(
        instances_bytes if instances_bytes is not None else json.dumps(instances).encode()
    )
    return workdir / "refer"


def _exercise_refer(data_root: Path) -> Any:
    """Everything a training or evaluation run asks of a loaded REFER set."""
    from detris.data.datasets import ReferSegDataset
    from detris.data.refer import load_refer

    refer = load_refer(data_root, "refcoco")
    for split in refer.splits:
        for ref_id in refer.ref_ids(split):
            refer.sentences(ref_id)
            refer.image_path(ref_id, data_root)
            mask = refer.get_mask(ref_id)
            info = refer.image_info(ref_id)
            assert mask.shape == (int(info["height"]), int(info["width"])) and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) <= {0, 1}
        ReferSegDataset(refer, split, image_root=data_root, tokenizer=_tiny_tokenizer, empty_sentences="drop")
    return refer


def _pickle_seeds() -> list[bytes]:
    refs, _ = _refer_content()
    return [pickle.dumps(refs, protocol=2), pickle.dumps(refs, protocol=4),
            py2_pickle_dumps(_as_py2(refs, unicode_texts=("block",)))]


def _check_pickle(data: bytes, workdir: Path) -> Any:
    from detris.data.safe_pickle import safe_load_pickle

    root = _write_refer(workdir, refs_bytes=data)
    refs_path = root / "refcoco" / "refs(unc).p"
    expect_contract(lambda: safe_load_pickle(refs_path), [str(refs_path)])
    # A load error may name either file: the refs file or the instances it points into.
    return expect_contract(lambda: _exercise_refer(root), [str(refs_path), str(root / "refcoco" / "instances.json")])


def _structured_pickle(seed: bytes, rng: random.Random) -> bytes:
    refs, _ = _refer_content()
    edited = mutate_structure(refs, rng, rng.randint(1, 3))
    try:
        return pickle.dumps(edited, protocol=rng.choice([2, 4]))
    except (pickle.PicklingError, TypeError, ValueError, OverflowError):
        return seed


def _instances_seeds() -> list[bytes]:
    _, instances = _refer_content()
    return [json.dumps(instances).encode(), json.dumps(instances, indent=1).encode()]


def _check_instances(data: bytes, workdir: Path) -> Any:
    root = _write_refer(workdir, instances_bytes=data)
    folder = root / "refcoco"
    return expect_contract(lambda: _exercise_refer(root), [str(folder / "instances.json"), str(folder / "refs(unc).p")])


def _structured_instances(seed: bytes, rng: random.Random) -> bytes:
    _, instances = _refer_content()
    return json.dumps(mutate_structure(instances, rng, rng.randint(1, 3))).encode()


# JSONL ---------------------------------------------------------------------------------------------
def _jsonl_records() -> list[dict[str, Any]]:
    from pycocotools import mask as coco_mask

    box = np.zeros((12, 16), np.uint8)
    box[3:9, 4:12] = 1
    counts = coco_mask.encode(np.asfortranarray(box))["counts"].decode("ascii")
    return [
        {"image": "img.png", "sentence": "the cat on the left", "mask": "mask.png"},
        {"image": "img.png", "sentence": "right cat", "polygon": [[1, 2, 10, 2, 10, 9, 1, 9]]},
        {"image": "img.png", "sentences": ["brown dog", "the dog"], "id": "dog-1",
         "rle": {"size": [12, 16], "counts": [10, 20, 162]}},
        {"image": "img.png", "sentence": "box", "rle": {"size": [12, 16], "counts": counts}},
    ]


def _jsonl_assets(workdir: Path) -> None:
    if not (workdir / "img.png").is_file():
        Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(workdir / "img.png")
        mask = np.zeros((12, 16), np.uint8)
        mask[2:8, 3:9] = 255
        Image.fromarray(mask).save(workdir / "mask.png")


def _jsonl_seeds() -> list[bytes]:
    records = _jsonl_records()
    return ["\n".join(json.dumps(rec) for rec in records).encode() + b"\n",
            b"# comment\n\n" + json.dumps(records[1]).encode()]


def _check_jsonl(data: bytes, workdir: Path) -> Any:
    from detris.data.datasets import JsonlSegDataset

    _jsonl_assets(workdir)
    path = workdir / "data.jsonl"
    path.write_bytes(data)

    def build_and_read() -> Any:
        ds = JsonlSegDataset(path, mode="test", input_size=32, word_len=8, tokenizer=_tiny_tokenizer)
        for i in range(min(len(ds), 8)):
            item = ds[i]
            assert item["mask_orig"].shape == item["letterbox"].orig_size
        return ds

    # A mask/image file error names that file; everything about the line names the JSONL file.
    return expect_contract(build_and_read, [str(path), *_referenced_files(data, workdir)])


def _referenced_files(data: bytes, base: Path) -> list[str]:
    """The image and mask paths the JSONL lines name (where they parse), as the dataset resolves them."""
    names = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            names += [str(base / v) for k, v in record.items() if k in ("image", "mask") and isinstance(v, str) and v]
    return names


def _structured_jsonl(seed: bytes, rng: random.Random) -> bytes:
    lines = [mutate_structure(rec, rng, 1) if rng.random() < 0.5 else rec for rec in _jsonl_records()]
    return "\n".join(json.dumps(rec) for rec in lines).encode()


# config --------------------------------------------------------------------------------------------
_CONFIG_SEED = """\
model:
  variant: detris-tiny
  dinov2_weights: bundled
  clip_weights: bundled
  overrides: {word_len: 17, patch_size: 8, pretrained_grid: 14}
data:
  dataset: synthetic
  synthetic: {train_images: 8, val_images: 2, image_size: [64, 64]}
train:
  epochs: 2
  milestones: [1]
  lr: 1e-4
  batch_size: 2
  precision: fp32
output:
  dir: runs/fuzz
"""
# Anchors and aliases are YAML's own way to repeat data: the seed the fuzzer grows alias bombs from.
_CONFIG_SEED_ALIASES = _CONFIG_SEED.replace("  overrides: {word_len: 17}\n",
                                            "  overrides: {word_len: &w 17, a: &l [*w, *w], b: [*l, *l]}\n")
_OVERRIDES = ["train.lr=2e-4", "train.milestones=[3, 5]", "data.dataset=refcoco", "train.epochs=0",
              "model.overrides.word_len=22", "output=3", "train.max_minutes=null", "train=", "x.y.z=[1, {a: 2}]"]


def _check_config(data: bytes, workdir: Path) -> Any:
    from detris.engine.config import apply_overrides, config_to_dict, load_config

    path = workdir / "config.yaml"
    path.write_bytes(data)
    rng = random.Random(data)
    overrides = rng.sample(_OVERRIDES, rng.randint(0, 2))
    if rng.random() < 0.3:  # an override of arbitrary text, as a user may type it
        overrides.append(data[:80].decode("utf-8", "replace"))
    cfg = expect_contract(lambda: load_config(path, overrides), [str(path), *overrides])
    if not isinstance(cfg, BaseException):
        config_to_dict(cfg)  # what the run writes into config.yaml and every checkpoint
    expect_contract(lambda: apply_overrides({}, overrides), overrides)
    return cfg


def _structured_config(seed: bytes, rng: random.Random) -> bytes:
    import yaml

    data = mutate_structure(yaml.safe_load(seed), rng, rng.randint(1, 3))
    try:
        return yaml.safe_dump(data).encode()
    except yaml.YAMLError:
        return seed


# images --------------------------------------------------------------------------------------------
def _image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    out = []
    for mode, fmt, kwargs in [("RGB", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}), ("I;16", "PNG", {}),
                              ("RGB", "JPEG", {"quality": 80}), ("L", "JPEG", {"progressive": True}),
                              ("RGB", "TIFF", {}), ("RGB", "TIFF", {"compression": "tiff_deflate"}),
                              ("F", "TIFF", {}), ("RGB", "WEBP", {"quality": 70}), ("RGBA", "WEBP", {"lossless": True}),
                              ("P", "GIF", {}), ("RGB", "BMP", {})]:
        img = Image.fromarray(rgb)
        if mode == "I;16":
            img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        elif mode == "F":
            img = Image.fromarray(rgb[..., 0].astype(np.float32) / 255)
        elif mode != "RGB":
            img = img.convert(mode)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kwargs)
        out.append(buf.getvalue())
    return out


def _check_image(data: bytes, workdir: Path) -> Any:
    from detris.data.images import load_image

    path = workdir / "upload.img"
    path.write_bytes(data)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = FUZZ_MAX_IMAGE_PIXELS
    try:
        result = expect_contract(lambda: load_image(path), [str(path)])
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if isinstance(result, np.ndarray):
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3 and result.flags.c_contiguous
    return result


# model directories: config.json + model.safetensors ----------------------------------------------
_MODEL_CACHE: dict[str, Any] = {}


def _tiny_model() -> Any:
    """One detris-tiny model per process: the weights are loaded into it again and again."""
    if "model" not in _MODEL_CACHE:
        from detris.build import build_model

        torch.manual_seed(0)
        _MODEL_CACHE["model"] = build_model("detris-tiny").eval()
    return _MODEL_CACHE["model"]


def _model_dir_seed() -> Path:
    """A saved detris-tiny directory, written once per process."""
    if "dir" not in _MODEL_CACHE:
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="detris-fuzz-model-"))
        _tiny_model().save_pretrained(directory)
        _MODEL_CACHE["dir"] = directory
    return _MODEL_CACHE["dir"]


def _model_config_seeds() -> list[bytes]:
    return [(_model_dir_seed() / "config.json").read_bytes()]


def _check_model_config(data: bytes, workdir: Path) -> Any:
    from detris.weights import read_model_dir

    directory = workdir / "model"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_bytes(data)
    weights = directory / "model.safetensors"
    if not weights.exists():
        weights.symlink_to(_model_dir_seed() / "model.safetensors")
    return expect_contract(lambda: read_model_dir(directory), [str(directory / "config.json")])


def _structured_model_config(seed: bytes, rng: random.Random) -> bytes:
    return json.dumps(mutate_structure(json.loads(seed), rng, rng.randint(1, 3))).encode()


def _safetensors_seeds() -> list[bytes]:
    return [(_model_dir_seed() / "model.safetensors").read_bytes()]


def _check_safetensors(data: bytes, workdir: Path) -> Any:
    from detris.weights import load_trained_weights, read_model_dir

    directory = workdir / "model"
    directory.mkdir(exist_ok=True)
    config = directory / "config.json"
    if not config.exists():
        config.write_bytes((_model_dir_seed() / "config.json").read_bytes())
    weights = directory / "model.safetensors"
    if weights.is_symlink():
        weights.unlink()
    weights.write_bytes(data)

    def load() -> Any:
        files = read_model_dir(directory)
        load_trained_weights(_tiny_model(), files)
        return files

    return expect_contract(load, [str(weights)])


def _edit_state_dict(sd: dict[str, torch.Tensor], rng: random.Random) -> dict[str, Any]:
    """One structural edit of a state dict: a wrong dtype, a wrong shape, a key dropped or renamed."""
    out: dict[str, Any] = dict(sd)
    key = rng.choice(sorted(out))
    roll = rng.randrange(6)
    if roll == 0:
        out[key] = out[key].to(rng.choice([torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.uint8]))
    elif roll == 1:
        out[key] = torch.zeros(*(s + rng.choice([-1, 1, 7]) for s in out[key].shape), dtype=out[key].dtype) \
            if out[key].dim() and min(out[key].shape) > 1 else torch.zeros(3, 3)
    elif roll == 2:
        del out[key]
    elif roll == 3:
        out[key + ".extra"] = out.pop(key)
    elif roll == 4:
        out[key] = out[key].flatten()
    else:
        out[key] = torch.full_like(out[key].float(), float("nan"))
    return out


def _structured_safetensors(seed: bytes, rng: random.Random) -> bytes:
    from safetensors.torch import load, save

    return save({k: v.contiguous() for k, v in _edit_state_dict(load(seed), rng).items()})


# official .pth checkpoints -------------------------------------------------------------------------
def _official_state() -> dict[str, torch.Tensor]:
    return {"module." + k: v for k, v in _tiny_model().state_dict().items()}


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _official_seeds() -> list[bytes]:
    small = {"module.dinov2.pos_embed": torch.zeros(1, 5, 8)}
    return [_torch_bytes({"state_dict": _official_state(), "epoch": 3}),
            _torch_bytes({"state_dict": small}), _torch_bytes([1, 2, 3]), _torch_bytes(torch.zeros(2))]


def _check_official(data: bytes, workdir: Path) -> Any:
    from detris.pretrained import load_official_checkpoint

    path = workdir / "best_model.pth"
    path.write_bytes(data)
    return expect_contract(lambda: load_official_checkpoint(path), [str(path)])


def _structured_official(seed: bytes, rng: random.Random) -> bytes:
    sd = _official_state()
    kind = rng.randrange(6)
    if kind == 0:
        return _torch_bytes({"state_dict": _edit_state_dict(sd, rng)})
    if kind == 1:
        return _torch_bytes({"model": _edit_state_dict(sd, rng), "optimizer": {"lr": 1.0}})
    if kind == 2:
        return _torch_bytes({"state_dict": list(sd.values())[:4]})
    if kind == 3:
        return _torch_bytes({"state_dict": {k: "not a tensor" for k in list(sd)[:5]}})
    if kind == 4:
        return _torch_bytes({k[len("module."):]: v for k, v in _edit_state_dict(sd, rng).items()})
    return _torch_bytes(mutate_structure({"state_dict": {"a": 1}, "epoch": 1}, rng, 2))


# tokenizer -----------------------------------------------------------------------------------------
def _tokenizer_seeds() -> list[bytes]:
    return [b"the dog on the left", "caf\u00e9 \U0001f600 \u00ab\u00bb &amp;amp; <|endoftext|>".encode(),
            b" \t\n" * 5, ("x" * 3000).encode()]


def text_from_bytes(data: bytes) -> str:
    """Arbitrary unicode from bytes: UTF-8 where it decodes, code points (surrogates included) elsewhere."""
    text = data.decode("utf-8", "surrogateescape")
    if len(data) % 7 == 3:  # some inputs as raw code points over the whole range
        text = "".join(chr(int.from_bytes(data[i:i + 3], "little") % 0x110000) for i in range(0, len(data) - 2, 3))
    if len(data) % 5 == 1 and text:  # and some as 100k characters
        text = (text * (100_000 // len(text) + 1))[:100_000]
    return text


def _check_tokenizer(data: bytes, workdir: Path) -> Any:
    from detris.tokenizer import tokenize

    text = text_from_bytes(data)
    length = 2 + len(data) % 30
    ids = tokenize([text, "a " + text], context_length=length)
    assert ids.shape == (2, length) and ids.dtype == torch.long
    assert ((ids >= 0) & (ids < 49408)).all()
    assert ids[0, 0] == 49406  # SOT
    return ids


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("pickle", _pickle_seeds, _check_pickle, _structured_pickle),
    Target("instances", _instances_seeds, _check_instances, _structured_instances, text=True),
    Target("jsonl", _jsonl_seeds, _check_jsonl, _structured_jsonl, text=True),
    Target("config", lambda: [_CONFIG_SEED.encode(), _CONFIG_SEED_ALIASES.encode()], _check_config,
           _structured_config, text=True),
    Target("image", _image_seeds, _check_image),
    Target("model_config", _model_config_seeds, _check_model_config, _structured_model_config, text=True),
    Target("safetensors", _safetensors_seeds, _check_safetensors, _structured_safetensors, hot=1 << 15),
    Target("official", _official_seeds, _check_official, _structured_official, hot=1 << 12),
    Target("tokenizer", _tokenizer_seeds, _check_tokenizer),
]}


def make_case(target: Target, seeds: Sequence[bytes], rng: random.Random) -> bytes:
    """One input for ``target``: a seed, byte-mutated or structurally edited."""
    seed = rng.choice(seeds)
    if target.structured is not None and rng.random() < 0.4:
        seed = target.structured(seed, rng)
        if rng.random() < 0.5:
            return seed
    if target.text and rng.random() < 0.8:
        return mutate_text(seed, rng, rng.randint(1, 6))
    return mutate(seed, rng, rng.randint(1, 6), target.hot)
