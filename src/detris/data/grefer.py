"""Reading gRefCOCO (generalized referring expressions: several targets, or none) as ReLA distributes it.

Layout under ``DATA_ROOT``::

    DATA_ROOT/grefcoco/   grefs(unc).json (or grefs(unc).p)   instances.json

Images are COCO train2014 (``IMAGE_ROOT/<file_name>``). A ref is ``ref_id, image_id, split, ann_id,
category_id, sentences[{sent_id, raw, sent, tokens}]`` where ``ann_id`` is an int or a list of ints;
``[-1]`` means *no target*. As ReLA's ``grefcoco.py``: a bare int becomes a one-element list, crowd
annotations are never targets, the ground truth of a ref is the union of its targets' masks (empty for
no target), and every sentence is one sample. As ReLA's ``grefer.py``, a pickle ``grefs(unc).p`` is
preferred when both files are there; it is read with the restricted unpickler of `detris.data.refer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .coco import read_coco_instances, segmentation_to_mask
from .refer import PathLike
from .safe_pickle import safe_load_pickle

__all__ = ["GREFCOCO_FOLDER", "NO_TARGET", "GReferAnnotations"]

GREFCOCO_FOLDER = "grefcoco"
#: The ``ann_id`` list of a no-target ref.
NO_TARGET = [-1]


def _load_refs(folder: Path, split_by: str) -> tuple[list[Any], Path]:
    pickle_path, json_path = folder / f"grefs({split_by}).p", folder / f"grefs({split_by}).json"
    if pickle_path.is_file():
        return safe_load_pickle(pickle_path), pickle_path
    if not json_path.is_file():
        raise FileNotFoundError(f"no gRefCOCO refs: neither {json_path} nor {pickle_path} exists")
    try:
        return json.loads(json_path.read_text(encoding="utf-8")), json_path
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{json_path}: not valid JSON ({exc})") from None


class GReferAnnotations:
    """One gRefCOCO annotation set, indexed: refs, their target annotations, union masks.

    Raises (at construction): FileNotFoundError for a missing file; ValueError naming the file and the
    ref for malformed refs (no sentences, an ann id or image id not in ``instances.json``).
    """

    #: The name items carry in ``dataset`` (as `detris.data.refer.ReferAnnotations.dataset`).
    dataset = GREFCOCO_FOLDER

    def __init__(self, data_root: PathLike, split_by: str = "unc") -> None:
        self.split_by = split_by
        folder = Path(data_root) / GREFCOCO_FOLDER
        self.instances_path = folder / "instances.json"
        if not self.instances_path.is_file():
            raise FileNotFoundError(f"gRefCOCO instances file not found: {self.instances_path}")
        refs, self.refs_path = _load_refs(folder, split_by)
        # The same checked COCO reader as the REFER sets.
        self.images, self.anns, self.categories = read_coco_instances(self.instances_path)
        if not isinstance(refs, list):
            raise ValueError(f"{self.refs_path}: expected a list of refs, got {type(refs).__name__}")
        self.refs: dict[int, dict[str, Any]] = {}
        for i, ref in enumerate(refs):
            self._add_ref(i, ref)

    def _add_ref(self, index: int, ref: Any) -> None:
        where = f"{self.refs_path}: ref #{index}"
        if not isinstance(ref, dict) or "ref_id" not in ref:
            raise ValueError(f"{where} is not a ref dict with a ref_id")
        where = f"{self.refs_path}: ref_id {ref['ref_id']}"
        if not isinstance(ref.get("sentences"), list) or not ref["sentences"]:
            raise ValueError(f"{where} has no sentences")
        ann_ids = ref.get("ann_id")
        ann_ids = [ann_ids] if isinstance(ann_ids, int) else ann_ids
        if not isinstance(ann_ids, list) or not ann_ids or not all(isinstance(a, int) for a in ann_ids):
            raise ValueError(f"{where}: ann_id must be an int or a list of ints, got {ref.get('ann_id')!r}")
        if ann_ids != NO_TARGET:
            missing = [a for a in ann_ids if a not in self.anns]
            if missing:
                raise ValueError(f"{where} points to ann_id {missing}, which is not in {self.instances_path}")
        if int(ref.get("image_id", -1)) not in self.images:
            raise ValueError(f"{where} points to image_id {ref.get('image_id')!r}, not in {self.instances_path}")
        self.refs[int(ref["ref_id"])] = {**ref, "ann_id": ann_ids}

    def ref_ids(self, split: str | None = None) -> list[int]:
        """Ref ids of a split, in file order (all of them for None); an empty split is an error."""
        ids = [rid for rid, r in self.refs.items() if split is None or r.get("split") == split]
        if not ids:
            available = sorted({str(r.get("split")) for r in self.refs.values()})
            raise ValueError(f"gRefCOCO ({self.refs_path}) has no split {split!r}; available: {available}")
        return ids

    def samples(self, split: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        """One ``(ref_id, sentence)`` per sentence of the split's refs: the evaluation samples."""
        return [(rid, sent) for rid in self.ref_ids(split) for sent in self.refs[rid]["sentences"]]

    def image_info(self, ref_id: int) -> dict[str, Any]:
        """The COCO image record (``id, file_name, height, width``) of a ref."""
        return self.images[int(self.refs[ref_id]["image_id"])]

    def is_no_target(self, ref_id: int) -> bool:
        return self.refs[ref_id]["ann_id"] == NO_TARGET

    def target_annotations(self, ref_id: int) -> list[dict[str, Any]]:
        """The annotations whose union is the ground truth; crowd annotations never count."""
        if self.is_no_target(ref_id):
            return []
        return [self.anns[a] for a in self.refs[ref_id]["ann_id"] if not self.anns[a].get("iscrowd", 0)]

    def get_mask(self, ref_id: int) -> np.ndarray:
        """The ground truth at the image size: ``uint8 (H, W)`` 0/1, the union of the targets' masks
        (all zero for a no-target ref)."""
        image = self.image_info(ref_id)
        h, w = int(image["height"]), int(image["width"])
        mask = np.zeros((h, w), np.uint8)
        for ann in self.target_annotations(ref_id):
            try:
                mask |= segmentation_to_mask(ann.get("segmentation"), h, w, strict=False)
            except ValueError as exc:
                raise ValueError(f"{self.instances_path}: annotation {ann.get('id')} (ref_id {ref_id}): {exc}") from None
        return mask
