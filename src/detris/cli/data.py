"""``detris data download NAME... --root DIR`` and ``detris data check --root DIR``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..fetch.sources import ALL, DATASET_NAMES

__all__ = ["add_data_parser"]


def _download(args: argparse.Namespace) -> int:
    from ..fetch.install import DownloadOptions, download_datasets, parse_expected

    try:
        options = DownloadOptions(mirror=args.mirror, expected=parse_expected(args.expect_sha256 or []),
                                  keep_archives=bool(args.keep_archives))
        download_datasets(args.names, args.root, options)
    except ValueError as err:  # every FetchError, and a malformed --expect-sha256
        message = str(err)
    except OSError as err:  # a full disk while writing, a folder that cannot be written
        message = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
        message += "; free some space or choose another --root, then run the same command again"
    else:
        return 0
    print(f"detris data download: error: {message}", file=sys.stderr)
    return 1


def _check(args: argparse.Namespace) -> int:
    from ..fetch.check import check_datasets

    try:
        report = check_datasets(args.root, args.dataset or None, full=bool(args.full), image_root=args.image_root)
    except ValueError as err:  # an unknown dataset name
        print(f"detris data check: error: {err}", file=sys.stderr)
        return 1
    print(report.text())
    return 0 if report.ok else 1


def add_data_parser(sub: Any) -> None:
    """Register ``detris data {download,check}``."""
    names = ", ".join(DATASET_NAMES)
    data = sub.add_parser("data", help="download the benchmarks and check what is on disk")
    commands = data.add_subparsers(dest="data_command", required=True)

    p = commands.add_parser("download", help="download, verify and unpack datasets into the layout detris reads")
    p.add_argument("names", nargs="+", metavar="NAME", choices=[*DATASET_NAMES, ALL], help=f"{names} or {ALL}")
    p.add_argument("--root", required=True, help="data root: gets refcoco/, refcoco+/, refcocog/, grefcoco/, "
                                                 "images/train2014/")
    p.add_argument("--mirror", default=None, help="fetch every file from URL/<file name> instead (an "
                                                  "organisation's mirror); checksums still apply")
    p.add_argument("--expect-sha256", action="append", default=[], metavar="FILE=HEX",
                   help="replace the pinned sha256 of FILE (e.g. refcoco.zip) for a mirror that repacked it "
                        "(repeatable)")
    p.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives in ROOT/.download")
    p.set_defaults(func=_download)

    p = commands.add_parser("check", help="what is there and what is missing, with the command that fetches it")
    p.add_argument("--root", required=True, help="data root (as for download and --data-root)")
    p.add_argument("--dataset", action="append", default=[], choices=list(DATASET_NAMES), metavar="NAME",
                   help=f"check only this one: {names} (repeatable; default: all)")
    p.add_argument("--image-root", default=None, help="COCO train2014 folder (default: ROOT/images/train2014)")
    p.add_argument("--full", action="store_true", help="decode every image instead of a sample")
    p.set_defaults(func=_check)
