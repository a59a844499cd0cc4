"""Model export: ONNX and torch.export graphs must compute what the PyTorch model computes.

The reference is always the eager PyTorch model in eval mode. The graphs are run on inputs that differ
from the ones used to trace them, so a value baked in from the example input would show up as a
mismatch. One ONNX export (through the CLI, batch 2) and one torch.export serve every test: each
export takes tens of seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch

from detris import build_model
from detris.cli import main
from detris.data.transforms import CLIP_MEAN, CLIP_STD, Letterbox
from detris.export import (
    ExportError,
    MissingExportDependency,
    example_inputs,
    export_model,
    read_metadata,
)
from detris.postprocess import binarize, logits_to_probability

SOT, EOT = 49406, 49407


def make_tokens(n: int, lengths: list[int], word_len: int, seed: int) -> torch.Tensor:
    """(n, word_len) int64 CLIP-like rows: start id, random ids, end-of-text id, zero padding."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, word_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, :length] = torch.randint(1, 49000, (length,), generator=gen)
        tokens[row, 0], tokens[row, length - 1] = SOT, EOT
    return tokens


def random_tiny() -> torch.nn.Module:
    """DETRIS-tiny with random weights and BatchNorm statistics that are not the identity, in eval mode."""
    torch.manual_seed(0)
    model = build_model("detris-tiny").eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
    return model


def test_inputs(model: torch.nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the exported shape that differ from `example_inputs` (images and token lengths)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(100 + seed)
    images = 1.5 * torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)
    lengths = [cfg.word_len - (seed * 5 + 7 * row) % (cfg.word_len - 2) for row in range(batch)]
    tokens = make_tokens(batch, lengths, cfg.word_len, 200 + seed)
    trace_images, trace_tokens = example_inputs(cfg, batch)
    assert not torch.equal(images, trace_images) and not torch.equal(tokens, trace_tokens)
    return images, tokens


test_inputs.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def tiny():
    return random_tiny()


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    return tiny.save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def cli_onnx(model_dir, tmp_path_factory):
    """``detris export --format onnx`` (any batch size) on a saved model directory; (path, stdout)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    out = tmp_path_factory.mktemp("onnx") / "sub" / "tiny.onnx"  # the missing folder is created
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["export", "--model", str(model_dir), "--format", "onnx", "--out", str(out)])
    assert rc == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def ort_session(cli_onnx):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(cli_onnx[0]), providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    return session.run(["logits"], {"images": images.numpy(), "tokens": tokens.numpy()})[0]


# ------------------------------------------------------------------------------------ ONNX


def test_cli_onnx_graph_signature_and_files(cli_onnx, ort_session):
    path, stdout = cli_onnx
    assert f"to {path}" in stdout and "logits float32 (B, 1, 64, 64)" in stdout
    # Written in one piece: no staging folder or side file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx"]
    inputs = {i.name: (i.type, i.shape) for i in ort_session.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in ort_session.get_outputs()}
    # One symbolic batch dimension shared by both inputs and the output.
    batch = inputs["images"][1][0]
    assert isinstance(batch, str)
    assert inputs == {
        "images": ("tensor(float)", [batch, 3, 224, 224]),
        "tokens": ("tensor(int64)", [batch, 17]),
    }
    assert outputs == {"logits": ("tensor(float)", [batch, 1, 64, 64])}


@pytest.mark.parametrize(("batch", "seed"), [(1, 0), (3, 1), (2, 2)])
def test_onnx_logits_match_pytorch_on_new_inputs(tiny, ort_session, batch, seed):
    """One graph for every batch size (traced at 2): 1 and 3 as well."""
    images, tokens = test_inputs(tiny, batch, seed)
    with torch.no_grad():
        expected = tiny(images, tokens).logits.numpy()
    got = run_onnx(ort_session, images, tokens)
    assert got.shape == expected.shape == (batch, 1, 64, 64)
    diff = float(np.abs(got - expected).max())
    assert diff <= 1e-4, f"max |onnx - torch| = {diff}"


def test_onnx_follows_the_text(tiny, ort_session):
    """Same images, other expressions: the graph's output must change exactly as PyTorch's does
    (the padding mask and the end-of-text pooling are computed from the tokens, not folded)."""
    images, tokens_a = test_inputs(tiny, 2, 3)
    tokens_b = make_tokens(2, [4, 17], tiny.config.word_len, 999)
    got_a, got_b = run_onnx(ort_session, images, tokens_a), run_onnx(ort_session, images, tokens_b)
    with torch.no_grad():
        ref_b = tiny(images, tokens_b).logits.numpy()
    assert np.abs(got_a - got_b).max() > 1e-2
    assert np.abs(got_b - ref_b).max() <= 1e-4


def test_onnx_masks_after_postprocessing_match(tiny, ort_session):
    """The documented runtime pipeline (graph + detris.postprocess) gives PyTorch's masks."""
    images, tokens = test_inputs(tiny, 2, 4)
    with torch.no_grad():
        ref = tiny(images, tokens).logits
    got = torch.from_numpy(run_onnx(ort_session, images, tokens))
    orig = [(150, 300), (260, 120)]
    boxes = [Letterbox.fit(h, w, 224) for h, w in orig]
    prob_ref = logits_to_probability(ref, boxes)
    prob_got = logits_to_probability(got, boxes)
    for p_ref, p_got in zip(prob_ref, prob_got):
        # Random weights put most pixels on one side of 0.35; a per-map median threshold gives masks
        # with many edges, where a difference between the two graphs would show.
        threshold = float(np.median(p_ref[p_ref > 0]))
        mask_ref, mask_got = binarize(p_ref, threshold), binarize(p_got, threshold)
        assert 0.2 < mask_ref.mean() < 0.8
        # Only pixels within float noise of the threshold may flip.
        flipped = mask_ref != mask_got
        assert np.all(np.abs(p_ref[flipped] - threshold) < 1e-4)
        assert flipped.mean() < 1e-3


