"""Every weight format DETRIS meets, each beside its converter (core: no model building here).

- `io`: reading files without running their code (safetensors; ``torch.load(weights_only=True)``;
  TorchScript archives through ``torch.jit.load``, whose unpickler admits no Python objects) and strict
  loading that names the offending keys.
- `dinov2`: DINOv2 ``dinov2_vit{b,l}14_reg4_pretrain.pth`` and transformers' ``Dinov2WithRegistersModel``.
- `clip`: OpenAI CLIP ``ViT-B-16.pt`` (text tower; also written, `save_clip_archive`) and transformers'
  ``CLIPTextModelWithProjection``.
- `official`: official DETRIS training checkpoints, variant inference.
- `detris_format`: our ``config.json`` + ``model.safetensors`` directories, full or adapter-only.
- `tiny_towers`: the bundled tiny towers' files (writing them, fitting them to another patch size).

Building a model from a file (``from_pretrained``, ``load_official_checkpoint``) is the
`detris.pretrained` service's job.
"""

from .clip import (
    CLIP_SKIPPED_KEYS,
    CLIP_SKIPPED_PREFIXES,
    load_clip_text_weights,
    read_clip_text_weights,
    save_clip_archive,
)
from .detris_format import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    ModelFiles,
    load_trained_weights,
    read_model_dir,
    save_pretrained,
    trainable_state_dict,
)
from .dinov2 import load_dinov2_weights, read_dinov2_weights
from .io import CheckpointError, PathLike, StateDict, load_state_file, load_strict
from .official import DETRIS_SKIPPED_PREFIXES, extract_state_dict, guess_variant, infer_config, load_detris_state

__all__ = [
    "CLIP_SKIPPED_KEYS",
    "CLIP_SKIPPED_PREFIXES",
    "CONFIG_NAME",
    "DETRIS_SKIPPED_PREFIXES",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "ModelFiles",
    "PathLike",
    "StateDict",
    "extract_state_dict",
    "guess_variant",
    "infer_config",
    "load_clip_text_weights",
    "load_detris_state",
    "load_dinov2_weights",
    "load_state_file",
    "load_strict",
    "load_trained_weights",
    "read_clip_text_weights",
    "read_dinov2_weights",
    "read_model_dir",
    "save_clip_archive",
    "save_pretrained",
    "trainable_state_dict",
]
