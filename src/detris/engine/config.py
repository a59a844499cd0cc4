"""Training configuration: typed dataclasses read from YAML, validated before anything runs.

A config file has four sections, ``model``, ``data``, ``train`` and ``output`` (see ``configs/``).
Every key is checked: an unknown key or a value of the wrong type raises `ConfigError` naming the key
and its section. ``--set section.key=value`` overrides are parsed with YAML typing (``2`` is an int,
``1e-4`` a float, ``[35, 55]`` a list, ``null`` None, ``true`` a bool).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..bundled import packaged_config, packaged_configs
from ..data.catalog import DATASET_NAMES, MIXED, MIXED_DEFAULT
from ..fetch.sources import SOURCES
from ..precision import precision_name

__all__ = [
    "ConfigError",
    "ModelConfig",
    "SyntheticDataConfig",
    "DataConfig",
    "TrainConfig",
    "OutputConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]

#: Dataset names a config may name: the catalog's (REFER sets, gRefCOCO, ``mixed`` = the official
#: RefCOCO + RefCOCO+ + RefCOCOg-umd set by default) and the procedural ``synthetic`` scenes.
DATASETS = (*DATASET_NAMES, "synthetic")
#: The datasets that can be parts of ``mixed``.
_MIXABLE = tuple(n for n in DATASET_NAMES if n != MIXED)
#: The parts of ``mixed`` by default: the official mixed set.
_OFFICIAL_MIXED = list(MIXED_DEFAULT)
#: ``train.lr_schedule`` values: ``multistep`` (official, per epoch), ``cosine`` (per step, by progress).
SCHEDULES = ("multistep", "cosine")


#: ``model.dinov2_weights`` / ``model.clip_weights`` value naming the towers shipped with detris.
BUNDLED = "bundled"


def get_variant_name(name: str) -> str:
    return name.lower().replace("_", "-")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and its section."""


def _check_bundled_geometry(m: ModelConfig, key: str) -> None:
    """The bundled towers fit one patch size and position grid; other values would fail to load."""
    from ..bundled import TINY_TOWER_GEOMETRY
    from ..variants import get_variant

    variant = get_variant(m.variant)
    for name, value in TINY_TOWER_GEOMETRY.items():
        got = m.overrides.get(name, getattr(variant, name))
        if got != value:
            wanted = ", ".join(f"{k}: {v}" for k, v in TINY_TOWER_GEOMETRY.items())
            raise ConfigError(f"model.overrides.{name}: {got}, but the bundled towers ({key}: bundled) were "
                              f"pretrained with {name} {value}; set model.overrides {{{wanted}}}")


@dataclass
class ModelConfig:
    """What to build: a named variant, optional backbone files, variant field overrides."""

    variant: str = "detris-b"
    # Backbone files: official dinov2_vit{b,l}14_reg4_pretrain.pth / OpenAI ViT-B-16.pt, or "bundled"
    # for the synthetic-scene towers shipped with detris (detris-tiny only).
    dinov2_weights: str | None = None
    clip_weights: str | None = None
    overrides: dict = field(default_factory=dict)  # DetrisConfig fields, e.g. {word_len: 22}
    grad_checkpointing: bool = False
    # Train the towers as well (end-to-end pretraining, e.g. of the tiny towers the demo freezes);
    # False is the official split: only adapters, neck, decoder and head learn.
    train_backbones: bool = False
    # Official ``sync_bn: True``: BatchNorm statistics over the global batch under DDP. SyncBatchNorm
    # exists only for GPUs; on CPU (gloo) each process normalises its own micro-batch.
    sync_bn: bool = True


