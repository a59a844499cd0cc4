"""Where the benchmark files come from: one data table (as `detris.registry` is for the weights).

Every file is named by the name it has on a mirror (``refcoco+.zip``, ``train2014.zip``,
``grefcoco/grefs(unc).json``), with its published size and sha256 where one is published:

* the REFER zips (RefCOCO, RefCOCO+, RefCOCOg) from the Internet Archive's captures of the original
  files on ``bvisionweb1.cs.unc.edu`` (that host is gone since 2022); the raw-byte ``id_`` form of the
  capture URL returns the file exactly as it was served. Sizes and sha256 as listed, checked against
  these captures, in github.com/TarunTomar122/attention-is-all-you-need-for-vlms, ``docs/datasets.md``.
* gRefCOCO's two files from the Hugging Face dataset repository ``FudanCVL/gRefCOCO``; each file is
  checked against the sha256 the Hub records for it (its LFS object id).
* COCO ``train2014.zip`` from images.cocodataset.org; size and sha256 as tensorflow-datasets' checksum
  list records them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALL",
    "DATASET_NAMES",
    "DatasetSource",
    "PUBLISHED_COUNTS",
    "SOURCES",
    "SourceFile",
    "download_command",
    "resolve_names",
]

_ARCHIVE = "https://web.archive.org/web/{stamp}id_/https://bvisionweb1.cs.unc.edu/licheng/referit/data/{name}"
_REFER_PROVENANCE = ("Internet Archive capture of the original REFER file; size and sha256 as listed in "
                     "github.com/TarunTomar122/attention-is-all-you-need-for-vlms docs/datasets.md")
_REFER_LICENCE = ("the REFER repository that links the zips (github.com/lichengunc/refer) is Apache-2.0, no "
                  "other licence is stated for them; the COCO annotations they hold: CC BY 4.0 (COCO terms of use)")
GREFCOCO_REPO = "FudanCVL/gRefCOCO"
#: The Hub revision read; "main" until a full commit id is confirmed (one starting 81eede59 is reported
#: identical to the authors' Google Drive copy).
GREFCOCO_REVISION = "main"


@dataclass(frozen=True)
class SourceFile:
    """One file to fetch.

    Attributes:
        name: its name on a mirror (``URL/<name>``) and for ``--expect-sha256``.
        url: where it is downloaded from; None for a file of a Hub repository (``hub_repo``).
        size: published size in bytes (None: not published; an estimate is in ``approx_size``).
        sha256: published sha256 (None: not published; a Hub file is checked against the Hub's record).
        approx_size: bytes to plan free space with when ``size`` is unknown.
        hub_repo / hub_file: the Hugging Face dataset repository and the path in it.
    """

    name: str
    url: str | None
    size: int | None
    sha256: str | None
    approx_size: int = 0
    hub_repo: str | None = None
    hub_file: str | None = None

    @property
    def planned_size(self) -> int:
        """Bytes this file takes once downloaded (published size, else the estimate)."""
        return self.size if self.size is not None else self.approx_size


@dataclass(frozen=True)
class DatasetSource:
    """One dataset of the layout detris reads: its files and the folder they become.

    Attributes:
        name: ``refcoco``, ``refcoco+``, ``refcocog``, ``grefcoco`` or ``coco-train2014``.
        target: the folder under the root (``refcoco``, ``images/train2014``).
        files: what is fetched.
        member_prefix: for a zip, the folder inside it that becomes ``target`` (``refcoco/``); None when
            the files are copied as they are (gRefCOCO).
        required: files that must be in ``target`` for the dataset to be usable.
        extracted_size: upper estimate of the bytes ``target`` takes (free-space planning before the
            archive is there; the archive's own declared sizes are checked before extraction).
        licence: as published by the source.
        provenance: where the size and hash were published.
    """

    name: str
    target: str
    files: tuple[SourceFile, ...]
    member_prefix: str | None
    required: tuple[str, ...]
    extracted_size: int
    licence: str
    provenance: str


def _refer(name: str, stamp: str, size: int, sha256: str, required: tuple[str, ...]) -> DatasetSource:
    zip_name = f"{name}.zip"
    return DatasetSource(
        name=name, target=name,
        files=(SourceFile(zip_name, _ARCHIVE.format(stamp=stamp, name=zip_name), size, sha256),),
        member_prefix=f"{name}/", required=required, extracted_size=6 * size,
        licence=_REFER_LICENCE, provenance=_REFER_PROVENANCE,
    )


#: Published sizes per split, ``{refs file: {split: (refs, expressions or None)}}``. Refs per split as
#: the tensorflow-datasets ``ref_coco`` catalogue lists them; expressions as the REFER and RefCOCOg
#: papers' statistics tables give them (not listed for RefCOCO google).
PUBLISHED_COUNTS: dict[str, dict[str, dict[str, tuple[int, int | None]]]] = {
    "refcoco": {
        "refs(unc).p": {"train": (42404, 120624), "val": (3811, 10834), "testA": (1975, 5657),
                        "testB": (1810, 5095)},
        "refs(google).p": {"train": (40000, None), "val": (5000, None), "test": (5000, None)},
    },
    "refcoco+": {
        "refs(unc).p": {"train": (42278, 120191), "val": (3805, 10758), "testA": (1975, 5726),
                        "testB": (1798, 4889)},
    },
    "refcocog": {
        "refs(umd).p": {"train": (42226, 80512), "val": (2573, 4896), "test": (5023, 9602)},
        "refs(google).p": {"train": (44822, 85474), "val": (5000, 9536)},
    },
    "grefcoco": {},
}

_COCO = DatasetSource(
    name="coco-train2014", target="images/train2014",
    files=(SourceFile("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip", 13_510_573_713,
                      "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775"),),
    member_prefix="train2014/", required=(), extracted_size=13_600_000_000,
    licence=("COCO images: the Flickr terms of use of each image (cocodataset.org terms of use); "
             "not owned by the COCO Consortium"),
    provenance="size and sha256 as tensorflow-datasets' checksum list records them",
)

_GREFCOCO = DatasetSource(
    name="grefcoco", target="grefcoco",
    files=(
        SourceFile("grefcoco/grefs(unc).json", None, None, None, approx_size=60_000_000,
                   hub_repo=GREFCOCO_REPO, hub_file="grefs(unc).json"),
        SourceFile("grefcoco/instances.json", None, None, None, approx_size=125_000_000,
                   hub_repo=GREFCOCO_REPO, hub_file="instances.json"),
    ),
    member_prefix=None, required=("grefs(unc).json", "instances.json"), extracted_size=0,
    licence="CC BY-NC-SA 4.0 (the dataset card of FudanCVL/gRefCOCO)",
    provenance="each file checked against the sha256 the Hugging Face Hub records for it",
)

#: The table: dataset name -> where its files come from.
SOURCES: dict[str, DatasetSource] = {s.name: s for s in (
    _refer("refcoco", "20220413011718", 53_993_993,
           "7f924bb7ed8dc4568058e4ff626281918d56e5206f4c868c5a80f088f38c8bf0",
           ("instances.json", "refs(unc).p", "refs(google).p")),
    _refer("refcoco+", "20220413011656", 45_613_210,
           "5f1238112d63199e68da54a28f201471909b21ded7ed79a57d51b4c1443c6b45",
           ("instances.json", "refs(unc).p")),
    _refer("refcocog", "20220413012904", 56_712_951,
           "3d1f7e5b2ff2205940bf59de55f861f5f2cc1403fb980669933a7f9af1aa8211",
           ("instances.json", "refs(umd).p", "refs(google).p")),
    _GREFCOCO,
    _COCO,
)}
DATASET_NAMES: tuple[str, ...] = tuple(SOURCES)
ALL = "all"


def resolve_names(names: list[str] | tuple[str, ...], sources: dict[str, DatasetSource] | None = None) -> list[str]:
    """The dataset names asked for, ``all`` expanded, in table order; an unknown name is a ValueError."""
    table = SOURCES if sources is None else sources
    unknown = [n for n in names if n != ALL and n not in table]
    if unknown:
        raise ValueError(f"unknown dataset {unknown[0]!r}; choose from {', '.join(table)} or {ALL}")
    wanted = set(table) if ALL in names else set(names)
    return [n for n in table if n in wanted]


def download_command(names: list[str] | tuple[str, ...] | str, root: str | Path) -> str:
    """The exact command that fetches ``names`` into ``root`` (quoted for a POSIX shell)."""
    listed = [names] if isinstance(names, str) else list(names)
    return " ".join(["detris", "data", "download", *map(shlex.quote, listed), "--root", shlex.quote(str(root))])
