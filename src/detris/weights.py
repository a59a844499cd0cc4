"""Every checkpoint format DETRIS meets, in one place.

- DINOv2 ``dinov2_vit{b,l}14_reg4_pretrain.pth``: a plain state dict; our DINOv2 uses its names.
- OpenAI CLIP ``ViT-B-16.pt``: a TorchScript archive (a plain state dict is accepted too). The image
  tower and the archive's meta entries are dropped; weights are rounded through fp16 exactly where the
  official loader does it, so a float32 file gives the same model as the official code builds.
- transformers ``Dinov2WithRegistersModel`` / ``CLIPTextModelWithProjection`` state dicts: converted.
- official DETRIS training checkpoints (``{'state_dict': {'module.' + key: tensor}, ...}`` or bare).
- our own directories: ``config.json`` + ``model.safetensors``, full or adapter-only.

Untrusted files are read with ``torch.load(weights_only=True)`` or safetensors; TorchScript archives
with ``torch.jit.load``, whose own unpickler admits no Python objects.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import bundled
from .variants import VARIANTS, DetrisConfig, get_variant

PathLike = str | os.PathLike
StateDict = dict[str, Tensor]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

# Entries of an OpenAI CLIP archive that the text tower does not have: the image tower and meta data.
CLIP_SKIPPED_PREFIXES = ("visual.",)
CLIP_SKIPPED_KEYS = ("input_resolution", "context_length", "vocab_size")
# Keys a DETRIS checkpoint may carry that the model does not have (the unused CLIP image tower).
DETRIS_SKIPPED_PREFIXES = ("txt_backbone.visual.",)
# Tensors the official CLIP loader rounds through fp16 (conv/linear/attention weights, projections).
_CLIP_FP16_ROUNDED = re.compile(
    r"(attn\.in_proj_(weight|bias)|attn\.out_proj\.(weight|bias)|mlp\.c_(fc|proj)\.(weight|bias)|text_projection)$"
)


class CheckpointError(ValueError):
    """A weight file does not fit the model it is loaded into."""


# ---------------------------------------------------------------------------------------- reading files
def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def load_state_file(path: PathLike) -> StateDict | dict[str, Any]:
    """Read a weight file without running any code it may contain.

    ``.safetensors`` through safetensors; TorchScript archives through ``torch.jit.load`` (their state
    dict); anything else through ``torch.load(weights_only=True)``, which refuses pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError, or OSError on a truncated tensor
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    if _is_torchscript_archive(path):
        module = torch.jit.load(str(path), map_location="cpu")
        return {k: v for k, v in module.state_dict().items()}
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects other than tensors and plain "
            f"containers, which could run code (torch.load(weights_only=True) said: {str(err).splitlines()[0]}). "
            "Only load checkpoints you trust; convert trusted ones with `detris convert-official`."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({err})") from err


def _as_state_dict(source: PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    return dict(load_state_file(source))


def _strip_prefix(sd: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    out = dict(sd)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


# ---------------------------------------------------------------------------------------- strict loading
def _describe_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    what: str,
    skip_missing: Iterable[str] = (),
    hint: str = "",
) -> None:
    """Copy ``state`` into ``module``; every module key not in ``skip_missing`` must be present, no key
    may be unexpected, and shapes must agree. Errors name the offending keys."""
    expected = module.state_dict()
    skip = set(skip_missing)
    missing = sorted(k for k in expected if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{what} does not fit the model."]
        if missing:
            parts.append(f"Missing keys: {_describe_keys(missing)}.")
        if unexpected:
            parts.append(f"Unexpected keys: {_describe_keys(unexpected)}.")
        if mismatched:
            parts.append(f"Shape mismatches: {_describe_keys(mismatched, 6)}.")
        if hint:
            parts.append(hint)
        raise CheckpointError(" ".join(parts))
    with torch.no_grad():
        for key, target in expected.items():
            if key in state:
                target.copy_(state[key].to(target.dtype))


# ---------------------------------------------------------------------------------------- DINOv2
_HF_DINO_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",  # transformers < 5 naming
}
_HF_DINO_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_QKV_NAMES = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ("attention.query", "attention.key", "attention.value"),  # transformers < 5 naming
)