@dataclass
class SyntheticDataConfig:
    """Procedural scenes written into ``<output.dir>/data`` (dataset ``synthetic``): in the REFER layout,
    or with ``generalized`` in the gRefCOCO layout with refs to several objects and to none."""

    train_images: int = 400
    val_images: int = 50
    # Scenes after the val ones, written as a "test" split that training never reads: a held-out set
    # for a final score (``detris demo`` scores its model there; ``detris eval --split test`` too).
    test_images: int = 0
    image_size: list = field(default_factory=lambda: [256, 256])  # (height, width)
    min_objects: int = 2
    max_objects: int = 5
    max_expressions: int = 3
    seed: int = 0
    generalized: bool = False
    multi_target_refs: int = 1  # per image, generalized only
    no_target_refs: int = 1  # per image, generalized only


@dataclass
class DataConfig:
    """Where the data is and how it is read."""

    dataset: str = "refcoco"  # a REFER name, grefcoco, mixed or synthetic
    data_root: str | None = None  # folder holding refcoco/, refcoco+/, refcocog/, grefcoco/
    mixed: list = field(default_factory=lambda: list(_OFFICIAL_MIXED))  # the parts of dataset "mixed"
    image_root: str | None = None  # COCO train2014 images; default data_root/images/train2014 (the download's layout)
    train_split: str = "train"
    val_split: str = "val"  # refcoco+ validates on testB upstream
    input_size: int | None = None  # default: the variant's image_size (448)
    num_workers: int = 0
    # An unreadable training image (corrupt or missing) met mid-epoch stops the run with an error naming
    # the file and the ref. max_bad_items: N skips up to N such items over the run, each with a warning,
    # counted in metrics.jsonl ("bad_items"); the next one is the error. skip_bad: true skips any number.
    skip_bad: bool = False
    max_bad_items: int = 0
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


@dataclass
class TrainConfig:
    """Optimisation. ``batch_size`` is global: world size x micro_batch_size x accumulation steps."""

    epochs: int = 65
    milestones: list = field(default_factory=lambda: [35, 55])
    lr: float = 1e-4
    lr_decay: float = 0.1  # MultiStepLR gamma
    # multistep (official): x lr_decay at each milestone epoch. cosine: per step, warm-up then cosine
    # decay to 0 over the run's progress = the larger of its step and wall-time fractions (for runs
    # bounded by max_minutes; milestones are then unused). See engine/schedule.py.
    lr_schedule: str = "multistep"
    warmup_steps: int = 0  # cosine only: linear warm-up over the first N optimizer steps
    weight_decay: float = 0.0
    batch_size: int = 32
    micro_batch_size: int | None = None  # per process and forward pass; default batch_size / world
    val_batch_size: int = 16
    max_norm: float = 0.0  # gradient clipping; 0 = off (official)
    # Weight of an extra soft Dice loss on the probabilities upsampled to the input size the way
    # evaluation does it (see engine/losses.py); 0 = the official BCE alone.
    dice_weight: float = 0.0
    # float32 | bfloat16 (autocast, CPU or GPU) | float16 (autocast + GradScaler, GPU); fp32, bf16 and
    # fp16 are read as the same.
    precision: str = "float32"
    device: str = "auto"  # auto | cpu | cuda
    # CPU threads of torch's intra-op pool for this run (null = torch's default, one per core). On a
    # machine shared with other jobs one thread per process avoids OpenMP threads waiting on each other.
    num_threads: int | None = None
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests, demos)
    max_minutes: float | None = None  # stop (and save) after this much wall time
    save_every_steps: int = 0  # also checkpoint every N optimizer steps mid-epoch (0 = epoch ends only)
    # Also checkpoint once N minutes of training have passed since the last save (0 = off): a crash
    # then costs at most that much work. Decided on the clock reduced across ranks (all save together).
    save_every_minutes: float = 0.0
    # Under torchrun: how long forming the process group, and then any wait for another process (a
    # collective while rank 0 saves), may take before the run fails with a message saying why.
    dist_timeout_s: float = 300.0
    evaluate: bool = True  # validate after every epoch
    val_max_items: int | None = None  # validate on the first N items only


