"""The dataset catalog: a name -> its annotations -> a torch dataset, for training, evaluation and the CLI.

One table of names (`DATASET_NAMES`). Every name is a REFER set as distributed (``refcoco``,
``refcoco+``, ``refcocog_umd``, ... in `detris.data.refer.DATASETS`, with the aliases of the official
code) or gRefCOCO (``grefcoco``); ``mixed`` is the union of several of them (the official L* set by
default, `MIXED_DEFAULT`). `load_annotations` reads a name's files; `segmentation_dataset` wraps
annotations of either kind as the matching torch dataset; `open_dataset` does both, mixed sets included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .datasets import GReferSegDataset, MixedReferDataset, ReferSegDataset
from .grefer import GREFCOCO_FOLDER, GReferAnnotations
from .refer import DATASETS as REFER_DATASETS
from .refer import ReferAnnotations, load_refer

__all__ = ["GREFCOCO", "MIXED", "MIXED_DEFAULT", "DATASET_NAMES", "EVAL_DATASET_NAMES", "dataset_folder",
           "load_annotations", "segmentation_dataset", "open_datasets", "open_dataset"]

#: gRefCOCO's name (and folder under the data root).
GREFCOCO = GREFCOCO_FOLDER
#: The name of a mixed set (several datasets read as one).
MIXED = "mixed"
#: The parts of ``mixed`` by default: the official mixed set of DETRIS-L* (RefCOCO + RefCOCO+ + RefCOCOg umd,
#: in the order the official tools/mix.py concatenates them).
MIXED_DEFAULT: tuple[str, ...] = ("refcoco", "refcoco+", "refcocog_umd")
#: Every dataset name a config, ``detris eval`` or the Python API accepts (REFER names with their
#: aliases, gRefCOCO, mixed).
DATASET_NAMES: tuple[str, ...] = (*REFER_DATASETS, GREFCOCO, MIXED)
#: The names the official protocol evaluates on (listed by ``detris eval --help``).
EVAL_DATASET_NAMES: tuple[str, ...] = ("refcoco", "refcoco+", "refcocog_umd", "refcocog_google", GREFCOCO)

Annotations = ReferAnnotations | GReferAnnotations


def _check_name(name: str, allow_mixed: bool = False) -> None:
    known = DATASET_NAMES if allow_mixed else tuple(n for n in DATASET_NAMES if n != MIXED)
    if name not in known:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(known)}")


def dataset_folder(name: str) -> str:
    """The folder under the data root that holds ``name``'s annotation files (``refcocog_umd`` -> ``refcocog``)."""
    _check_name(name)
    return GREFCOCO if name == GREFCOCO else REFER_DATASETS[name].folder


def load_annotations(name: str, data_root: str | os.PathLike) -> Annotations:
    """Read the annotation files of dataset ``name`` under ``data_root`` (the layout as distributed).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        FileNotFoundError: a missing file, named with the expected layout.
    """
    _check_name(name)
    return GReferAnnotations(data_root) if name == GREFCOCO else load_refer(data_root, name)


def segmentation_dataset(annotations: Annotations, split: str, mode: str, image_root: str | os.PathLike,
                         **options: Any) -> ReferSegDataset:
    """The torch dataset of one split of loaded annotations: `GReferSegDataset` for gRefCOCO (targets may
    be several objects or none), `ReferSegDataset` otherwise. ``options``: ``input_size``, ``word_len``,
    ``seed``, ``skip_bad``, ... of `ReferSegDataset`."""
    kind = GReferSegDataset if isinstance(annotations, GReferAnnotations) else ReferSegDataset
    return kind(annotations, split, mode, image_root, **options)  # type: ignore[arg-type]


def open_datasets(name: str, data_root: str | os.PathLike, image_root: str | os.PathLike,
                  splits: Sequence[tuple[str, str]], parts: Sequence[str] = MIXED_DEFAULT,
                  **options: Any) -> list[ReferSegDataset | MixedReferDataset]:
    """Dataset ``name`` (``mixed``: the union of ``parts``) as one torch dataset per ``(split, mode)`` of
    ``splits``, the annotation files read once. Modes: ``train`` (one random sentence per ref), ``val``
    (the first), ``test`` (every sentence)."""
    _check_name(name, allow_mixed=True)
    if name == MIXED:
        sources = [load_annotations(part, data_root) for part in parts]
        return [MixedReferDataset(sources, split, mode, image_root, **options) for split, mode in splits]
    annotations = load_annotations(name, data_root)
    return [segmentation_dataset(annotations, split, mode, image_root, **options) for split, mode in splits]


def open_dataset(name: str, data_root: str | os.PathLike, split: str, mode: str, image_root: str | os.PathLike,
                 parts: Sequence[str] = MIXED_DEFAULT, **options: Any) -> ReferSegDataset | MixedReferDataset:
    """One split of dataset ``name`` as a torch dataset (see `open_datasets`)."""
    return open_datasets(name, data_root, image_root, [(split, mode)], parts, **options)[0]
