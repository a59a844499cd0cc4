"""The released DETRIS checkpoints, by name (timm style: ``<variant>.<training data>``): one data table.

The authors publish their checkpoints on the Hugging Face Hub in ``thuteam/DETRIS`` (folders ``base/``,
``large/``, ``mix/``). Only the ``base/`` file names could be confirmed; the others are listed with no
file (``hub_file=None``) rather than a guess, and resolved at run time from the repository's file listing
(`detris.released`: exactly one matching ``.pth`` in the variant's folder); where nothing matches, load
them by their Hub path (``thuteam/DETRIS/large/<file>.pth``) or a local copy. The mIoU and oIoU values are the ones the
official README reports (commit c94b1e1, two tables), in percent.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

__all__ = ["PretrainedEntry", "REGISTRY", "BACKBONE_URLS", "list_pretrained", "get_entry", "OFFICIAL_HUB_REPO"]

OFFICIAL_HUB_REPO = "thuteam/DETRIS"

#: Where the official README says to download the backbone files DETRIS is built on; adapter-only models
#: on these files record the URL, and loading downloads a missing one into $DETRIS_HOME.
BACKBONE_URLS: dict[str, str] = {
    "dinov2_vitb14_reg4_pretrain.pth": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    "dinov2_vitl14_reg4_pretrain.pth": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth",
    "ViT-B-16.pt": "https://openaipublic.azureedge.net/clip/models/"
                   "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
}
_LICENCE = "not stated by the authors"


@dataclass(frozen=True)
class PretrainedEntry:
    """One released model: where its file is, how to build it, what the paper reports for it."""

    name: str
    variant: str
    dataset: str
    hub_repo: str | None = OFFICIAL_HUB_REPO
    hub_file: str | None = None  # None: the file name is not confirmed
    word_len: int = 17
    sha256: str | None = None
    paper_miou: dict[str, float] = field(default_factory=dict)  # split -> mIoU (%)
    paper_oiou: dict[str, float] = field(default_factory=dict)  # split -> oIoU (%)
    licence: str = _LICENCE
    note: str = ""


_REFCOCO_B = {"val": 76.0, "testA": 78.2, "testB": 73.5}
_REFCOCO_PLUS_B = {"val": 68.9, "testA": 74.0, "testB": 61.5}
_REFCOCO_L = {"val": 77.3, "testA": 79.0, "testB": 75.2}
_REFCOCO_PLUS_L = {"val": 70.8, "testA": 75.3, "testB": 64.7}
# oIoU: the second table of the official README (c94b1e1).
_REFCOCO_B_OIOU = {"val": 74.3, "testA": 77.6, "testB": 71.4}
_REFCOCO_PLUS_B_OIOU = {"val": 65.6, "testA": 72.0, "testB": 56.5}
_REFCOCO_L_OIOU = {"val": 76.1, "testA": 78.3, "testB": 73.2}
_REFCOCO_PLUS_L_OIOU = {"val": 67.9, "testA": 73.3, "testB": 60.2}
_UNCONFIRMED = ("file name on the Hub not confirmed (no single matching file in the repository's listing): pass "
                "thuteam/DETRIS/<path>.pth or a local copy")

REGISTRY: dict[str, PretrainedEntry] = {e.name: e for e in (
    PretrainedEntry("detris-b.refcoco", "detris-b", "refcoco", hub_file="base/base_refcoco.pth",
                    sha256="f52c5b00b713281c7c894d17003bd641b11e2a9a993f41e44a4a06ad2ca431d5",
                    paper_miou=_REFCOCO_B, paper_oiou=_REFCOCO_B_OIOU),
    PretrainedEntry("detris-b.refcoco+", "detris-b", "refcoco+", hub_file="base/base_refcoco+.pth",
                    paper_miou=_REFCOCO_PLUS_B, paper_oiou=_REFCOCO_PLUS_B_OIOU),
    PretrainedEntry("detris-b.refcocog-umd", "detris-b", "refcocog_umd", hub_file="base/base_refcocog_u.pth",
                    word_len=22, paper_miou={"val": 67.9, "test": 68.1}, paper_oiou={"val": 65.2, "test": 66.4}),
    PretrainedEntry("detris-b.refcocog-google", "detris-b", "refcocog_google", hub_file="base/base_refcocog_g.pth",
                    paper_miou={"val": 65.9}, paper_oiou={"val": 63.2}),
    PretrainedEntry("detris-l.refcoco", "detris-l", "refcoco", paper_miou=_REFCOCO_L, paper_oiou=_REFCOCO_L_OIOU,
                    note=_UNCONFIRMED),
    PretrainedEntry("detris-l.refcoco+", "detris-l", "refcoco+", paper_miou=_REFCOCO_PLUS_L,
                    paper_oiou=_REFCOCO_PLUS_L_OIOU, note=_UNCONFIRMED),
    PretrainedEntry("detris-l.refcocog-umd", "detris-l", "refcocog_umd", word_len=22,
                    paper_miou={"val": 69.3, "test": 70.2}, paper_oiou={"val": 66.8, "test": 68.0}, note=_UNCONFIRMED),
    PretrainedEntry("detris-l.refcocog-google", "detris-l", "refcocog_google", paper_miou={"val": 67.9},
                    paper_oiou={"val": 65.0}, note=_UNCONFIRMED),
    PretrainedEntry("detris-l-mixed.mixed", "detris-l-mixed", "mixed",
                    paper_miou={"refcoco val": 81.0, "refcoco testA": 81.9, "refcoco testB": 79.0,
                                "refcoco+ val": 75.2, "refcoco+ testA": 78.6, "refcoco+ testB": 70.2,
                                "refcocog_umd val": 74.6, "refcocog_umd test": 75.3},
                    paper_oiou={"refcoco val": 80.7, "refcoco testA": 82.2, "refcoco testB": 77.9,
                                "refcoco+ val": 73.1, "refcoco+ testA": 77.5, "refcoco+ testB": 66.0,
                                "refcocog_umd val": 73.2, "refcocog_umd test": 74.7},
                    note=_UNCONFIRMED + " (folder mix/)"),
    PretrainedEntry("detris-tiny-synthetic", "detris-tiny", "synthetic", hub_repo=None, hub_file=None,
                    licence="MIT (this project)", note="bundled with the package; synthetic shapes only"),
)}


def list_pretrained() -> list[str]:
    """Names of the released checkpoints and the bundled demo model, for ``detris.from_pretrained``."""
    return sorted(REGISTRY)


def get_entry(name: str) -> PretrainedEntry:
    """The registry entry called ``name``; an unknown name raises KeyError suggesting the closest ones."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known names: {', '.join(list_pretrained())}"
    raise KeyError(f"no released DETRIS model is called {name!r}{hint}")
