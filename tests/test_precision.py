"""Inference precision: ``auto`` picks bfloat16 only on hardware that computes it natively, a cast model
keeps the mask-deciding layers in float32, and a Predictor's cast never touches the caller's model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import detris.precision as precision
from detris.inference import prepare_image, segment
from detris.precision import resolve_dtype
from detris.predictor import Predictor
from model_fixtures import random_tiny_model, training_loss

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


def test_low_precision_runs_the_vision_tower_only():
    """bf16 in DINOv2 (and its Dense Aligners), float32 in the text tower, neck, decoder and head."""
    model = random_tiny_model(112)
    seen: dict[str, torch.dtype] = {}
    probes = {"vision": model.dinov2.blocks[1].mlp.fc1, "aligner": model.dinov2.blocks[1].adapter,
              "text": model.txt_backbone.transformer.resblocks[0].mlp.c_fc, "neck": model.neck.txt_proj,
              "decoder": model.decoder.norm, "head": model.proj.txt}
    for name, module in probes.items():
        module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.dtype))
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    pixels, box = prepare_image(rgb, 112)
    tokens = torch.randint(1, 400, (2, 17))
    low = segment(model, pixels[None].expand(2, -1, -1, -1), tokens, [box] * 2, dtype=torch.bfloat16)
    assert seen == {"vision": torch.bfloat16, "aligner": torch.bfloat16, "text": torch.float32,
                    "neck": torch.float32, "decoder": torch.float32, "head": torch.float32}
    ref = segment(model, pixels[None].expand(2, -1, -1, -1), tokens, [box] * 2)
    assert seen["vision"] == torch.float32  # the hooks are gone: a float32 call runs float32
    for a, b in zip(low.probabilities, ref.probabilities):
        assert a.dtype == np.float32 and float(np.abs(a - b).max()) < 0.05
    assert not model.dinov2._forward_hooks and not model.dinov2._forward_pre_hooks


def test_predictor_keeps_the_weights():
    model = random_tiny_model(112)
    predictor = Predictor(model, device="cpu", dtype="bfloat16")
    assert predictor.dtype == torch.bfloat16 and predictor.model is model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    out = predictor.predict(np.full((40, 50, 3), 120, np.uint8), "the red circle")[0]
    assert out.mask.shape == (40, 50) and out.probability.dtype == np.float32


def _gradients(model: torch.nn.Module, images, tokens, masks, dtype) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout draws in both precisions
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = training_loss(model, images, tokens, masks)
    loss.float().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_bf16_training_gradients_within_tolerance_of_fp32():
    """The bf16 autocast training step (train.precision=bf16) on the bundled demo model and synthetic
    scenes: per trained part, the gradient's direction (cosine >= 0.99) and size (norm within 8 %) agree
    with float32's (docs/benchmarks.md). Dropout is off: its draws differ between the two paths (the
    bf16 one runs PyTorch's fused attention dropout), which is randomness, not precision."""
    from detris import from_pretrained, tokenize
    from detris.data.synthetic import SyntheticScenes
    from detris.data.transforms import letterbox_image, letterbox_mask

    model = from_pretrained("detris-tiny-synthetic").train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    size = model.config.image_size
    images, texts, masks = [], [], []
    for scene in SyntheticScenes(4, seed=424242, image_size=(112, 112), max_objects=4):
        warped, matrix, _ = letterbox_image(scene.image, size)
        images.append(prepare_image(scene.image, size)[0])
        texts.append(scene.objects[0].expressions[0])
        masks.append(torch.from_numpy(letterbox_mask(scene.objects[0].mask, matrix, size))[None])
    tokens = tokenize(texts, context_length=model.word_len)
    ref = _gradients(model, torch.stack(images), tokens, torch.stack(masks), torch.float32)
    low = _gradients(model, torch.stack(images), tokens, torch.stack(masks), torch.bfloat16)
    assert set(ref) == set(low)
    for part in ("dinov2", "txt_backbone", "neck", "decoder", "proj"):
        a = torch.cat([ref[n].flatten() for n in ref if n.startswith(part + ".")])
        b = torch.cat([low[n].flatten() for n in low if n.startswith(part + ".")])
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        assert cosine >= 0.99 and abs(b.norm() / a.norm() - 1) <= 0.08, (part, cosine, (b.norm() / a.norm()).item())


