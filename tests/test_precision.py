"""Inference precision: ``auto`` picks bfloat16 only on hardware that computes it natively, a cast model
keeps the mask-deciding layers in float32, and a Predictor's cast never touches the caller's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import detris.precision as precision
from detris.inference import prepare_image, segment
from detris.precision import cast_for_inference, resolve_dtype
from detris.predictor import Predictor
from model_fixtures import random_tiny_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto", CPU) == expected
    assert resolve_dtype(None, CPU) == torch.float32 and resolve_dtype("bfloat16", CPU) == torch.bfloat16


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    for flags, expected in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16 amx_tile", True),
                            ("fpu sse avx2 avx512f", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision, "Path", lambda _p, info=info: info)
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is expected, flags
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("bad, message", [("int8x", "not supported"), (torch.int8, "not supported"),
                                          ("float16", "only on a GPU")])
def test_bad_dtypes_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_dtype(bad, CPU)


def test_cast_keeps_the_mask_deciding_layers_in_float32():
    model = cast_for_inference(random_tiny_model(112, no_target_head=True), torch.bfloat16)
    kept = {n for n, p in model.named_parameters() if p.dtype == torch.float32}
    assert kept == {n for n, _ in model.named_parameters() if n.startswith(("proj.txt.", "no_target_head."))}
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    pixels, inverse = prepare_image(rgb, 112)
    tokens = torch.randint(1, 400, (2, 17))
    low = segment(model, pixels[None].expand(2, -1, -1, -1), tokens, [inverse] * 2, [(60, 80)] * 2)
    ref = segment(random_tiny_model(112, no_target_head=True), pixels[None].expand(2, -1, -1, -1), tokens,
                  [inverse] * 2, [(60, 80)] * 2)
    for a, b in zip(low.probabilities, ref.probabilities):
        assert a.dtype == np.float32 and float(np.abs(a - b).max()) < 0.05


def test_predictor_casts_a_copy_not_the_callers_model():
    model = random_tiny_model(112)
    predictor = Predictor(model, device="cpu", dtype="bfloat16")
    assert predictor.dtype == torch.bfloat16 and predictor.model is not model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert predictor.model.txt_backbone.token_embedding.weight.dtype == torch.bfloat16
    out = predictor.predict(np.full((40, 50, 3), 120, np.uint8), "the red circle")[0]
    assert out.mask.shape == (40, 50) and out.probability.dtype == np.float32
    assert Predictor(model, device="cpu", dtype="float32").model is model
