"""``volpack catalog rebuild URL``: refill the catalog from the archives on a medium.

Also holds the small printing helpers shared by ``list``, ``show`` and ``prune``. Only argument
handling and output; the work is in ``volpack.catalog``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from volpack.cli.common import add_medium_options, apply_medium_options
from volpack.errors import EXIT_OK, EXIT_WARNING


def add_catalog_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        metavar="PATH",
        help="catalog file (default: $VOLPACK_CATALOG, else "
        "$XDG_DATA_HOME/volpack/catalog.sqlite or ~/.local/share/volpack/catalog.sqlite)",
    )


def local_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def verify_word(entry: Any) -> str:
    if entry.verify_ok is None:
        return "-"
    return "ok" if entry.verify_ok else "FAILED"


def superseded_note(entry: Any) -> str:
    """Where and by which archive an archive was written over (list, show, prune)."""
    s = entry.superseded[0]
    more = f" (+{len(entry.superseded) - 1})" if len(entry.superseded) > 1 else ""
    return f"superseded: {s.url} overwritten by {s.by[:8]} at {local_time(s.at)}{more}"


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "catalog",
        help="maintain the catalog of backups",
        description="Maintain the catalog of backups.",
    )
    sub = parser.add_subparsers(dest="catalog_verb", metavar="ACTION", required=True)
    rebuild = sub.add_parser(
        "rebuild",
        help="record every archive found on a medium",
        description="Record every archive under URL (a directory, an archive file, or an "
        "s3://bucket/prefix) by reading only its header and trailer. Existing records are "
        "updated; their verify status is kept.",
    )
    rebuild.add_argument("url", metavar="URL", help="directory, archive or s3://bucket/prefix")
    add_catalog_option(rebuild)
    rebuild.add_argument("--json", action="store_true", help="print the result as JSON")
    add_medium_options(rebuild, tape=False)
    rebuild.set_defaults(func=run_rebuild)


def run_rebuild(args: argparse.Namespace) -> int:
    apply_medium_options(args)
    from volpack.catalog import Catalog
    from volpack.catalog.rebuild import rebuild
    from volpack.catalog.record import catalog_path

    path = catalog_path(args.catalog)
    with Catalog.open(path) as catalog:
        result = rebuild(catalog, args.url)
    if args.json:
        print_json(
            {
                "catalog": path,
                "recorded": list(result.recorded),
                "ignored": list(result.ignored),
                "failed": [{"url": u, "error": e} for u, e in result.failed],
            }
        )
    else:
        print(f"recorded {len(result.recorded)} archives from {args.url} in {path}")
        if result.ignored:
            print(f"ignored {len(result.ignored)} files that are not volpack archives")
        for url, error in result.failed:
            print(f"failed: {url}: {error}")
    return EXIT_WARNING if result.failed else EXIT_OK
