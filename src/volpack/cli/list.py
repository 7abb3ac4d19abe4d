"""``volpack list``: the catalogued archives, oldest first, as a table or JSON; with
``--chains`` as incremental chains (each full with the incrementals built on it).

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
        "medium any more; prune forgets it. With --chains, each chain is drawn as a tree "
        "(full -> incremental -> ...) with each archive's kind, sequence number, time, size and "
        "location, and a mark where a base is missing from the catalog.",
    )
    parser.add_argument("--source", metavar="S", help="only archives of this volume (its path)")
    parser.add_argument(
        "--chains",
        action="store_true",
        help="show incremental chains: each full with the incrementals built on it, as a tree",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    add_catalog_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from volpack.catalog import Catalog, recorded_source
    from volpack.catalog.record import catalog_path

    with Catalog.open(catalog_path(args.catalog), create=False) as catalog:
        source = recorded_source(catalog, args.source) if args.source else None
        entries = catalog.find(source=source)
        if args.chains:
            # Bases may be recorded under another source path: index everything, show the chosen.
            everything = catalog.find() if source else entries
    if args.chains:
        return _chains(everything, {e.uuid for e in entries}, args.json)
    if args.json:
        print_json([e.to_json() for e in entries])
        return EXIT_OK
    rows = [
        ("ID", "CREATED", "SOURCE", "SIZE", "USED", "ARCHIVE", "SEALED", "VERIFIED", "LOCATION")
    ]
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
                "?" if e.encrypted is None else ("yes" if e.encrypted else "no"),
                verify_word(e),
                where,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    print(f"{len(entries)} archives")
    return EXIT_OK


# How a base that is not simply there is shown (list --chains).
_MARKS = {
    "missing": "! base {base} not in the catalog",
    "unknown": "? base not known: run 'volpack catalog rebuild URL'",
    "replaced": "! base {base} in the catalog has another digest",
    "superseded": "! base {base} was written over",
    "stand-in": "base {base} stood in for by {by}",
}


def _chains(entries: list[Any], chosen: set[str], as_json: bool) -> int:
    from volpack.catalog.chains import ChainIndex, chain_trees

    trees = [
        rows
        for rows in chain_trees(ChainIndex(entries))
        if any(r.link.entry.uuid in chosen for r in rows)
    ]
    if as_json:
        out = []
        for rows in trees:
            root = rows[0].link.entry
            out.append(
                {
                    "chain_id": root.chain_id,
                    "source_path": root.source_path,
                    "archives": [
                        {
                            **r.link.entry.to_json(),
                            "depth": r.depth,
                            "parent": r.parent,
                            "base_state": r.link.state,
                            "base_found": r.link.base.uuid if r.link.base else None,
                        }
                        for r in rows
                    ],
                }
            )
        print_json(out)
        return EXIT_OK
    for rows in trees:
        root = rows[0].link.entry
        chain = root.chain_id[:8] if root.chain_id else "?"
        print(f"chain {chain}  {root.source_path}  ({len(rows)} archives)")
        table = []
        for r in rows:
            e = r.link.entry
            where = e.urls[0] if e.urls else "-"
            if len(e.urls) > 1:
                where += f" (+{len(e.urls) - 1})"
            if e.is_superseded:
                where = f"- ({superseded_note(e)})"
            mark = _MARKS.get(r.link.state)
            if mark:
                base = (e.base_uuid or "?")[:8]
                by = r.link.base.uuid[:8] if r.link.base else "?"
                where += "  " + mark.format(base=base, by=by)
            indent = "  " * r.depth + ("└─ " if r.depth else "")
            seq = "?" if e.chain_seq is None else str(e.chain_seq)
            table.append(
                (
                    f"  {indent}{e.kind or '?'}",
                    seq,
                    e.uuid[:8],
                    local_time(e.created),
                    human(e.archive_size) if e.archive_size is not None else "-",
                    where,
                )
            )
        widths = [max(len(t[i]) for t in table) for i in range(len(table[0]) - 1)]
        for t in table:
            print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=False)) + "  " + t[-1])
    print(f"{len(trees)} chains, {sum(len(rows) for rows in trees)} archives")
    return EXIT_OK
