"""``volpack cleanup URL``: list what interrupted runs left (partial files, S3 multipart uploads)
and remove it; ``--dry-run`` only lists. The work is in ``volpack.cleanup``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from volpack.cli.common import add_medium_options, add_output_options, apply_medium_options, emit
from volpack.errors import EXIT_OK, MediumError
from volpack.units import human, human_duration, parse_duration


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cleanup",
        help="remove what interrupted backups and restores left behind",
        description="List and remove leftovers of interrupted runs. In a directory (or next to "
        "a file path): hidden .NAME.XXXXXXXX.partial files whose writer is provably gone (a "
        "running writer holds a lock on its partial, and those are kept). Under "
        "s3://bucket/prefix: open multipart uploads started longer ago than --older-than. "
        "Archives are never touched.",
    )
    p.add_argument("url", help="directory, archive or image path, or s3://bucket/prefix")
    p.add_argument(
        "--older-than",
        metavar="AGE",
        help="only leftovers at least this old, e.g. 30m, 24h, 7d (S3 default 24h: a younger "
        "upload may belong to a backup still running; files: no default, the lock decides)",
    )
    p.add_argument("--dry-run", action="store_true", help="only list; remove nothing")
    add_medium_options(p, tape=False)
    add_output_options(p, progress=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from volpack.cleanup import FAILED, KEPT, REMOVED, WOULD_REMOVE, cleanup

    age = None if args.older_than is None else parse_duration(args.older_than, "--older-than")
    apply_medium_options(args)
    result = cleanup(args.url, older_than=age, dry_run=args.dry_run)
    lines = []
    for item in result.leftovers:
        size = "" if item.size is None else f" ({human(item.size)})"
        upload = f" upload {item.upload_id}" if item.upload_id else ""
        lines.append(f"{item.action:<12} {item.url}{upload}{size}: {item.reason}")
    if result.dry_run:
        summary = f"{result.count(WOULD_REMOVE)} would be removed"
    else:
        freed = sum(i.size or 0 for i in result.leftovers if i.action == REMOVED)
        summary = f"{result.count(REMOVED)} removed ({human(freed)})"
    limit = "" if result.older_than is None else f", older than {human_duration(result.older_than)}"
    lines.append(
        f"{args.url}: {len(result.leftovers)} leftover(s){limit}; {summary}, "
        f"{result.count(KEPT)} kept"
    )
    emit(args, dataclasses.asdict(result), lines)
    failed = [i for i in result.leftovers if i.action == FAILED]
    if failed:
        raise MediumError(
            f"{args.url}: {len(failed)} leftover(s) could not be removed, first {failed[0].url}: "
            f"{failed[0].reason}; fix that and run cleanup again"
        )
    return EXIT_OK
