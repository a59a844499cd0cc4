"""DETRIS architecture, one file per part."""

from .adapters import DenseAligner, TextAdapter
from .clip_text import CLIPTextTransformer
from .decoder import Decoder
from .detris import DETRIS, segmentation_loss
from .dinov2 import DinoVisionTransformer
from .head import Projector
from .neck import Neck
from .no_target import NoTargetHead, no_target_loss

__all__ = [
    "DETRIS",
    "CLIPTextTransformer",
    "Decoder",
    "DenseAligner",
    "DinoVisionTransformer",
    "Neck",
    "NoTargetHead",
    "Projector",
    "TextAdapter",
    "no_target_loss",
    "segmentation_loss",
]
