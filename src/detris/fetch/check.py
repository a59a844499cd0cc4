"""``detris data check``: what of the layout is there, read through the same loaders training and
evaluation use, per dataset and split beside the published counts, and the command for each missing piece."""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.grefer import GReferAnnotations
from ..data.images import load_image
from ..data.refer import load_refer
from .install import MARKER, installed_files
from .sources import DATASET_NAMES, PUBLISHED_COUNTS, SOURCES, download_command, resolve_names

__all__ = ["CheckReport", "check_datasets"]

IMAGES = "coco-train2014"
#: Per annotation dataset: (name the loader takes, refs file) of each refs file the release holds.
REFS_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "refcoco": (("refcoco", "refs(unc).p"), ("refcoco_google", "refs(google).p")),
    "refcoco+": (("refcoco+", "refs(unc).p"),),
    "refcocog": (("refcocog_umd", "refs(umd).p"), ("refcocog_google", "refs(google).p")),
    "grefcoco": (("grefcoco", "grefs(unc).json"),),
}


@dataclass
class CheckReport:
    """The outcome: report lines, warnings (counts that differ), and each missing piece with its command."""

    root: Path
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    images: dict[str, tuple[int, int]] = field(default_factory=dict)  # file name -> (height, width)
    image_users: list[str] = field(default_factory=list)
    missing_datasets: list[str] = field(default_factory=list)  # the names to download, in order

    def add_missing(self, what: str, name: str) -> None:
        """Record a missing piece of dataset ``name`` with the command that fetches it."""
        self.missing.append((what, download_command(name, self.root)))
        if name not in self.missing_datasets:
            self.missing_datasets.append(name)

    @property
    def ok(self) -> bool:
        return not self.missing

    def text(self) -> str:
        out = [f"data root: {self.root}", *self.lines]
        if self.warnings:
            out += ["warnings:", *(f"  {w}" for w in self.warnings)]
        if self.missing:
            out += [f"missing ({len(self.missing)}):", *(f"  {what}\n    fetch it: {cmd}" for what, cmd in self.missing)]
            if len(self.missing_datasets) > 1:
                out.append("all of it: " + download_command(self.missing_datasets, self.root))
        else:
            out.append("everything needed is present")
        return "\n".join(out)


def _first_line(exc: BaseException, path: Path) -> str:
    """The error's type and first line, without the path the report already shows."""
    text = str(exc).strip().splitlines()
    first = (text[0] if text else "").replace(f"{path}: ", "").replace(f"'{path}'", "it")
    return f"{type(exc).__name__}: {first}"


def _count_table(report: CheckReport, dataset: str, refs_file: str, refs: dict[Any, dict[str, Any]]) -> None:
    """Refs and expressions per split, beside the published numbers; differences become one warning."""
    n_refs: Counter[str] = Counter()
    n_sents: Counter[str] = Counter()
    for ref in refs.values():
        n_refs[str(ref.get("split"))] += 1
        n_sents[str(ref.get("split"))] += len(ref.get("sentences") or ())
    published = PUBLISHED_COUNTS.get(dataset, {}).get(refs_file, {})
    report.lines.append(f"    {'split':<8}{'refs':>9} {'(published)':>12}{'expressions':>13} {'(published)':>12}")
    differ = []
    for split in sorted(set(n_refs) | set(published), key=lambda s: (s != "train", s != "val", s)):
        pub_refs, pub_sents = published.get(split, (None, None))
        report.lines.append(
            f"    {split:<8}{n_refs[split]:>9} {'(' + str(pub_refs if pub_refs is not None else '-') + ')':>12}"
            f"{n_sents[split]:>13} {'(' + str(pub_sents if pub_sents is not None else '-') + ')':>12}")
        if published and (pub_refs != n_refs[split] or (pub_sents is not None and pub_sents != n_sents[split])):
            differ.append(split)
    if differ:
        report.warnings.append(f"{dataset}/{refs_file}: counts differ from the published ones in "
                               f"{', '.join(differ)} (a subset, or another release)")


def _check_annotations(report: CheckReport, root: Path, name: str) -> None:
    folder = root / name
    report.lines.append(f"{name} ({folder})")
    if not folder.is_dir():
        report.add_missing(f"{folder}: not found (the whole {name} dataset)", name)
        report.lines.append("  missing")
        return
    reported: set[Path] = set()
    for loader_name, refs_file in REFS_FILES[name]:
        absent = [p for p in (folder / "instances.json", folder / refs_file) if not p.is_file()]
        if absent:
            for p in absent:
                if p not in reported:
                    reported.add(p)
                    report.add_missing(f"{p}: not found", name)
            report.lines.append(f"  {refs_file}: missing {', '.join(p.name for p in absent)}")
            continue
        try:
            source: Any = GReferAnnotations(root) if name == "grefcoco" else load_refer(root, loader_name)
        except Exception as exc:  # any failure of the hardened readers means "unusable": report, never raise
            report.add_missing(f"{folder / refs_file}: unreadable ({_first_line(exc, folder / refs_file)})", name)
            report.lines.append(f"  {refs_file}: unreadable")
            continue
        used = {int(r["image_id"]) for r in source.refs.values()}
        sentences = sum(len(r["sentences"]) for r in source.refs.values())
        report.lines.append(f"  {refs_file}: {len(source.refs)} refs, {sentences} expressions, {len(used)} images")
        _count_table(report, name, refs_file, source.refs)
        for image_id in used:
            info = source.images[image_id]
            report.images[str(info["file_name"])] = (int(info["height"]), int(info["width"]))
        if name not in report.image_users:
            report.image_users.append(name)