def test_onnx_metadata(cli_onnx, ort_session):
    meta = ort_session.get_modelmeta().custom_metadata_map
    assert meta == read_metadata(cli_onnx[0])
    assert meta["variant"] == "detris-tiny"
    assert (meta["image_size"], meta["word_len"], meta["batch_size"]) == ("224", "17", "dynamic")
    assert json.loads(meta["mean"]) == list(CLIP_MEAN) and json.loads(meta["std"]) == list(CLIP_STD)
    assert float(meta["threshold"]) == 0.35
    steps = meta["postprocess"]
    assert steps.index("sigmoid") < steps.index("bicubic") < steps.index("inverse letterbox") < steps.index("> 0.35")
    assert json.loads(meta["config"])["name"] == "detris-tiny"


def test_onnx_inputs_of_different_batch_sizes_are_refused(ort_session, tiny):
    images, _ = test_inputs(tiny, 2, 5)
    _, tokens = test_inputs(tiny, 3, 5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_onnx(ort_session, images, tokens)


# ------------------------------------------------------------------------------------ torch.export


def test_torch_export_round_trip(tiny, tmp_path):
    tiny.train()
    tiny.dinov2.blocks[0].eval()  # a mixed state, which export must give back as it was
    before = {name: m.training for name, m in tiny.named_modules()}
    try:
        path = export_model(tiny, "torch-export", tmp_path / "tiny.pt2", batch_size=1)
        after = {name: m.training for name, m in tiny.named_modules()}
    finally:
        tiny.eval()
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt2"]

    program = torch.export.load(path)
    images, tokens = test_inputs(tiny, 1, 6)
    with torch.no_grad():
        expected = tiny(images, tokens).logits
        got = program.module()(images, tokens)
    assert got.shape == (1, 1, 64, 64)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-5, f"max |pt2 - torch| = {diff}"

    meta = read_metadata(path)
    assert (meta["variant"], meta["image_size"], meta["word_len"], meta["batch_size"]) == (
        "detris-tiny", "224", "17", "1",
    )


def test_torch_export_dynamic_batch(tiny, tmp_path):
    program = torch.export.load(export_model(tiny, "torch-export", tmp_path / "tiny.pt2"))
    for batch in (1, 3):
        images, tokens = test_inputs(tiny, batch, 7)
        with torch.no_grad():
            diff = (program.module()(images, tokens) - tiny(images, tokens).logits).abs().max().item()
        assert diff <= 1e-5, (batch, diff)


# ------------------------------------------------------------------------------------ errors


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["export", *argv])
    return rc, capsys.readouterr().err


