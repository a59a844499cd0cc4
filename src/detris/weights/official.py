"""Official DETRIS training checkpoints: ``{'state_dict': {'module.' + key: tensor}, ...}`` or a bare
state dict, with or without the DDP prefix. The variant is read off the tensors' shapes.
(``detris.pretrained.load_official_checkpoint`` builds the model and loads one.)"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..variants import VARIANTS, DetrisConfig
from .io import CheckpointError, StateDict, load_strict, strip_prefix

if TYPE_CHECKING:
    from ..modeling import DETRIS

__all__ = ["DETRIS_SKIPPED_PREFIXES", "extract_state_dict", "infer_config", "guess_variant", "load_detris_state",
           "variant_hint"]

# Keys a DETRIS checkpoint may carry that the model does not have (the unused CLIP image tower).
DETRIS_SKIPPED_PREFIXES = ("txt_backbone.visual.",)


def extract_state_dict(checkpoint: Mapping[str, Any]) -> StateDict:
    """The model tensors of an official training checkpoint (``state_dict`` / ``model`` entry or bare),
    with the DDP ``module.`` prefix removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"the checkpoint holds a {type(checkpoint).__name__}, not a dict of tensors (expected a "
            "'state_dict' entry or a bare state dict)"
        )
    sd = checkpoint
    for key in ("state_dict", "model"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    sd = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError("the checkpoint holds no tensors (expected a 'state_dict' entry or a bare state dict)")
    return strip_prefix(sd, ("module.",))


def infer_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture sizes read off a DETRIS state dict's shapes (for error messages and conversion)."""
    info: dict[str, Any] = {}
    if (width := _size(sd, "dinov2.pos_embed", -1)) is not None:
        info["vision_width"] = width
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"dinov2\.blocks\.(\d+)\.", k))}
    if blocks:
        info["vision_depth"] = max(blocks) + 1
    vis_ad = sorted({int(m.group(1)) for k in sd if (m := re.match(r"dinov2\.blocks\.(\d+)\.adapter\.", k))})
    txt_ad = sorted(
        {int(m.group(1)) for k in sd if (m := re.match(r"txt_backbone\.transformer\.resblocks\.(\d+)\.adapter\.", k))}
    )
    info["vision_adapter_layers"] = vis_ad
    info["text_adapter_layers"] = txt_ad
    if vis_ad and (dim := _size(sd, f"dinov2.blocks.{vis_ad[0]}.adapter.D_fc1.weight", 0)) is not None:
        info["vision_adapter_dim"] = dim
    if txt_ad and (dim := _size(sd, f"txt_backbone.transformer.resblocks.{txt_ad[0]}.adapter.D_fc1.weight", 0)) \
            is not None:
        info["text_adapter_dim"] = dim
    return info


def _size(sd: Mapping[str, Tensor], key: str, axis: int) -> int | None:
    """``sd[key].shape[axis]``, or None when the file lacks the tensor or it has too few dimensions (a
    damaged or partial file: the strict load then names what is missing or misshapen)."""
    tensor = sd.get(key)
    if tensor is None or tensor.dim() <= (axis if axis >= 0 else -axis - 1):
        return None
    return int(tensor.shape[axis])


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


def variant_hint(sd: Mapping[str, Tensor], cfg: DetrisConfig) -> str:
    guess = guess_variant(sd)
    if guess and guess != cfg.name:
        return f"The checkpoint's shapes match the variant {guess!r}: load it with variant='{guess}'."
    return ""


def load_detris_state(model: DETRIS, sd: Mapping[str, Tensor], what: str, skip_missing: Iterable[str] = ()) -> None:
    """Strictly load a full DETRIS state dict; only ``DETRIS_SKIPPED_PREFIXES`` keys may be dropped."""
    sd = {k: v for k, v in sd.items() if not k.startswith(DETRIS_SKIPPED_PREFIXES)}
    hint = variant_hint(sd, model.config)
    load_strict(model, sd, what=what, skip_missing=skip_missing, hint=hint)