def dinov2_from_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """transformers ``Dinov2WithRegistersModel`` names (either naming generation) -> DINOv2 names."""
    sd = _strip_prefix(sd, ("dinov2.", "model."))
    out: StateDict = {}
    layer = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    pending: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _HF_DINO_TOP:
            out[_HF_DINO_TOP[key]] = value
            continue
        m = layer.match(key)
        if not m:
            out[key] = value  # reported as unexpected by the strict load
            continue
        idx, name, kind = int(m.group(1)), m.group(2), m.group(3)
        name = name.removeprefix("attention.") if name.startswith("attention.attention.") else name
        qkv = next((i for names in _HF_QKV_NAMES for i, n in enumerate(names) if name == n), None)
        if qkv is not None:
            pending.setdefault((idx, kind), {})["qkv"[qkv]] = value
            continue
        full = f"{name}.{kind}"
        mapped = _HF_DINO_LAYER.get(full) or _HF_DINO_LAYER.get(name)
        if mapped is None:
            out[key] = value
            continue
        out[f"blocks.{idx}.{mapped}" + ("" if full in _HF_DINO_LAYER else f".{kind}")] = value
    for (idx, kind), parts in pending.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"layer {idx} has only the {sorted(parts)} attention projections")
        out[f"blocks.{idx}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def dinov2_to_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """DINOv2 names -> current transformers ``Dinov2WithRegistersModel`` names (adapters dropped)."""
    top = {v: k for k, v in _HF_DINO_TOP.items()}
    layer_names = {
        "norm1": "norm1",
        "norm2": "norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "attn.proj": "attention.o_proj",
    }
    out: StateDict = {}
    block = re.compile(r"blocks\.(\d+)\.(.+)$")
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = block.match(key)
        if not m or ".adapter." in key:
            continue
        idx, rest = m.group(1), m.group(2)
        prefix = f"encoder.layer.{idx}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                out[f"{prefix}attention.{name}.{kind}"] = part
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{prefix}layer_scale{rest[2]}.lambda1"] = value
        else:
            name, kind = rest.rsplit(".", 1)
            out[f"{prefix}{layer_names[name]}.{kind}"] = value
    return out


def read_dinov2_weights(source: PathLike | Mapping[str, Tensor]) -> StateDict:
    """DINOv2 weights from an official ``.pth``, a transformers state dict, or a mapping of either."""
    sd = _as_state_dict(source)
    sd = _strip_prefix(sd, ("module.", "backbone.", "dinov2."))
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
        sd = dinov2_from_transformers(sd)
    return sd


def load_dinov2_weights(vision: nn.Module, source: PathLike | Mapping[str, Tensor]) -> None:
    """Load pretrained DINOv2 weights into our ViT; its Dense Aligners keep their own weights."""
    sd = read_dinov2_weights(source)
    adapters = [k for k in vision.state_dict() if ".adapter." in k]
    hint = _backbone_hint(sd, "pos_embed", vision.state_dict(), "DINOv2")
    load_strict(vision, sd, what=f"DINOv2 weights ({_name(source)})", skip_missing=adapters, hint=hint)


# ---------------------------------------------------------------------------------------- CLIP text
def clip_text_from_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """transformers ``CLIPTextModelWithProjection`` (or ``CLIPModel``) names -> OpenAI CLIP text names."""
    out: StateDict = {}
    layer = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    pending: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value
        elif key.startswith(("vision_model.", "visual_projection.")) or key.endswith("position_ids"):
            continue  # the image tower and index buffers: nothing the text tower holds
        elif m := layer.match(key):
            idx, name, kind = int(m.group(1)), m.group(2), m.group(3)
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                pending.setdefault((idx, kind), {})[name[10]] = value
            elif name in names:
                out[f"transformer.resblocks.{idx}.{names[name]}.{kind}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    for (idx, kind), parts in pending.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"text layer {idx} has only the {sorted(parts)} attention projections")
        out[f"transformer.resblocks.{idx}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def clip_text_to_transformers(sd: Mapping[str, Tensor]) -> StateDict:
    """OpenAI CLIP text names -> transformers ``CLIPTextModelWithProjection`` names (adapters dropped)."""
    out: StateDict = {}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    block = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif ".adapter." in key or key == "logit_scale":
            continue
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key):
            prefix = f"text_model.encoder.layers.{m.group(1)}.self_attn."
            for part_name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                out[f"{prefix}{part_name}.{m.group(2)}"] = part
        elif m := block.match(key):
            idx, name, kind = m.group(1), m.group(2), m.group(3)
            out[f"text_model.encoder.layers.{idx}.{names[name]}.{kind}"] = value
    return out


def read_clip_text_weights(source: PathLike | Mapping[str, Tensor], round_fp16: bool = True) -> StateDict:
    """OpenAI CLIP text-tower weights from ``ViT-B-16.pt`` (TorchScript), a plain state dict or a
    transformers state dict; the image tower and meta entries are dropped.

    With ``round_fp16`` the tensors the official loader stores in fp16 are rounded through fp16, so a
    float32 file builds the same model as the official code (a no-op on OpenAI's fp16 files).
    """
    sd = _as_state_dict(source)
    sd = _strip_prefix(sd, ("module.", "txt_backbone."))
    if any(k.startswith("text_model.") for k in sd):
        sd = clip_text_from_transformers(sd)
    sd = {
        k: v
        for k, v in sd.items()
        if not k.startswith(CLIP_SKIPPED_PREFIXES) and k not in CLIP_SKIPPED_KEYS
    }
    if round_fp16:
        sd = {k: v.half() if _CLIP_FP16_ROUNDED.search(k) and v.is_floating_point() else v for k, v in sd.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def load_clip_text_weights(text: nn.Module, source: PathLike | Mapping[str, Tensor], round_fp16: bool = True) -> None:
    """Load pretrained CLIP text weights into our text tower; its Text Adapters keep their own weights."""
    sd = read_clip_text_weights(source, round_fp16=round_fp16)
    skip = [k for k in text.state_dict() if ".adapter." in k]
    if "text_projection" not in sd and any(k.startswith("transformer.") for k in sd):
        raise CheckpointError(
            f"{_name(source)} has no text_projection (a transformers CLIPTextModel?): DETRIS needs the "
            "sentence projection; use CLIPTextModelWithProjection / CLIPModel weights or OpenAI's ViT-B-16.pt"
        )
    if "logit_scale" not in sd:
        skip.append("logit_scale")  # transformers' text-only models do not carry CLIP's unused temperature
    hint = _backbone_hint(sd, "positional_embedding", text.state_dict(), "CLIP text")
    load_strict(text, sd, what=f"CLIP text weights ({_name(source)})", skip_missing=skip, hint=hint)


def _backbone_hint(sd: Mapping[str, Tensor], key: str, expected: Mapping[str, Tensor], what: str) -> str:
    if key in sd and key in expected and sd[key].shape[-1] != expected[key].shape[-1]:
        return (
            f"The file's {what} width is {sd[key].shape[-1]} but the model's is {expected[key].shape[-1]}: "
            "it belongs to another variant (ViT-B is 768 wide, ViT-L 1024)."
        )
    return ""


def _name(source: PathLike | Mapping[str, Any]) -> str:
    return "in-memory state dict" if isinstance(source, Mapping) else str(source)


# ---------------------------------------------------------------------------------------- DETRIS checkpoints
def extract_state_dict(checkpoint: Mapping[str, Any]) -> StateDict:
    """The model tensors of an official training checkpoint (``state_dict`` / ``model`` entry or bare),
    with the DDP ``module.`` prefix removed."""
    sd = checkpoint
    for key in ("state_dict", "model"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    sd = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError("the checkpoint holds no tensors (expected a 'state_dict' entry or a bare state dict)")
    return _strip_prefix(sd, ("module.",))


def infer_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture sizes read off a DETRIS state dict's shapes (for error messages and conversion)."""
    info: dict[str, Any] = {}
    if "dinov2.pos_embed" in sd:
        info["vision_width"] = int(sd["dinov2.pos_embed"].shape[-1])
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"dinov2\.blocks\.(\d+)\.", k))}
    if blocks:
        info["vision_depth"] = max(blocks) + 1
    vis_ad = sorted({int(m.group(1)) for k in sd if (m := re.match(r"dinov2\.blocks\.(\d+)\.adapter\.", k))})
    txt_ad = sorted(
        {int(m.group(1)) for k in sd if (m := re.match(r"txt_backbone\.transformer\.resblocks\.(\d+)\.adapter\.", k))}
    )
    info["vision_adapter_layers"] = vis_ad
    info["text_adapter_layers"] = txt_ad
    if vis_ad:
        info["vision_adapter_dim"] = int(sd[f"dinov2.blocks.{vis_ad[0]}.adapter.D_fc1.weight"].shape[0])
    if txt_ad:
        info["text_adapter_dim"] = int(sd[f"txt_backbone.transformer.resblocks.{txt_ad[0]}.adapter.D_fc1.weight"].shape[0])
    return info


