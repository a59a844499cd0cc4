"""Named DETRIS variants.

A variant is a plain, JSON-serialisable dataclass holding every size that differs between the official
configurations. ``build_model`` turns it into typed module arguments; modules never see this object.

The official configs (``config/*/DETRIS_{base,large,large_mixed}.yaml``) map onto these fields as
``visual_adapter_layer -> vision_adapter_layers``, ``visual_adapter_dim -> vision_adapter_dim``,
``txtual_adapter_layer -> text_adapter_layers``, ``txt_adapter_dim -> text_adapter_dim``,
``output_dinov2 -> vision_feature_layers``, ``word_len -> word_len``, ``vis_dim -> fusion_dim``,
``num_layers/num_head/dim_ffn/dropout -> decoder_*``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

#: Fields that older files may carry and that never changed the model: ignored when read.
RETIRED_FIELDS = frozenset({"neck_heads"})
#: Largest integer a size field may hold (the vocabulary, 49408, is the largest real one): a sanity
#: bound on what a config.json may ask the model build for.
_MAX_SIZE = 1 << 17
#: The integer fields for which 0 means something (no register tokens, no decoder layers).
_MAY_BE_ZERO = frozenset({"num_register_tokens", "decoder_layers"})


@dataclass(frozen=True)
class DetrisConfig:
    """Every architectural size of a DETRIS model.

    Vision backbone: DINOv2 ViT with register tokens. Text backbone: the CLIP text transformer.
    """

    name: str = "detris-b"
    # --- DINOv2 image encoder
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_mlp_ratio: float = 4.0
    patch_size: int = 14
    num_register_tokens: int = 4
    pretrained_grid: int = 37  # official DINOv2 checkpoints are trained at 518 px = 37 x 37 patches
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    vision_feature_layers: tuple[int, ...] = (4, 8)  # 0-based blocks whose raw output is tapped
    vision_adapter_layers: tuple[int, ...] = (1, 3, 5, 7, 9, 11)
    vision_adapter_dim: int = 128
    aligner_embed_dim: int = 128  # cross-attention width inside each Dense Aligner
    aligner_heads: int = 8
    # --- CLIP text encoder
    vocab_size: int = 49408
    text_context_length: int = 77  # rows of the pretrained positional embedding
    text_width: int = 512
    text_depth: int = 12
    text_heads: int = 8
    text_embed_dim: int = 512  # columns of text_projection (sentence vector size)
    text_adapter_layers: tuple[int, ...] = (1, 3, 5, 7, 9, 11)
    text_adapter_dim: int = 64
    word_len: int = 17
    # --- adapters
    adapter_scale: float = 0.2
    adapter_bn_eps: float = 1e-3
    # --- neck / decoder / head
    fusion_dim: int = 512
    decoder_layers: int = 3
    decoder_heads: int = 8
    decoder_ffn_dim: int = 512
    decoder_dropout: float = 0.1
    head_kernel_size: int = 3
    # --- optional no-target head (gRefCOCO; off = the official model, its weights and logits)
    no_target_head: bool = False
    no_target_weight: float = 0.1  # its BCE beside the mask loss (ReLA weighs its no-target term 0.1)
    # --- input
    image_size: int = 448

    def __post_init__(self) -> None:
        self._check_types()
        # Lists from JSON/YAML become tuples so the config stays hashable and comparable.
        for name in ("vision_feature_layers", "vision_adapter_layers", "text_adapter_layers"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        for name, depth in (
            ("vision_feature_layers", self.vision_depth),
            ("vision_adapter_layers", self.vision_depth),
            ("text_adapter_layers", self.text_depth),
        ):
            bad = [i for i in getattr(self, name) if not 0 <= i < depth]
            if bad:
                raise ValueError(f"{name} has block indices {bad} outside 0..{depth - 1}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.word_len > self.text_context_length:
            raise ValueError(f"word_len {self.word_len} exceeds text_context_length {self.text_context_length}")

    def _check_types(self) -> None:
        """Every field of the kind its annotation says, sizes in a sane range (a config.json is user input:
        a width of ``"wide"`` must fail here, not deep inside the model build)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            if kind == "int":
                low = 0 if f.name in _MAY_BE_ZERO else 1  # a zero patch size or width divides by zero later
                ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= _MAX_SIZE
                what = f"an integer in {low}..{_MAX_SIZE}"
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                what = "a finite number"
            elif kind == "bool":
                ok, what = isinstance(value, bool), "true or false"
            elif kind == "str":
                ok, what = isinstance(value, str), "a string"
            else:  # tuple[int, ...]
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(i, int) and not isinstance(i, bool) for i in value)
                what = "a list of integers"
            if not ok:
                raise ValueError(f"DETRIS config field {f.name} must be {what}, got {value!r}")

    @property
    def projector_dim(self) -> int:
        """Channels of the head's visual projector (official: ``vis_dim // 2``)."""
        return self.fusion_dim // 2

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetrisConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DETRIS config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> DetrisConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> DetrisConfig:
        return dataclasses.replace(self, **changes)


_DETRIS_B = DetrisConfig()

_DETRIS_L = DetrisConfig(
    name="detris-l",
    vision_width=1024,
    vision_depth=24,
    vision_heads=16,
    vision_feature_layers=(8, 16),
    vision_adapter_layers=(2, 6, 10, 14, 18, 22),
)

# The official mixed-data L* config: width 384 everywhere except the first block of each tower
# (its layer lists are 1..23 and 1..11).
_DETRIS_L_MIXED = _DETRIS_L.replace(
    name="detris-l-mixed",
    vision_adapter_layers=tuple(range(1, 24)),
    vision_adapter_dim=384,
    text_adapter_layers=tuple(range(1, 12)),
    text_adapter_dim=384,
)

# Small enough to train on a laptop CPU in minutes; same code paths as the real variants.
_DETRIS_TINY = DetrisConfig(
    name="detris-tiny",
    vision_width=96,
    vision_depth=4,
    vision_heads=4,
    pretrained_grid=8,
    vision_feature_layers=(1, 2),
    vision_adapter_layers=(1, 3),
    vision_adapter_dim=32,
    aligner_embed_dim=32,
    aligner_heads=4,
    text_width=64,
    text_depth=4,
    text_heads=4,
    text_embed_dim=64,
    text_adapter_layers=(1, 3),
    text_adapter_dim=32,
    fusion_dim=64,
    decoder_layers=1,
    decoder_heads=4,
    decoder_ffn_dim=128,
    image_size=224,
)

VARIANTS: dict[str, DetrisConfig] = {
    c.name: c for c in (_DETRIS_B, _DETRIS_L, _DETRIS_L_MIXED, _DETRIS_TINY)
}


def get_variant(name: str | DetrisConfig, **overrides: Any) -> DetrisConfig:
    """Return the named variant, optionally with some fields replaced (e.g. ``word_len=22``)."""
    if isinstance(name, DetrisConfig):
        return name.replace(**overrides) if overrides else name
    key = name.lower().replace("_", "-")
    if key not in VARIANTS:
        raise ValueError(f"unknown DETRIS variant {name!r}; choose one of {sorted(VARIANTS)}")
    cfg = VARIANTS[key]
    return cfg.replace(**overrides) if overrides else cfg


def list_variants() -> list[str]:
    return sorted(VARIANTS)
