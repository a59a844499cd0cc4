"""Export a DETRIS model to ONNX or to a ``torch.export`` program (``detris export`` and the Python API).

The exported graph is the model's eval-mode forward for one input size and any batch size:

- ``images``: float32 ``(B, 3, S, S)``, letterboxed to ``S = config.image_size`` and normalised with the
  CLIP mean/std (``detris.data.transforms.letterbox_image`` + ``normalize_image``);
- ``tokens``: int64 ``(B, word_len)`` from ``detris.tokenize(texts, context_length=word_len)``;
- ``logits``: float32 ``(B, 1, 4S/14, 4S/14)``, before the sigmoid.

``B`` is free (a dynamic dimension; the head applies each sample's predicted kernel as one batched matrix
product) unless a fixed ``batch_size`` is asked for at export time, e.g. for runtimes that want static
shapes. ``S`` is fixed: the position embedding is resized for one patch grid. Post-processing (sigmoid, bicubic resize, inverse
letterbox, threshold) stays outside the graph: it needs the original image size, and the official
inverse warp is a ``cv2.warpAffine`` (see ``detris.postprocess``). The file records what a runtime
needs to reproduce both ends (see :func:`export_metadata`).

ONNX goes through ``torch.onnx.export(..., dynamo=True)``: the exporter torch maintains (the
TorchScript-based one is deprecated), which captures the graph with ``torch.export`` and so records
every data-dependent step (padding mask, end-of-text pooling, per-sample kernels) as graph operations
rather than constants taken from the example input.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .inference import NO_TARGET_THRESHOLD
from .modeling import DETRIS
from .processing import ProcessingConfig
from .utils import atomic_write_with_side_files, torch_write
from .variants import DetrisConfig

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "MissingExportDependency",
    "ONNX_OPSET",
    "example_inputs",
    "export_metadata",
    "export_model",
    "read_metadata",
    "check_batch_size",
    "check_format",
    "prepare_output",
    "require_packages",
]

PathLike = str | os.PathLike

#: Formats ``export_model`` writes, and the file suffix each one must have.
EXPORT_FORMATS: dict[str, str] = {"onnx": ".onnx", "torch-export": ".pt2"}
#: ONNX opset of the exported graph (opset 20 has a native ``Gelu``; onnxruntime >= 1.17 runs it).
ONNX_OPSET = 20
#: Name of the metadata entry inside a ``.pt2`` archive (``torch.export.save(extra_files=...)``).
PT2_METADATA_NAME = "detris.json"
INPUT_NAMES = ("images", "tokens")
OUTPUT_NAME = "logits"
#: The second output of a model with the no-target head: (B,) logits that the expression refers to nothing.
NO_TARGET_OUTPUT_NAME = "no_target_logits"
# A protobuf message cannot exceed 2 GiB; above this many bytes of weights the ONNX tensors go to a
# side file ``<out>.data`` (every named variant, DETRIS-L* at 1.7 GB included, fits in one file).
_SINGLE_FILE_LIMIT = int(1.8 * 2**30)
_TRACE_BATCH = 2
_MAX_BATCH = 4096  # the dynamic batch's upper bound recorded in the graph
_INSTALL_HINT = "pip install 'detris[export]'"


class ExportError(ValueError):
    """An export request that cannot be carried out as given; the message says what to change."""


class MissingExportDependency(ImportError):
    """A package the requested export format needs is not installed."""


# ------------------------------------------------------------------------------------ validation


def check_format(fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    return fmt


def check_batch_size(batch_size: Any) -> int | None:
    """None (a dynamic batch) or a positive int (a fixed one)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch size must be a positive integer (or none for a dynamic batch), got {batch_size!r}")
    return batch_size


def require_packages(fmt: str) -> None:
    """Fail before any slow work if the format's packages are missing."""
    if fmt != "onnx":
        return  # torch.export ships with torch
    # torch.onnx.export(dynamo=True) builds the graph with onnxscript, which writes it with onnx.
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError as err:
            raise MissingExportDependency(
                f"ONNX export needs the {name!r} package, which is not installed ({err}); "
                f"install the export extras: {_INSTALL_HINT}"
            ) from None