def test_cli_missing_model_dir(capsys, tmp_path):
    rc, err = run_cli(capsys, "--model", str(tmp_path / "nope"), "--format", "torch-export",
                      "--out", str(tmp_path / "new" / "m.pt2"))
    assert rc == 2 and "model directory not found" in err and "config.json" in err
    assert list(tmp_path.iterdir()) == []  # not even the output folder was created


def test_cli_rejects_unknown_format(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["export", "--model", str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "m.tflite")])
    assert "invalid choice" in capsys.readouterr().err


def test_library_rejects_unknown_format_and_bad_batch(tiny, tmp_path):
    with pytest.raises(ExportError, match="onnx, torch-export"):
        export_model(tiny, "tflite", tmp_path / "m.tflite")
    with pytest.raises(ExportError, match="positive integer"):
        export_model(tiny, "torch-export", tmp_path / "m.pt2", batch_size=0)
    assert list(tmp_path.iterdir()) == []


def test_cli_output_path_problems(capsys, model_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, err = run_cli(capsys, "--model", str(model_dir), "--format", "onnx", "--out", str(blocker / "m.onnx"))
    assert rc == 2 and "not a folder" in err
    rc, err = run_cli(capsys, "--model", str(model_dir), "--format", "onnx", "--out", str(tmp_path / "m.pt2"))
    assert rc == 2 and "does not end in .onnx" in err
    rc, err = run_cli(capsys, "--model", str(model_dir), "--format", "torch-export", "--out", str(tmp_path))
    assert rc == 2 and "is a folder" in err
    rc, err = run_cli(capsys, "--model", str(model_dir), "--format", "torch-export", "--out",
                      str(tmp_path / "m.pt2"), "--batch-size", "-1")
    assert rc == 2 and "batch size" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_cli_unwritable_output_folder(capsys, model_dir, tmp_path, monkeypatch):
    # Permission bits do not stop root, so the refusal is simulated where the folder is probed.
    import detris.export as export_mod

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export_mod.tempfile, "mkstemp", refuse)
    rc, err = run_cli(capsys, "--model", str(model_dir), "--format", "torch-export", "--out", str(tmp_path / "m.pt2"))
    assert rc == 2 and "is not writable" in err and str(tmp_path) in err


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_cli_missing_onnx_package(capsys, model_dir, tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    rc, err = run_cli(capsys, "--model", str(model_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert rc == 2 and f"'{package}'" in err and "pip install 'detris[export]'" in err
    with pytest.raises(MissingExportDependency, match=r"detris\[export\]"):
        export_model(build_model("detris-tiny"), "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_model_not_in_float32(tmp_path):
    with pytest.raises(ExportError, match=r"model\.float\(\)"):
        export_model(build_model("detris-tiny").double(), "torch-export", tmp_path / "m.pt2")


def test_failed_export_keeps_the_old_file(tiny, tmp_path, monkeypatch):
    """A crash while writing leaves the previous export in place and no partial file."""
    out = tmp_path / "m.pt2"
    out.write_bytes(b"previous export")

    def crash_while_writing(program, f, **kwargs):
        f.write(b"half a file")  # torch.export.save is handed an open file (see detris.utils.torch_write)
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.export, "export", lambda *a, **k: object())
    monkeypatch.setattr(torch.export, "save", crash_while_writing)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(tiny, "torch-export", out)
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]
