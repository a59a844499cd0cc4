"""Logit parity with the official DETRIS code on a small checkpoint it produced (tests/fixtures/official-tiny).

The fixture was made by ``tools/make_official_fixture.py`` from a checkout of the official code: the official
DETRIS class with its parts built from the official classes at small sizes, seeded random weights (every
tensor re-drawn, BatchNorm statistics and LayerScale included), saved as the official ``train.py`` saves a
checkpoint (DDP ``module.`` keys, float16 storage of exact values), and the official model's logits for
fixed images and tokens in float32 and float64. ``provenance.json`` records the official commit, the sizes
(in the official classes' terms and as a ``DetrisConfig``), the command and the torch version. This test
needs only those files.

Tolerances: float32 1e-4 (measured 2.1e-5 when the fixture was made; the official model's own float32
logits differ from its float64 ones by 1.2e-5); float64 1e-6 (measured 2.9e-14: both implementations keep
the same few float32 sub-steps, the position-grid resize and the sine tables, which another CPU may round
differently at the 1e-7 level).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detris import load_official_checkpoint
from detris.variants import DetrisConfig
from detris.weights import DETRIS_SKIPPED_PREFIXES, CheckpointError

FIXTURE = Path(__file__).parent / "fixtures" / "official-tiny"
CHECKPOINT = FIXTURE / "checkpoint.pth"
FP32_BOUND = 1e-4
FP64_BOUND = 1e-6


@pytest.fixture(scope="module")
def provenance() -> dict:
    return json.loads((FIXTURE / "provenance.json").read_text())


@pytest.fixture(scope="module")
def config(provenance) -> DetrisConfig:
    return DetrisConfig.from_dict(provenance["detris_config"])


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "inputs_and_logits.safetensors"))


def _logits(model, images, tokens) -> torch.Tensor:
    with torch.no_grad():
        out = model(images, tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def _max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return (ours.double() - theirs.double()).abs().max().item()


def test_files_are_the_recorded_ones(provenance):
    for name, digest in provenance["sha256"].items():
        assert hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() == digest, name


def test_inputs_cover_padding_and_truncation(reference, config):
    tokens = reference["tokens"]
    assert tokens.shape[1] == config.word_len
    assert (tokens[0] == 0).any()  # a short sentence: padding, which the official model does not ignore
    assert tokens[-1, -1] == tokens.max() and (tokens[-1] != 0).all()  # cut, its last id the end token


def test_checkpoint_is_as_the_official_training_code_saves_it():
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert {"epoch", "state_dict", "optimizer", "scheduler"} <= set(ckpt)
    state = ckpt["state_dict"]
    assert state and all(k.startswith("module.") for k in state)
    assert {v.dtype for v in state.values()} == {torch.float16, torch.int64}  # BatchNorm counters are int64


def test_loads_strictly_every_tensor(config):
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = load_official_checkpoint(CHECKPOINT, variant=config)
    ours = model.state_dict()
    kept = {k for k in state if not k.startswith(DETRIS_SKIPPED_PREFIXES)}
    assert set(ours) == kept
    for key in kept:
        assert torch.equal(ours[key], state[key].to(ours[key].dtype)), key


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_refuses_a_checkpoint_that_does_not_fit(tmp_path, config, change):
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    if change == "extra":
        state["module.neck.unexpected.weight"] = torch.zeros(2)
    else:
        del state["module.dinov2.blocks.3.adapter.dense_branch3.1.bn.running_var"]
    path = tmp_path / "changed.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError):
        load_official_checkpoint(path, variant=config)


def test_float32_logits_match_the_official_model(config, reference):
    model = load_official_checkpoint(CHECKPOINT, variant=config)
    assert not model.training
    ours = _logits(model, reference["images"], reference["tokens"])
    diff = _max_diff(ours, reference["logits_fp32"])
    print(f"float32: max |ours - official| = {diff:.2e}")
    assert diff <= FP32_BOUND


def test_float64_logits_match_the_official_model(config, reference):
    model = load_official_checkpoint(CHECKPOINT, variant=config).double()
    ours = _logits(model, reference["images"].double(), reference["tokens"])
    assert ours.dtype == torch.float64
    diff = _max_diff(ours, reference["logits_fp64"])
    print(f"float64: max |ours - official| = {diff:.2e}")
    assert diff <= FP64_BOUND