def prepare_output(out: PathLike, fmt: str, create: bool = False) -> Path:
    """Check the output path: the right suffix, not a folder, in a folder that takes new files.

    Called before the model is loaded or traced, so a bad ``--out`` costs nothing; missing folders are
    created only with ``create`` (when the export is about to be written).
    """
    path = Path(out).expanduser()
    suffix = EXPORT_FORMATS[fmt]
    if path.is_dir():
        raise ExportError(f"output {path} is a folder; give a file name, e.g. {path / ('model' + suffix)}")
    if path.suffix != suffix:
        raise ExportError(
            f"output file {path} does not end in {suffix}: a {fmt} export is written to a {suffix} file, "
            f"e.g. {path.with_suffix(suffix)}"
        )
    folder = path.parent
    existing = folder
    while not existing.exists():  # the folders to be created hang off the nearest existing one
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"cannot write {path}: {existing} is a file, not a folder; choose another output path")
    # Probing with a real file catches read-only mounts and ACLs that os.access does not see.
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.", suffix=".probe")
    except OSError as err:
        raise ExportError(
            f"the output folder {existing} is not writable ({err}); choose a folder you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ExportError(
                f"cannot create the output folder {folder} ({err}); choose a writable output path"
            ) from None
    return path


def _check_model(model: DETRIS) -> DetrisConfig:
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        names = ", ".join(sorted(str(d) for d in dtypes))
        raise ExportError(
            f"the exported graph is float32 but the model holds {names} weights: call model.float() first"
        )
    return model.config


# ------------------------------------------------------------------------------------ graph


class _LogitsGraph(nn.Module):
    """What is exported of ``DETRIS.forward``: (images, tokens) -> logits, and the no-target logits
    for a model with the no-target head (an exported graph has no optional outputs)."""

    def __init__(self, model: DETRIS) -> None:
        super().__init__()
        self.model = model
        self.with_no_target = model.config.no_target_head

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.model(images, tokens)
        if out.no_target_logits is None:
            return out.logits
        return out.logits, out.no_target_logits