@dataclass
class OutputConfig:
    """Where results go."""

    dir: str = "runs/detris"
    save_full: bool = False  # checkpoints hold every weight instead of the trained ones
    tensorboard: bool = True  # used when tensorboard is installed
    plot: bool = True  # loss / mIoU curve PNG at the end (needs matplotlib)
    progress: bool = True  # tqdm bar


@dataclass
class RunConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> RunConfig:
        """Value checks that types cannot express; raise `ConfigError` naming the key."""
        d, t = self.data, self.train
        m = self.model
        bundled = [k for k in ("dinov2_weights", "clip_weights") if getattr(m, k) == BUNDLED]
        if bundled and get_variant_name(m.variant) != "detris-tiny":
            raise ConfigError(f"model.{bundled[0]}: the bundled towers are detris-tiny's, not {m.variant!r}")
        if bundled:
            _check_bundled_geometry(m, bundled[0])
        if d.dataset not in DATASETS:
            raise ConfigError(f"data.dataset: unknown dataset {d.dataset!r}; choose one of {list(DATASETS)}")
        if d.dataset == MIXED and (not d.mixed or any(n not in _MIXABLE for n in d.mixed)):
            raise ConfigError(f"data.mixed: parts must be some of {list(_MIXABLE)}, got {d.mixed}")
        s_cfg = d.synthetic
        if s_cfg.multi_target_refs < 0 or s_cfg.no_target_refs < 0:
            raise ConfigError("data.synthetic.multi_target_refs and no_target_refs must be >= 0")
        try:
            t.precision = precision_name(t.precision)
        except ValueError as err:
            raise ConfigError(f"train.precision: {err}") from None
        if t.device not in ("auto", "cpu") and not t.device.startswith("cuda"):
            raise ConfigError(f"train.device: {t.device!r}; use auto, cpu, cuda or cuda:N")
        for key in ("epochs", "batch_size", "val_batch_size"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
        if t.micro_batch_size is not None and t.micro_batch_size < 1:
            raise ConfigError(f"train.micro_batch_size must be >= 1, got {t.micro_batch_size}")
        if t.save_every_steps < 0:
            raise ConfigError(f"train.save_every_steps must be >= 0, got {t.save_every_steps}")
        if d.max_bad_items < 0:
            raise ConfigError(f"data.max_bad_items must be >= 0, got {d.max_bad_items}")
        if t.save_every_minutes < 0:
            raise ConfigError(f"train.save_every_minutes must be >= 0, got {t.save_every_minutes}")
        if t.dist_timeout_s <= 0:
            raise ConfigError(f"train.dist_timeout_s must be > 0 seconds, got {t.dist_timeout_s}")
        if t.lr_schedule not in SCHEDULES:
            raise ConfigError(f"train.lr_schedule: {t.lr_schedule!r} is not one of {list(SCHEDULES)}")
        if t.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
        if t.warmup_steps and t.lr_schedule != "cosine":
            raise ConfigError("train.warmup_steps needs train.lr_schedule=cosine")
        if t.num_threads is not None and t.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1 or null, got {t.num_threads}")
        if t.dice_weight < 0:
            raise ConfigError(f"train.dice_weight must be >= 0, got {t.dice_weight}")
        if t.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {t.lr}")
        if not all(isinstance(m, int) and m > 0 for m in t.milestones) or list(t.milestones) != sorted(t.milestones):
            raise ConfigError(f"train.milestones must be increasing positive epochs, got {t.milestones}")
        if d.dataset != "synthetic" and d.data_root is None:
            raise ConfigError(f"data.data_root is required for dataset {d.dataset!r}")
        if d.dataset != "synthetic" and d.image_root is None:
            # The layout `detris data download --root DATA_ROOT` writes.
            d.image_root = str(Path(str(d.data_root)) / SOURCES["coco-train2014"].target)
        size = d.synthetic.image_size
        if len(size) != 2 or not all(isinstance(s, int) and s >= 64 for s in size):
            raise ConfigError(f"data.synthetic.image_size must be [height, width] >= 64, got {size}")
        return self


# ------------------------------------------------------------------------------------------ typing
def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is list or origin is list:
        return isinstance(value, (list, tuple))
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _build(cls: Any, data: Any, section: str) -> Any:
    where = section or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"section {where!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    not_names = [k for k in data if not isinstance(k, str)]
    if not_names:  # YAML reads `1:` or `null:` as a number / None, not a key name
        raise ConfigError(f"section {where!r} has a key that is not a name: {not_names[0]!r}; known keys: {names}")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in section {where!r}"
            + (f" (also {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; known keys: {names}"
        )
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in data:
            continue
        value, ann = data[name], hints[name]
        key = f"{section}.{name}" if section else name
        if dataclasses.is_dataclass(ann):
            kwargs[name] = _build(ann, value, key)
            continue
        if isinstance(value, str) and not _type_ok(value, ann) and _type_ok(1.0, ann):
            # YAML 1.1 reads ``1e-4`` (no dot) as a string; accept it where a float is expected.
            try:
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, ann):
            raise ConfigError(
                f"key {name!r} in section {where!r} must be {_type_name(ann)}, got {value!r} ({type(value).__name__})"
            )
        if ann is float or (typing.get_origin(ann) in (Union, types.UnionType) and float in typing.get_args(ann)):
            value = float(value) if isinstance(value, int) else value
        kwargs[name] = list(value) if isinstance(value, tuple) else value
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a `RunConfig` from plain data (what YAML gives)."""
    return _build(RunConfig, data, "").validate()


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain, YAML/JSON-serialisable copy of ``cfg``."""
    return dataclasses.asdict(cfg)


