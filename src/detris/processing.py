"""The preprocessing contract stored with the weights (as timm's ``pretrained_cfg``).

What a model expects around its forward pass: the input size, how an image is fitted to it
(``letterbox``: one affine map, aspect kept, centred, bicubic, border = the mean colour), the
normalisation, the token length, and the probability threshold of the official evaluation. It lives in
``config.json`` under ``"processing"`` and is read by `Predictor`, ``detris export`` and ``detris serve``.
Files written before it existed load with the contract their variant implies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .data.transforms import CLIP_MEAN, CLIP_STD
from .postprocess import DEFAULT_THRESHOLD
from .variants import DetrisConfig

__all__ = ["ProcessingConfig"]

RESIZE_MODES = ("letterbox",)


@dataclass(frozen=True)
class ProcessingConfig:
    """Pre- and post-processing of a DETRIS model (the official protocol by default)."""

    input_size: int
    word_len: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: str = "letterbox"
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"processing.resize {self.resize!r} is not one of {list(RESIZE_MODES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"processing.mean/std must be 3 values each (std > 0), got {self.mean} / {self.std}")
        if (self.mean, self.std) != (CLIP_MEAN, CLIP_STD):
            # The letterbox border and the normalisation are the CLIP ones throughout detris.
            raise ValueError(f"processing.mean/std {self.mean} / {self.std}: only the CLIP values are supported")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"processing.threshold must lie strictly between 0 and 1, got {self.threshold}")

    @classmethod
    def for_model(cls, cfg: DetrisConfig) -> ProcessingConfig:
        """The official contract for a model of these sizes."""
        return cls(input_size=cfg.image_size, word_len=cfg.word_len)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, cfg: DetrisConfig) -> ProcessingConfig:
        """Read ``config.json``'s ``"processing"`` entry; ``None`` (older files) gives `for_model`."""
        if data is None:
            return cls.for_model(cfg)
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown processing keys {unknown}; known keys are {sorted(cls.__dataclass_fields__)}")
        out = cls(**data)
        if (out.input_size, out.word_len) != (cfg.image_size, cfg.word_len):
            raise ValueError(
                f"processing input_size/word_len {out.input_size}/{out.word_len} disagree with the model's "
                f"image_size/word_len {cfg.image_size}/{cfg.word_len}"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d
