"""``volpack merge ARCHIVE OUT``: an incremental's chain into one archive, without the source."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from volpack.cli.common import (
    Progress,
    add_medium_options,
    add_output_options,
    add_search_option,
    apply_medium_options,
    emit,
    places_from,
)
from volpack.cli.keys import add_open_options, merge_seal_keys
from volpack.errors import EXIT_OK
from volpack.units import human, parse_mode


def register(sub: Any) -> None:
    p = sub.add_parser(
        "merge",
        help="merge an incremental's chain into a full (or onto one of its bases)",
        description="Write one archive holding the state an incremental's chain leaves: a "
        "synthetic full, or with --onto one incremental on that base. Every block comes from the "
        "newest archive holding it; the source is not read. The result is committed only when "
        "its block hash table equals the incremental's.",
    )
    p.add_argument("archive", help="the newest archive of the chain (path or URL)")
    p.add_argument("output", help="the new archive (path, '-' or URL)")
    p.add_argument(
        "--onto",
        metavar="UUID|PATH",
        help="merge only the links newer than this base: the result is an incremental on it",
    )
    p.add_argument(
        "--compress",
        default="zstd:1",
        metavar="none|zstd[:LEVEL]",
        help="frame compression of the new archive (default zstd:1)",
    )
    p.add_argument("--threads", type=int, default=2, help="threads compressing frames")
    p.add_argument("--force", action="store_true", help="replace an existing output archive")
    p.add_argument("--mode", metavar="OCTAL", help="permission bits of a new archive file")
    add_search_option(p)
    p.add_argument("--catalog", metavar="PATH", help="catalog to look up bases and record in")
    p.add_argument("--no-catalog", action="store_true", help="do not record the new archive")
    add_open_options(p)
    p.add_argument(
        "--recipient",
        action="append",
        default=[],
        metavar="AGE1…",
        help="an encrypted chain's merge is sealed to these recipients and to the passphrase "
        "and key files given (repeatable)",
    )
    add_medium_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from volpack.pipeline.merge import merge

    apply_medium_options(args)
    progress = Progress(args)
    try:
        result = merge(
            args.archive,
            args.output,
            onto=args.onto,
            compress=args.compress,
            force=args.force,
            mode=None if args.mode is None else parse_mode(args.mode),
            threads=args.threads,
            places=places_from(args),
            progress=progress,
            encrypt=merge_seal_keys(args),
        )
    finally:
        progress.close()
    if not args.no_catalog and args.output != "-":
        from volpack.catalog import record_archive

        record_archive(result.url, args.catalog)
    lines = [
        f"archive {result.archive_uuid} -> {result.url}",
        f"{result.level} from {len(result.merged)} archives"
        + (f" onto {result.base_uuid}" if result.base_uuid else "")
        + f": volume {human(result.volume_size)}, {human(result.used_bytes)} data, archive "
        f"{human(result.archive_size)}, {result.elapsed:.2f} s",
    ]
    emit(args, dataclasses.asdict(result), lines, to_stderr=args.output == "-")
    return EXIT_OK