def _yaml_errors() -> tuple[type[BaseException], ...]:
    import yaml

    # Besides YAMLError, PyYAML's scanner lets ValueError (a "\\U99999999" escape: chr() out of range),
    # OverflowError (an escape too large for C) and RecursionError (deep nesting) through.
    return (yaml.YAMLError, ValueError, OverflowError, RecursionError)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to plain config data; values are parsed as YAML."""
    import yaml

    yaml_errors = _yaml_errors()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        parts = [p for p in path.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has no key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml_errors as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
        node = data
        for k in parts[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


#: Most values (scalars and containers, aliases counted as often as they are used) a config may hold.
MAX_CONFIG_VALUES = 100_000


def _too_many_values(data: Any, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` values once every alias is expanded (stops early)."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


def _config_path(path: str | os.PathLike) -> Path:
    """A config file's path; a bare name (no folder, no suffix) that is no file is a packaged config."""
    given = Path(path)
    if given.is_file():
        return given
    if given.suffix == "" and given.parent == Path(".") and given.name in packaged_configs():
        return packaged_config(given.name)
    raise FileNotFoundError(f"config file not found: {given} (configs shipped with detris: "
                            f"{', '.join(packaged_configs())})")


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``--set`` overrides, validate. ``path``: a YAML file, or the name of a
    config shipped with detris (``synthetic-tiny``, ``refcoco-detris-b``, ...: `detris.bundled.packaged_configs`).
    Raises `ConfigError` / FileNotFoundError."""
    import yaml  # a core dependency; imported here so that `import detris` stays light

    path = _config_path(path)
    yaml_errors = _yaml_errors()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml_errors as err:
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train/output sections")
    data = apply_overrides(data, list(overrides))
    if _too_many_values(data, MAX_CONFIG_VALUES):
        # YAML aliases share one object, but the config is copied and written out expanded (config.yaml,
        # every checkpoint): nine aliases nested six deep make a 1 kB file a 20 s, 1 GB write.
        raise ConfigError(
            f"{path}: the config expands to more than {MAX_CONFIG_VALUES} values (nested YAML aliases, or "
            "one that contains itself); write the values out"
        )
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
