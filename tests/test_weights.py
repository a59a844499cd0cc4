"""Loading every official weight format (written here with random values) and our own round trips."""

import os
from pathlib import Path

import pytest
import torch

from detris import build_model, from_pretrained, load_official_checkpoint
from detris.weights import CheckpointError, trainable_state_dict
from hf_formats import clip_text_to_transformers, dinov2_to_transformers
from model_fixtures import official_inputs, trained_tiny
from official_formats import (
    ddp_checkpoint,
)


def test_backbone_files_load_with_every_tensor_in_place(files):
    model = build_model("detris-tiny", dinov2_weights=files["dino"], clip_weights=files["clip_ts"])
    sd = model.state_dict()
    for key, value in files["dino_values"].items():
        assert torch.equal(sd[f"dinov2.{key}"], value), key
    for key, value in files["clip_values"].items():
        if key.startswith("visual.") or key in ("input_resolution", "context_length", "vocab_size"):
            continue  # the image tower and meta entries are the documented skips
        # The official loader rounds linear/attention weights and the projection through fp16.
        rounded = ("attn." in key or "mlp." in key or key == "text_projection")
        expected = value.half().float() if rounded else value
        assert torch.equal(sd[f"txt_backbone.{key}"], expected), key


def test_clip_torchscript_and_plain_state_dict_give_the_same_model(files):
    a = build_model("detris-tiny", clip_weights=files["clip_ts"]).txt_backbone.state_dict()
    b = build_model("detris-tiny", clip_weights=files["clip_sd"]).txt_backbone.state_dict()
    backbone_keys = [k for k in a if ".adapter." not in k]
    assert all(torch.equal(a[k], b[k]) for k in backbone_keys)


def test_transformers_format_backbones_load_to_the_same_model(files, tmp_path):
    ref = build_model("detris-tiny", dinov2_weights=files["dino"], clip_weights=files["clip_ts"])
    hf_dino = dinov2_to_transformers(ref.dinov2.state_dict())
    hf_clip = clip_text_to_transformers(ref.txt_backbone.state_dict())
    torch.save(hf_dino, tmp_path / "dino_hf.bin")
    torch.save(hf_clip, tmp_path / "clip_hf.bin")
    other = build_model("detris-tiny", dinov2_weights=tmp_path / "dino_hf.bin", clip_weights=tmp_path / "clip_hf.bin")
    a, b = ref.state_dict(), other.state_dict()
    for k in a:
        if ".adapter." not in k and k.startswith(("dinov2.", "txt_backbone.")) and k != "txt_backbone.logit_scale":
            assert torch.equal(a[k], b[k]), k


def test_official_ddp_checkpoint_loads_strictly_and_reproduces_logits(files, tmp_path):
    model = trained_tiny(files)
    ckpt = ddp_checkpoint(model.state_dict(), optimizer_state=True)
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "best_model.pth")
    loaded = load_official_checkpoint(tmp_path / "best_model.pth", variant="detris-tiny")
    assert not loaded.training
    images, tokens = official_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(images, tokens).logits, model(images, tokens).logits)


def test_variant_is_read_off_the_checkpoint(files, tmp_path, capsys):
    """No variant given: the shapes say detris-tiny; the CLI prints what it inferred."""
    from detris.cli import main

    model = trained_tiny(files)
    torch.save(ddp_checkpoint(model.state_dict()), tmp_path / "best_model.pth")
    loaded = load_official_checkpoint(tmp_path / "best_model.pth")
    assert loaded.config.name == "detris-tiny"
    images, tokens = official_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(images, tokens).logits, model(images, tokens).logits)
    assert main(["convert-official", str(tmp_path / "best_model.pth"), "--out", str(tmp_path / "conv")]) == 0
    assert "detris-tiny, read off the checkpoint's shapes" in capsys.readouterr().out