def guess_variant(sd: Mapping[str, Tensor]) -> str | None:
    """The named variant whose sizes match a DETRIS state dict, if any."""
    info = infer_config(sd)
    for name, cfg in VARIANTS.items():
        want = {
            "vision_width": cfg.vision_width,
            "vision_depth": cfg.vision_depth,
            "vision_adapter_layers": list(cfg.vision_adapter_layers),
            "text_adapter_layers": list(cfg.text_adapter_layers),
            "vision_adapter_dim": cfg.vision_adapter_dim,
            "text_adapter_dim": cfg.text_adapter_dim,
        }
        if all(info.get(k) == v for k, v in want.items()):
            return name
    return None


def _variant_hint(sd: Mapping[str, Tensor], cfg: DetrisConfig) -> str:
    guess = guess_variant(sd)
    if guess and guess != cfg.name:
        return f"The checkpoint's shapes match the variant {guess!r}: load it with variant='{guess}'."
    return ""


def load_detris_state(model: nn.Module, sd: Mapping[str, Tensor], what: str, skip_missing: Iterable[str] = ()) -> None:
    """Strictly load a full DETRIS state dict; only ``DETRIS_SKIPPED_PREFIXES`` keys may be dropped."""
    sd = {k: v for k, v in sd.items() if not k.startswith(DETRIS_SKIPPED_PREFIXES)}
    hint = _variant_hint(sd, model.config) if getattr(model, "config", None) is not None else ""
    load_strict(model, sd, what=what, skip_missing=skip_missing, hint=hint)


