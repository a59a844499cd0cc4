"""detris: DETRIS referring image segmentation."""

__version__ = "0.1.0"