def test_a_checkpoint_of_another_model_is_named(tmp_path, capsys):
    from detris.cli import main

    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}
    torch.save(resnet, tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError, match="not a DETRIS checkpoint"):
        load_official_checkpoint(tmp_path / "resnet50.pth")
    assert main(["convert-official", str(tmp_path / "resnet50.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet50.pth" in err[0] and "not a DETRIS checkpoint" in err[0]


def test_bare_state_dict_and_clip_image_tower_keys_are_accepted(files, tmp_path):
    model = trained_tiny(files)
    sd = dict(model.state_dict())
    sd["txt_backbone.visual.proj"] = torch.zeros(3, 3)  # the documented skip: the unused image tower
    torch.save(sd, tmp_path / "bare.pth")
    loaded = load_official_checkpoint(tmp_path / "bare.pth", variant="detris-tiny")
    images, tokens = official_inputs(1)
    with torch.no_grad():
        assert torch.equal(loaded(images, tokens).logits, model(images, tokens).logits)


def test_unknown_and_missing_keys_are_named(files, tmp_path):
    sd = dict(trained_tiny(files).state_dict())
    sd["neck.surprise"] = torch.zeros(1)
    del sd["proj.txt.bias"]
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"(?s)Missing keys: proj\.txt\.bias.*Unexpected keys: neck\.surprise"):
        load_official_checkpoint(tmp_path / "odd.pth", variant="detris-tiny")


def test_wrong_variant_names_the_variant_that_fits(files, tmp_path):
    torch.save(ddp_checkpoint(trained_tiny(files).state_dict()), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="variant='detris-tiny'"):
        load_official_checkpoint(tmp_path / "tiny.pth", variant="detris-b")


def test_wrong_backbone_width_is_explained(files):
    with pytest.raises(CheckpointError, match="another variant"):
        build_model("detris-b", dinov2_weights=files["dino"])


class _Payload:
    """Pickles to a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pth_with_code_inside_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_official_checkpoint(path, variant="detris-tiny")
    with pytest.raises(CheckpointError, match="refusing to load"):
        build_model("detris-tiny", dinov2_weights=path)
    assert not marker.exists()


def test_full_and_adapter_only_round_trips_are_exact(files, tmp_path):
    model = trained_tiny(files, seed=3)
    images, tokens = official_inputs()
    with torch.no_grad():
        ref = model(images, tokens).logits
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "adapters", adapter_only=True,
                          base_weights={"dinov2": files["dino"], "clip": files["clip_ts"]})
    full = from_pretrained(tmp_path / "full")
    light = from_pretrained(tmp_path / "adapters")
    with torch.no_grad():
        assert torch.equal(full(images, tokens).logits, ref)
        assert torch.equal(light(images, tokens).logits, ref)
    # The adapter-only file holds the trainable tensors (and their BN statistics) and nothing else.
    trainable = trainable_state_dict(model)
    assert all(p.requires_grad == (n in trainable) for n, p in model.named_parameters())
    payload = sum(t.numel() * t.element_size() for t in trainable.values())
    size = (tmp_path / "adapters" / "model.safetensors").stat().st_size
    assert payload <= size < payload + 64 * 1024
    assert size < (tmp_path / "full" / "model.safetensors").stat().st_size / 5


def test_adapter_only_base_weights_are_resolved_or_reported(files, tmp_path, monkeypatch):
    model = trained_tiny(files, seed=4)
    base = {"dinov2": files["dino"].name, "clip": files["clip_ts"].name}
    model.save_pretrained(tmp_path / "m", adapter_only=True, base_weights=base)
    with pytest.raises(FileNotFoundError, match="DETRIS_HOME"):
        from_pretrained(tmp_path / "m")
    monkeypatch.setenv("DETRIS_HOME", str(files["root"]))
    images, tokens = official_inputs(1)
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path / "m")(images, tokens).logits, model(images, tokens).logits)
        explicit = from_pretrained(tmp_path / "m", dinov2_weights=files["dino"], clip_weights=files["clip_ts"])
        assert torch.equal(explicit(images, tokens).logits, model(images, tokens).logits)


def test_save_is_atomic_and_leaves_no_temporary_files(files, tmp_path):
    model = trained_tiny(files, seed=5)
    model.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
