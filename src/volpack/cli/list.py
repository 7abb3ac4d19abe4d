"""``volpack list``: the catalogued archives, oldest first, as a table or JSON.

Only argument handling and output; the query is ``volpack.catalog.Catalog.find``. A missing or
unreadable catalog is an error (exit 9), never an empty list.
"""

from __future__ import annotations

import argparse
from typing import Any

from volpack.cli.catalog import (
    add_catalog_option,
    local_time,
    print_json,
    superseded_note,
    verify_word,
)
from volpack.errors import EXIT_OK
from volpack.units import human


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list the archives in the catalog",
        description="List the catalogued archives, oldest first. An archive whose location "
        "was written over by a later one (backup --force) is shown as superseded: it is on no "
        "medium any more; prune forgets it.",
    )
    parser.add_argument("--source", metavar="S", help="only archives of this volume (its path)")
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    add_catalog_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from volpack.catalog import Catalog, recorded_source
    from volpack.catalog.record import catalog_path

    with Catalog.open(catalog_path(args.catalog), create=False) as catalog:
        source = recorded_source(catalog, args.source) if args.source else None
        entries = catalog.find(source=source)
    if args.json:
        print_json([e.to_json() for e in entries])
        return EXIT_OK
    rows = [("ID", "CREATED", "SOURCE", "SIZE", "USED", "ARCHIVE", "VERIFIED", "LOCATION")]
    for e in entries:
        where = e.urls[0] if e.urls else "-"
        if len(e.urls) > 1:
            where += f" (+{len(e.urls) - 1})"
        if e.is_superseded:
            where = f"- ({superseded_note(e)})"
        rows.append(
            (
                e.uuid[:8],
                local_time(e.created),
                e.source_path,
                human(e.volume_size),
                human(min(e.used_blocks * e.block_size, e.volume_size)),
                human(e.archive_size) if e.archive_size is not None else "-",
                verify_word(e),
                where,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    print(f"{len(entries)} archives")
    return EXIT_OK
