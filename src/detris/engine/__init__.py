"""Training engine: config, loop, checkpoints, DDP, records. The library never imports this package."""

from .config import ConfigError, RunConfig, load_config
from .loop import TrainingDiverged, train, validate

__all__ = ["ConfigError", "RunConfig", "load_config", "TrainingDiverged", "train", "validate"]
