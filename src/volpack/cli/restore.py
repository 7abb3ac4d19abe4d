"""``volpack restore ARCHIVE TARGET``: a thin file, a block device, or (with formats) qcow2."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from volpack.cli.common import (
    Progress,
    add_medium_options,
    add_output_options,
    apply_medium_options,
    emit,
    rate,
)
from volpack.errors import EXIT_OK
from volpack.units import human


def register(sub: Any) -> None:
    p = sub.add_parser("restore", help="restore a volume from an archive",
                       description="Restore the volume held in an archive. Nothing is written "
                       "before the archive's header and tables check out; a file target is "
                       "replaced only when the whole archive checked out.")
    p.add_argument("archive", help="archive path, '-' for stdin, a URL, or a catalog id")
    p.add_argument("target", help="file (restored thin) or block device (needs --force)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing file or overwrite a block device")
    p.add_argument("--allow-smaller", action="store_true",
                   help="accept a device smaller than the volume if it holds every used block")
    p.add_argument("--assume-zeroed", action="store_true",
                   help="the device already reads zeros: do not zero unused ranges")
    p.add_argument("--target-format", choices=("raw", "qcow2"), default="raw",
                   help="write the target as raw (default) or qcow2")
    p.add_argument("--catalog", metavar="PATH", help="catalog for archive ids")
    add_medium_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def resolve_archive(text: str, catalog: str | None) -> str:
    """A path or URL as given; otherwise a catalog id (or unique id prefix)."""
    from volpack.media import scheme_of

    if text == "-" or scheme_of(text) != "file" or os.path.exists(text):
        return text
    from volpack.catalog import resolve_archive_ref

    return resolve_archive_ref(text, catalog) or text


def run(args: argparse.Namespace) -> int:
    from volpack.pipeline import restore

    apply_medium_options(args)
    archive = resolve_archive(args.archive, args.catalog)
    progress = Progress(args)
    try:
        result = restore(archive, args.target, force=args.force,
                         allow_smaller=args.allow_smaller, assume_zeroed=args.assume_zeroed,
                         target_format=args.target_format, progress=progress)
    finally:
        progress.close()
    emit(args, dataclasses.asdict(result), [
        f"restored archive {result.archive_uuid} to {result.target}",
        f"volume {human(result.volume_size)}, {human(result.used_bytes)} written, "
        f"{result.elapsed:.2f} s, {rate(result.used_bytes, result.elapsed)}",
    ])
    return EXIT_OK
