"""Torch datasets for referring segmentation, following the official DETRIS data protocol.

One import path for all of them; each lives in its own module: the shared item pipeline and `collate`
(`detris.data.pipeline`, which documents the item and the modes), the datasets over REFER and gRefCOCO
annotations and mixed sets of them (`detris.data.refer_datasets`), and your own data as JSON lines
(`detris.data.jsonl`). Datasets by name: `detris.data.catalog`.
"""

from __future__ import annotations

from .jsonl import JsonlSegDataset
from .pipeline import collate
from .refer_datasets import GReferSegDataset, MixedReferDataset, ReferSegDataset

__all__ = ["GReferSegDataset", "JsonlSegDataset", "MixedReferDataset", "ReferSegDataset", "collate"]
