"""``volpack verify ARCHIVE [--against VOLUME]``: the exit code is the verdict."""

from __future__ import annotations

import argparse
import dataclasses
import logging
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
from volpack.cli.keys import add_open_options, optional_keyring
from volpack.errors import EXIT_OK, VolpackError

log = logging.getLogger("volpack")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check every frame, count, the block hash table and the digest of an archive",
        description="Read the whole archive and check every checksum, count, the block hash "
        "table (recomputed from the data) and the digest. With --against, also compare a "
        "volume with it.",
    )
    p.add_argument("archive", help="archive path, '-' for stdin, or a URL")
    p.add_argument(
        "--against",
        metavar="VOLUME",
        help="compare this volume (original or restored) with the archive",
    )
    p.add_argument(
        "--source-format",
        default="auto",
        metavar="auto|raw|qcow2|lvm",
        help="format of the --against volume (default: detect)",
    )
    p.add_argument(
        "--pv",
        action="append",
        default=[],
        metavar="PATH",
        help="an LVM physical volume for --against lvm:VG/LV; repeat",
    )
    p.add_argument(
        "--chain",
        action="store_true",
        help="for an incremental: verify every base down to the full too, each link and the "
        "state each archive leaves",
    )
    add_search_option(p)
    p.add_argument("--catalog", metavar="PATH", help="catalog to record the verdict in")
    add_open_options(p)
    add_medium_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from volpack.catalog import record_after_verify
    from volpack.pipeline.verify import verify

    apply_medium_options(args)
    progress = Progress(args)
    try:
        result = verify(
            args.archive,
            against=args.against,
            source_format=args.source_format,
            pvs=tuple(args.pv),
            progress=progress,
            chain=args.chain,
            places=places_from(args),
            keyring=optional_keyring(args),
        )
    except VolpackError as exc:
        uuid = getattr(exc, "archive_uuid", None)
        if uuid:
            record_after_verify(uuid, False, args.catalog)
        raise
    finally:
        progress.close()
    if not result.authenticated:
        # Only the media were checked: the catalog keeps its verdict for a keyed verify.
        emit(
            args,
            dataclasses.asdict(result),
            [
                f"archive {result.archive_uuid} media ok: {result.frame_count} frames, "
                f"{result.archive_size} bytes, digest blake3:{result.digest}",
                "encrypted and no key given: the checksums of the sealed bytes, the table "
                "copies, the frame index and the digest were checked, the contents were not "
                "authenticated; give --identity, --passphrase-file or --key-file to check them",
            ],
        )
        return EXIT_OK
    for uuid, _ in result.chain or ((result.archive_uuid, args.archive),):
        record_after_verify(uuid, True, args.catalog)
    lines = [
        f"archive {result.archive_uuid} ok: {result.frame_count} frames, "
        f"{result.archive_size} bytes, digest blake3:{result.digest}"
    ]
    if result.encrypted:
        lines.append("encrypted: every record authenticated with the key given")
    if result.chain:
        lines.append(
            f"chain ok: {len(result.chain)} archives, every link and state checked: "
            + " <- ".join(url for _, url in result.chain)
        )
    elif result.level == "incremental":
        lines.append("incremental: its bases were not read; 'volpack verify --chain' checks them")
    if result.against and result.unused_nonzero_blocks:
        first = ", ".join(f"[{a}, {b})" for a, b in result.unused_nonzero[:5])
        log.info(
            "%s: %d block(s) the archive holds as unused (free in the filesystem) are not zero, "
            "first %s: deleted or stale data, not compared",
            result.against,
            result.unused_nonzero_blocks,
            first,
        )
        lines.append(f"{result.against}: every used block equals the archive's volume")
    elif result.against:
        lines.append(f"{result.against}: identical to the archive's volume")
    emit(args, dataclasses.asdict(result), lines)
    return EXIT_OK