def example_inputs(config: Any, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Inputs of the exported shape, used to trace the graph.

    Args:
        config: the model's ``DetrisConfig``.
        batch_size: B.
        device: where the tensors live (the model's device).

    Returns:
        ``images`` float32 ``(B, 3, S, S)`` (standard normal, seeded) and ``tokens`` int64
        ``(B, word_len)``: start id, random ids, end-of-text id (the highest id), zero padding, with a
        different length per row.
    """
    size, word_len, vocab = config.image_size, config.word_len, config.vocab_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, size, size, generator=gen)
    tokens = torch.zeros(batch_size, word_len, dtype=torch.int64)
    for row in range(batch_size):
        length = max(2, word_len - 3 * row - 2)
        tokens[row, :length] = torch.randint(1, vocab - 2, (length,), generator=gen)
        # CLIP's start and end-of-text ids are the two highest: the text tower pools at the argmax.
        tokens[row, 0], tokens[row, length - 1] = vocab - 2, vocab - 1
    return images.to(device), tokens.to(device)


def export_metadata(config: DetrisConfig, batch_size: int | None, processing: ProcessingConfig | None = None) -> dict[str, str]:
    """What a runtime needs besides the graph: shapes, normalisation and post-processing (the model's
    stored preprocessing contract; the official one by default).

    Returns:
        string keys and values (ONNX ``metadata_props`` hold strings only); lists and the full config
        are JSON.
    """
    from .version import __version__

    proc = processing or ProcessingConfig.for_model(config)
    size, word_len = proc.input_size, proc.word_len
    side = 4 * size // config.patch_size
    b = "B" if batch_size is None else str(batch_size)
    return {
        "detris_version": __version__,
        "variant": config.name,
        "image_size": str(size),
        "word_len": str(word_len),
        "batch_size": "dynamic" if batch_size is None else str(batch_size),
        "inputs": (
            f"images: float32 ({b}, 3, {size}, {size}), RGB letterboxed to {size}x{size} "
            "(cv2.warpAffine cubic of the uint8 image, border = mean * 255), then (x / 255 - mean) / std; "
            f"tokens: int64 ({b}, {word_len}), CLIP BPE ids, 0 = padding"
        ),
        "outputs": f"logits: float32 ({b}, 1, {side}, {side}), before the sigmoid" + (
            f"; {NO_TARGET_OUTPUT_NAME}: float32 ({b},), before the sigmoid: the expression refers to nothing "
            f"when sigmoid > {NO_TARGET_THRESHOLD} (then the mask is empty)" if config.no_target_head else ""),
        "mean": json.dumps(list(proc.mean)),
        "std": json.dumps(list(proc.std)),
        "threshold": str(proc.threshold),
        "postprocess": (
            f"sigmoid -> bicubic (align_corners=True) to {size}x{size} -> inverse letterbox to the original "
            f"size (cv2.warpAffine cubic, border 0) -> mask = probability > {proc.threshold}"
        ),
        "config": json.dumps(config.to_dict(), sort_keys=True),
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's progress chatter (optional torchvision ops, skipped folds): not actionable."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|copyreg|onnxscript)")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _dynamic_shapes(batch_size: int | None) -> dict[str, dict[int, Any]] | None:
    """The batch dimension of both inputs as one symbol, or None for a fixed batch."""
    if batch_size is not None:
        return None
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    return {name: {0: batch} for name in INPUT_NAMES}


def _write_onnx(graph: _LogitsGraph, example: tuple[Tensor, Tensor], meta: dict[str, str], path: Path,
                external_data: bool, dynamic: dict[str, dict[int, Any]] | None) -> None:
    import onnx

    program = torch.onnx.export(
        graph,
        example,
        None,
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME, NO_TARGET_OUTPUT_NAME] if graph.with_no_target else [OUTPUT_NAME],
        dynamic_shapes=dynamic,
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model
    model.metadata_props.update(meta)
    model.doc_string = (
        f"DETRIS {meta['variant']} referring segmentation. {meta['inputs']}. {meta['outputs']}. "
        f"Post-processing: {meta['postprocess']}."
    )
    program.save(path, external_data=external_data)
    # The checker reads side files by path, so this works above the 2 GiB protobuf limit too.
    onnx.checker.check_model(str(path))


def _write_program(graph: nn.Module, example: tuple[Tensor, Tensor], meta: dict[str, str], path: Path,
                   dynamic: dict[str, dict[int, Any]] | None) -> None:
    program = torch.export.export(graph, example, dynamic_shapes=dynamic, strict=False)
    # Through torch_write: a full disk is an OSError, not an abort when the unfinished writer is collected.
    torch_write(lambda f: torch.export.save(program, f, extra_files={PT2_METADATA_NAME: json.dumps(meta, indent=2)}),
                path)


def export_model(
    model: DETRIS,
    fmt: str,
    out: PathLike,
    batch_size: int | None = None,
    *,
    external_data: bool | None = None,
) -> Path:
    """Export ``model``'s eval-mode forward for its input size and any (or one fixed) batch size.

    Args:
        model: a DETRIS model (``build_model`` / ``from_pretrained``) with float32 weights, on any device.
        fmt: ``"onnx"`` (a ``.onnx`` file) or ``"torch-export"`` (a ``.pt2`` file for ``torch.export.load``).
        out: output file; its folder is created if missing. Written atomically.
        batch_size: None (default): the graph takes any batch size; an int: only that one.
        external_data: ONNX only: store the weights in ``<out>.data`` beside the graph. Default: only when
            they would not fit a single 2 GiB protobuf file.

    Returns:
        the path written. The graph maps ``images`` float32 ``(B, 3, S, S)`` (CLIP-normalised,
        ``S = model.config.image_size``) and ``tokens`` int64 ``(B, model.config.word_len)`` to
        ``logits`` float32 ``(B, 1, 4S/14, 4S/14)``; the file carries :func:`export_metadata`.

    The model's train/eval flags are restored afterwards, module by module.

    Raises:
        ExportError: bad format, batch size, output path or model (the message says what to change).
        MissingExportDependency: ONNX export without the ``onnx`` / ``onnxscript`` packages.
    """
    fmt = check_format(fmt)
    batch_size = check_batch_size(batch_size)
    require_packages(fmt)
    cfg = _check_model(model)
    path = prepare_output(out, fmt, create=True)
    device = next(model.parameters()).device
    # A traced dimension of size 1 would be specialised to 1: trace a dynamic batch with two samples.
    example = example_inputs(cfg, batch_size or _TRACE_BATCH, device)
    meta = export_metadata(cfg, batch_size, model.processing)
    dynamic = _dynamic_shapes(batch_size)
    if external_data is None:
        external_data = _weight_bytes(model) > _SINGLE_FILE_LIMIT

    modes = [(m, m.training) for m in model.modules()]
    graph = _LogitsGraph(model).eval()  # eval: BatchNorm running statistics, no dropout
    try:
        with torch.no_grad(), _quiet_exporter():
            if fmt == "onnx":
                atomic_write_with_side_files(path, lambda p: _write_onnx(graph, example, meta, p, external_data, dynamic))
            else:
                atomic_write_with_side_files(path, lambda p: _write_program(graph, example, meta, p, dynamic))
    finally:
        for module, training in modes:
            module.training = training
    return path


def read_metadata(path: PathLike) -> dict[str, str]:
    """The :func:`export_metadata` entries stored in an exported ``.onnx`` or ``.pt2`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        try:
            import onnx
        except ImportError as err:
            raise MissingExportDependency(f"reading ONNX files needs the 'onnx' package: {_INSTALL_HINT}") from err
        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}
    if path.suffix == ".pt2":
        extra = {PT2_METADATA_NAME: ""}
        torch.export.load(path, extra_files=extra)
        return json.loads(extra[PT2_METADATA_NAME]) if extra[PT2_METADATA_NAME] else {}
    raise ExportError(f"{path} is neither a .onnx nor a .pt2 file")