def load_official_checkpoint(path: PathLike, variant: str | DetrisConfig = "detris-b", **overrides: Any):
    """Build the model for ``variant`` and load an official DETRIS training checkpoint into it.

    The checkpoint alone is enough (it holds the frozen backbones too). Loading is strict; the only keys
    that may be dropped are the unused CLIP image tower (``txt_backbone.visual.*``). Returns the model in
    eval mode. ``overrides`` replace variant fields (e.g. ``word_len=22`` for RefCOCOg-umd models).
    """
    from .build import build_model

    checkpoint = load_state_file(path)
    sd = extract_state_dict(checkpoint)
    model = build_model(variant, **overrides)
    load_detris_state(model, sd, what=f"DETRIS checkpoint {path}")
    return model.eval()


# ---------------------------------------------------------------------------------------- our format
def trainable_state_dict(model: nn.Module) -> StateDict:
    """What training changes: every trainable parameter plus the running statistics (BatchNorm buffers)
    of the trainable modules. An adapter-only checkpoint stores exactly this."""
    names: set[str] = {n for n, p in model.named_parameters() if p.requires_grad}
    owners = {id(m) for m in model.trainable_modules()}
    for prefix, module in model.named_modules():
        if id(module) in owners:
            names.update(f"{prefix}.{n}" for n, _ in module.named_buffers())
    full = model.state_dict()
    return {k: full[k] for k in sorted(names)}


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_pretrained(
    model: nn.Module,
    directory: PathLike,
    adapter_only: bool = False,
    base_weights: Mapping[str, str] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (each atomically).

    With ``adapter_only`` the safetensors file holds only ``trainable_state_dict(model)`` (a few MB) and
    ``config.json`` records the base backbone files (``{"dinov2": ..., "clip": ...}``) that
    ``from_pretrained`` loads first; relative names are resolved against the directory, then
    ``$DETRIS_HOME`` (default ``~/.cache/detris``).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg: DetrisConfig = model.config
    if adapter_only:
        base = dict(base_weights or getattr(model, "base_weights", None) or {})
        if set(base) != {"dinov2", "clip"}:
            raise ValueError(
                "an adapter-only save needs the base backbone files: pass base_weights={'dinov2': ..., 'clip': ...} "
                "(the DINOv2 .pth and the CLIP .pt the model was built from)"
            )
        tensors = trainable_state_dict(model)
    else:
        base = {}
        tensors = model.state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {
        "format": "detris",
        "format_version": FORMAT_VERSION,
        "adapter_only": adapter_only,
        "config": cfg.to_dict(),
    }
    if adapter_only:
        meta["base_weights"] = {k: _base_name(v) for k, v in base.items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    return directory


def _base_name(path: PathLike) -> str:
    """How ``config.json`` records a base backbone file: a file shipped with the package by its bare
    name (found again wherever the package is installed), any other by its path."""
    path = Path(path)
    if path.parent.resolve() == bundled.assets_dir().resolve():
        return path.name
    return str(path)


def _resolve_base(name: str, directory: Path) -> Path:
    candidates = [Path(name).expanduser()]
    if not candidates[0].is_absolute():
        home = Path(os.environ.get("DETRIS_HOME", Path.home() / ".cache" / "detris"))
        candidates = [directory / name, home / name, home / Path(name).name, bundled.assets_dir() / name]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"base weights {name!r} of the adapter-only model in {directory} not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + ". Pass dinov2_weights=/clip_weights= to from_pretrained or put the file in $DETRIS_HOME."
    )


def _resolve_model_dir(name_or_path: PathLike) -> Path:
    if str(name_or_path) == bundled.DEMO_MODEL_NAME:
        return bundled.demo_model_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or os.sep in str(name_or_path) and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path} is not a model directory (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise FileNotFoundError(
            f"{name_or_path} is not a local directory; to fetch it from the Hub install huggingface_hub "
            "(pip install 'detris[demo]')"
        ) from err
    return Path(snapshot_download(str(name_or_path)))


def from_pretrained(
    name_or_path: PathLike,
    dinov2_weights: PathLike | None = None,
    clip_weights: PathLike | None = None,
):
    """Load a model saved by ``save_pretrained`` (a local directory, a Hub id, or the bundled demo model
    ``"detris-tiny-synthetic"``), in eval mode."""
    directory = _resolve_model_dir(name_or_path)
    if directory.resolve().is_relative_to(bundled.assets_dir().resolve()):
        # A damaged bundled file is an installation problem: say so and how to repair it.
        try:
            return _load_model_dir(directory, dinov2_weights, clip_weights)
        except bundled.BundledAssetError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to read a shipped file means the same fix
            raise bundled.damaged(directory, err) from err
    return _load_model_dir(directory, dinov2_weights, clip_weights)


def _load_model_dir(directory: Path, dinov2_weights: PathLike | None, clip_weights: PathLike | None):
    from safetensors.torch import load_file

    from .build import build_model

    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{directory} lacks {p.name}: expected {CONFIG_NAME} + {WEIGHTS_NAME}")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != "detris":
        raise CheckpointError(f"{config_path} is not a detris config (no \"format\": \"detris\")")
    cfg = DetrisConfig.from_dict(meta["config"])
    tensors = load_file(str(weights_path))
    if meta.get("adapter_only"):
        base = meta.get("base_weights", {})
        dino = Path(dinov2_weights) if dinov2_weights else _resolve_base(base["dinov2"], directory)
        clip = Path(clip_weights) if clip_weights else _resolve_base(base["clip"], directory)
        model = build_model(cfg, dinov2_weights=dino, clip_weights=clip)
        expected = trainable_state_dict(model)
        load_strict(
            model,
            tensors,
            what=f"adapter-only weights {weights_path}",
            skip_missing=[k for k in model.state_dict() if k not in expected],
        )
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise CheckpointError(f"adapter-only weights {weights_path} lack trainable keys: {_describe_keys(missing)}")
        model.base_weights = {"dinov2": str(dino), "clip": str(clip)}
    else:
        model = build_model(cfg)
        load_detris_state(model, tensors, what=f"weights {weights_path}")
    return model.eval()
