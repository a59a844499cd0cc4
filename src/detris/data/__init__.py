"""Data: REFER annotations, image loading, the official letterbox transforms and torch datasets."""

from .catalog import DATASET_NAMES, MIXED_DEFAULT, load_annotations, open_dataset
from .coco import segmentation_to_mask
from .datasets import JsonlSegDataset, MixedReferDataset, ReferSegDataset, collate
from .images import ImageLoadError, ImageNotFoundError, load_image
from .refer import DATASETS, REFER_LAYOUT, ReferAnnotations, load_refer
from .safe_pickle import SafeUnpickler, UnsafePickleError, safe_load_pickle
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    inverse_warp,
    letterbox_image,
    letterbox_mask,
    letterbox_matrix,
    normalize_image,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DATASETS",
    "MIXED_DEFAULT",
    "DATASET_NAMES",
    "load_annotations",
    "open_dataset",
    "REFER_LAYOUT",
    "ImageLoadError",
    "ImageNotFoundError",
    "JsonlSegDataset",
    "MixedReferDataset",
    "ReferAnnotations",
    "ReferSegDataset",
    "SafeUnpickler",
    "UnsafePickleError",
    "collate",
    "inverse_warp",
    "letterbox_image",
    "letterbox_mask",
    "letterbox_matrix",
    "load_image",
    "load_refer",
    "normalize_image",
    "safe_load_pickle",
    "segmentation_to_mask",
]
