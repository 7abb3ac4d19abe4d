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
    add_search_option,
    apply_medium_options,
    emit,
    places_from,
    rate,
)
from volpack.cli.keys import add_open_options, keyring_from
from volpack.errors import EXIT_OK, UsageError
from volpack.units import human, parse_mode


def register(sub: Any) -> None:
    p = sub.add_parser(
        "restore",
        help="restore a volume from an archive",
        description="Restore the volume held in an archive. Nothing is written "
        "before the archive's header and tables check out; a file target is "
        "replaced only when the whole archive checked out. Given a catalog id or "
        "--volume, the archive id in the header read from the medium must be the one "
        "asked for: another archive there (the location was written over) is refused "
        "with exit code 9 before the target is touched.",
    )
    p.add_argument(
        "archive",
        nargs="?",
        help="archive path, '-' for stdin, a URL, or a catalog id (omit with --volume)",
    )
    p.add_argument(
        "target",
        help="file (restored thin), block device or NBD export nbd://… (both need --force)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing file or overwrite a block device or NBD export",
    )
    p.add_argument(
        "--mode",
        metavar="OCTAL",
        help="permission bits of a file or qcow2 target, e.g. 0640 (default: 0600 for a new "
        "file, the old file's for one replaced with --force; the umask can only take bits "
        "away; block devices keep theirs)",
    )
    p.add_argument(
        "--allow-smaller",
        action="store_true",
        help="accept a device smaller than the volume if it holds every used block",
    )
    p.add_argument(
        "--assume-zeroed",
        action="store_true",
        help="the device already reads zeros: do not zero unused ranges",
    )
    p.add_argument(
        "--target-format",
        choices=("raw", "qcow2"),
        default="raw",
        help="write the target as raw (default) or qcow2",
    )
    p.add_argument(
        "--layout",
        choices=("volume", "physical"),
        default="volume",
        help="physical: write the LV back onto its PVs (TARGET and each --pv) at the "
        "offsets the archive's physical map records (needs --force)",
    )
    p.add_argument(
        "--pv",
        action="append",
        default=[],
        metavar="PATH",
        help="with --layout physical: a further physical volume; repeat",
    )
    p.add_argument(
        "--apply",
        action="store_true",
        help="the target holds the incremental's base state: change it in place to the "
        "incremental's (needs --force; reads the archive in one pass, also from '-' or tape; "
        "without the base archive the whole target is hashed against the state it records)",
    )
    p.add_argument(
        "--verify-target",
        choices=("sample", "full"),
        default="sample",
        help="with --apply: hash a sample (default) or every hash block of the target against "
        "the base before writing",
    )
    add_search_option(p)
    p.add_argument("--catalog", metavar="PATH", help="catalog for archive ids")
    p.add_argument(
        "--volume",
        metavar="PATH",
        help="instead of ARCHIVE: the catalogued backup of this volume made at or before --at",
    )
    p.add_argument(
        "--at",
        metavar="TIME",
        default="now",
        help="with --volume: ISO 8601 time (local unless a zone is given; a bare date "
        "is the end of that day), 'now' (default) or @SECONDS",
    )
    add_open_options(p)
    add_medium_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def resolve_archive(text: str, catalog: str | None) -> tuple[str, str | None]:
    """A path or URL as given (no id to check); otherwise a catalog id (or unique id prefix):
    its recorded URL and the id the archive there must have."""
    from volpack.media import scheme_of

    if text == "-" or scheme_of(text) != "file" or os.path.exists(text):
        return text, None
    from volpack.catalog import locate_archive_ref

    found = locate_archive_ref(text, catalog)
    return (text, None) if found is None else (found.url, found.uuid)


def run(args: argparse.Namespace) -> int:
    from volpack.pipeline.restore import restore, restore_physical

    apply_medium_options(args)
    expect: str | None  # the archive id the location must hold (restore by id or by time)
    if args.volume is not None:
        if args.archive is not None:
            raise UsageError("restore: give either ARCHIVE or --volume, not both")
        from volpack.catalog import locate_volume_at

        found = locate_volume_at(args.volume, args.at, args.catalog)
        archive, expect = found.url, found.uuid
    elif args.archive is None:
        raise UsageError("restore: give ARCHIVE (path, URL or catalog id) or --volume PATH")
    else:
        archive, expect = resolve_archive(args.archive, args.catalog)
    if args.pv and args.layout != "physical":
        raise UsageError("restore: --pv is only for --layout physical")
    if args.mode is not None and args.layout == "physical":
        raise UsageError(
            "restore: --mode is for files restore creates; --layout physical writes existing "
            "volumes in place, drop --mode"
        )
    if args.apply and (args.layout == "physical" or args.target_format != "raw"):
        raise UsageError(
            "restore: --apply changes a raw file or block device in place; drop --layout / "
            "--target-format"
        )
    progress = Progress(args)
    try:
        if args.apply:
            from volpack.pipeline.apply import apply

            result = apply(
                archive,
                args.target,
                force=args.force,
                verify_target=args.verify_target,
                places=places_from(args),
                progress=progress,
                expect_uuid=expect,
            )
        elif args.layout == "physical":
            result = restore_physical(
                archive,
                (args.target, *args.pv),
                force=args.force,
                progress=progress,
                expect_uuid=expect,
                keyring=keyring_from(args),
            )
        else:
            result = restore(
                archive,
                args.target,
                force=args.force,
                allow_smaller=args.allow_smaller,
                assume_zeroed=args.assume_zeroed,
                target_format=args.target_format,
                mode=None if args.mode is None else parse_mode(args.mode),
                progress=progress,
                expect_uuid=expect,
                places=places_from(args),
                keyring=keyring_from(args),
            )
    finally:
        progress.close()
    emit(
        args,
        dataclasses.asdict(result),
        [
            f"restored archive {result.archive_uuid} to {result.target}",
            f"volume {human(result.volume_size)}, {human(result.used_bytes)} written, "
            f"{result.elapsed:.2f} s, {rate(result.used_bytes, result.elapsed)}",
        ],
    )
    return EXIT_OK