def test_eval_says_which_precision_it_ran(tmp_path, capsys):
    from detris.cli import main
    from detris.data.synthetic import write_refer_layout
    from model_fixtures import save_random_tiny

    lay = write_refer_layout(tmp_path / "data", "refcoco", splits={"val": 1}, seed=2, max_objects=2,
                             max_expressions=1)
    model_dir = save_random_tiny(tmp_path / "m", 112)
    base = ["eval", "--model", str(model_dir), "--dataset", "refcoco", "--split", "val", "--data-root",
            str(lay.data_root), "--image-root", str(lay.image_root), "--device", "cpu"]
    for extra, dtype, words in (([], "float32", "(the official protocol)"),
                                (["--dtype", "bfloat16"], "bfloat16", "(not the protocol")):
        out_json = tmp_path / f"{dtype}.json"
        assert main([*base, *extra, "--json", str(out_json)]) == 0
        assert f"in {dtype} {words}" in capsys.readouterr().out
        assert json.loads(out_json.read_text())["dtype"] == dtype


def test_int8_quantises_a_copy_of_the_vision_tower():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = random_tiny_model(112)
    predictor = Predictor(model, device="cpu", dtype="int8")
    assert predictor.model is not model and {p.dtype for p in model.parameters()} == {torch.float32}
    vision = [m for m in predictor.model.dinov2.modules() if isinstance(m, DynamicLinear)]
    assert vision and not [m for m in predictor.model.neck.modules() if isinstance(m, DynamicLinear)]
    assert isinstance(predictor.model.txt_backbone.transformer.resblocks[0].mlp.c_fc, torch.nn.Linear)
    rgb = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    got = predictor.predict(rgb, ["the red circle", "a star"])
    ref = Predictor(model, device="cpu").predict(rgb, ["the red circle", "a star"])
    for a, b in zip(got, ref):
        assert float(np.abs(a.probability - b.probability).max()) < 0.1
    assert "dtype=int8" in repr(predictor)
    with pytest.raises(ValueError, match="CPU only"):
        resolve_dtype("int8", torch.device("cuda"))


def test_low_precision_leaves_no_autocast_behind_when_the_tower_raises():
    model = random_tiny_model(112)

    def broken(*args, **kwargs):
        assert torch.is_autocast_enabled("cpu")  # inside the tower's scope
        raise RuntimeError("a block failed")

    model.dinov2.blocks[0].forward = broken
    with pytest.raises(RuntimeError, match="a block failed"):
        with model.low_precision(torch.bfloat16):
            model(torch.randn(1, 3, 112, 112), torch.randint(1, 400, (1, 17)))
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("short, name", [("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")])
def test_short_precision_names_read_as_torchs(short, name, tmp_path):
    """One name per precision (torch's); the short forms of older configs and commands mean the same."""
    from detris.engine.config import load_config

    assert precision.precision_name(short) == precision.precision_name(name) == name
    assert resolve_dtype(short, torch.device("cuda")) == precision.DTYPES[name]
    config = tmp_path / "old.yaml"
    config.write_text(f"model: {{variant: detris-tiny}}\ndata: {{dataset: synthetic}}\ntrain: {{precision: {short}}}\n")
    assert load_config(config).train.precision == name
    assert load_config(config, [f"train.precision={name}"]).train.precision == name


def test_unknown_precision_is_named_with_the_choices():
    from detris.engine.config import ConfigError, config_from_dict

    with pytest.raises(ValueError, match="'half' is not one of float32 \\(fp32\\)"):
        precision.precision_name("half")
    with pytest.raises(ConfigError, match="train.precision"):
        config_from_dict({"train": {"precision": "half"}})


def test_autocast_follows_the_name():
    with precision.autocast("float32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert precision.autocast_dtype("float32") is None and precision.autocast_dtype("fp16") == torch.float16


def test_int8_all_quantises_every_linear_but_the_kernel_generator():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = random_tiny_model(112)
    quantized = precision.quantize_int8(model, "all")
    for part in (quantized.dinov2, quantized.neck, quantized.txt_backbone):
        assert [m for m in part.modules() if isinstance(m, DynamicLinear)], part
    assert type(quantized.proj.txt) is torch.nn.Linear
    torch.testing.assert_close(quantized.proj.txt.weight, model.proj.txt.weight)
    assert not [m for m in model.modules() if isinstance(m, DynamicLinear)]  # the caller's model untouched
    with pytest.raises(ValueError, match="scope"):
        precision.quantize_int8(model, "head")  # type: ignore[arg-type]
