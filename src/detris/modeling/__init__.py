"""DETRIS architecture, one file per part."""

from .adapters import DenseAligner, TextAdapter
from .clip_text import CLIPTextTransformer
from .decoder import Decoder
from .detris import DETRIS, DetrisOutput
from .dinov2 import DinoVisionTransformer
from .head import Projector
from .neck import Neck
from .no_target import NoTargetHead

__all__ = [
    "DETRIS",
    "CLIPTextTransformer",
    "Decoder",
    "DetrisOutput",
    "DenseAligner",
    "DinoVisionTransformer",
    "Neck",
    "NoTargetHead",
    "Projector",
    "TextAdapter",
]