def _sample(names: list[str], full: bool, sample: int) -> list[str]:
    if full or len(names) <= sample:
        return names
    step = len(names) / sample
    return [names[int(i * step)] for i in range(sample)]


def _decode(report: CheckReport, image_root: Path, names: list[str], sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Decode ``names``; returns the ones that cannot be read or whose size differs from instances.json."""
    from tqdm.auto import tqdm

    bad = []
    for name in tqdm(names, desc="decode images", unit="image", disable=None, leave=False):
        try:
            h, w = load_image(image_root / name).shape[:2]
        except Exception as exc:  # unreadable for any reason: listed, never raised
            bad.append(f"{name} ({_first_line(exc, image_root / name)})")
            continue
        if name in sizes and sizes[name] != (h, w):
            bad.append(f"{name} (decodes to {h}x{w}, instances.json says {sizes[name][0]}x{sizes[name][1]})")
    return bad


def _check_images(report: CheckReport, root: Path, image_root: Path, full: bool, sample: int) -> None:
    name = IMAGES
    report.lines.append(f"{IMAGES} ({image_root})")
    if not image_root.is_dir():
        report.add_missing(f"{image_root}: the COCO train2014 images folder is not there", name)
        report.lines.append("  missing")
        return
    on_disk = sorted(e.name for e in os.scandir(image_root) if e.is_file() and not e.name.startswith("."))
    if installed_files(image_root) is not None:
        state = "installed by `detris data download`, every file at its recorded size"
    elif (image_root / MARKER).is_file():
        state = "installed by `detris data download`, but files were removed or changed since"
    else:
        state = "not installed by `detris data download`: sizes not verified"
    report.lines.append(f"  {len(on_disk)} files ({state})")
    wanted = sorted(report.images) if report.images else on_disk
    absent = [n for n in wanted if not (image_root / n).is_file()]
    present = set(wanted) - set(absent)
    if report.images:
        users = ", ".join(report.image_users)
        report.lines.append(f"  {len(wanted) - len(absent)} of the {len(wanted)} images {users} refer to are present")
        for n in absent[:5]:
            report.add_missing(f"{image_root / n}: not found (an image {users} refer to)", name)
        if len(absent) > 5:
            report.add_missing(f"{len(absent) - 5} more images {users} refer to are not in {image_root}", name)
    elif not on_disk:
        report.add_missing(f"{image_root}: empty", name)
    decoded = _sample([n for n in wanted if n in present], full, sample)
    bad = _decode(report, image_root, decoded, report.images)
    report.lines.append(f"  {len(decoded)} decoded{' (all)' if full else ' (a sample; --full for all)'}: "
                        f"{len(decoded) - len(bad)} readable")
    for b in bad:
        report.add_missing(f"{image_root}/{b}: unreadable", name)


def check_datasets(root: str | os.PathLike, names: list[str] | None = None, full: bool = False,
                   image_root: str | os.PathLike | None = None, sample: int = 20) -> CheckReport:
    """Check the datasets ``names`` (default: all) under ``root``; never raises on bad data.

    Annotation sets are read with `detris.data.load_refer` / `GReferAnnotations`; the images they refer to
    must be present (all are looked up) and decodable (``sample`` of them decoded, all with ``full``).
    """
    root = Path(root).expanduser()
    wanted = resolve_names(names or list(DATASET_NAMES), SOURCES)
    report = CheckReport(root)
    for name in wanted:
        if name != IMAGES:
            _guarded(report, name, root / name, functools.partial(_check_annotations, report, root, name))
    images = Path(image_root) if image_root else root / SOURCES[IMAGES].target
    if IMAGES in wanted or report.images:
        _guarded(report, IMAGES, images, functools.partial(_check_images, report, root, images, full, sample))
    elif any(n != IMAGES for n in wanted) and not report.image_users:
        report.lines.append("images: not checked (no annotation set could be read)")
    return report


def _guarded(report: CheckReport, name: str, where: Path, check: Callable[[], None]) -> None:
    """Run one dataset's check; a failure the checks did not foresee (a folder that cannot be listed)
    becomes a missing piece of that dataset, never a traceback."""
    try:
        check()
    except Exception as exc:
        report.add_missing(f"{where}: could not be checked ({_first_line(exc, where)})", name)
