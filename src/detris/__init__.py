"""detris: DETRIS referring image segmentation (DINOv2 + CLIP with dense adapters).

Public face::

    import detris
    model = detris.build_model("detris-b", dinov2_weights=..., clip_weights=...)
    model = detris.load_official_checkpoint("DETRIS_base_refcoco.pth", variant="detris-b")
    model = detris.from_pretrained("path/or/hub-id")
    tokens = detris.tokenize(["the man on the left"], context_length=17)
"""

from .build import build_model
from .modeling import DETRIS
from .pretrained import from_pretrained, load_official_checkpoint
from .registry import list_pretrained
from .variants import DetrisConfig, get_variant, list_variants
from .version import __version__


def tokenize(texts, context_length: int = 17, truncate: bool = True):
    """CLIP BPE token ids, (N, context_length) int64; see ``detris.tokenizer.tokenize``."""
    from .tokenizer import tokenize as _tokenize

    return _tokenize(texts, context_length=context_length, truncate=truncate)


def __getattr__(name: str):
    # The Predictor pulls in image I/O; import it only when asked for.
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'detris' has no attribute {name!r}")


__all__ = [
    "__version__",
    "DETRIS",
    "DetrisConfig",
    "Predictor",
    "build_model",
    "from_pretrained",
    "get_variant",
    "list_pretrained",
    "list_variants",
    "load_official_checkpoint",
    "tokenize",
]
