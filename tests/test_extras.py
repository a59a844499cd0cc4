"""Every console command works on the core install, or says in one line which extra to install.

The optional packages are hidden from a child process (``sys.modules[name] = None`` makes their
import fail, as on a core-only install); the command must exit 2 with one line naming the extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model_fixtures import random_tiny_model

RUN = "import sys\nfor m in {hidden!r}: sys.modules[m] = None\nfrom detris.cli import main\nsys.exit(main({argv!r}))"


def _run(argv: list[str], hidden: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = RUN.format(hidden=hidden, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model")
    random_tiny_model().save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("argv", "hidden", "extra"),
    [
        (["serve", "--model", "{model}"], ["gradio"], "detris[demo]"),
        (["export", "--model", "{model}", "--format", "onnx", "--out", "m.onnx"], ["onnx", "onnxscript"],
         "detris[export]"),
        (["predict", "--model", "owner/some-model", "--image", "{image}", "--text", "x", "--out", "o"],
         ["huggingface_hub"], "detris[demo]"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(argv, hidden, extra, model_dir, tmp_path):
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    argv = [a.format(model=model_dir, image=image) for a in argv]
    proc = _run(argv, hidden, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and extra in lines[0].replace('"', "'").replace("'", ""), proc.stderr


def test_training_needs_no_extra(tmp_path):
    """`detris train` runs with tensorboard hidden (the train extra only adds TensorBoard logs)."""
    config = Path(__file__).resolve().parents[1] / "configs" / "synthetic-tiny.yaml"
    argv = ["train", str(config), "--set", f"output.dir={tmp_path / 'run'}", "--set", "train.max_steps=2",
            "--set", "data.synthetic.train_images=8", "--set", "data.synthetic.val_images=2",
            "--set", "data.synthetic.test_images=0", "--set", "output.progress=false"]
    proc = _run(argv, ["tensorboard", "torch.utils.tensorboard"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "curves.png").is_file()
