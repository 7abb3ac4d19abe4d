"""``volpack show ID``: everything the catalog knows about one archive (unique id prefix).

Only argument handling and output; the lookup is ``volpack.catalog.Catalog.get``.
"""

from __future__ import annotations

import argparse
from typing import Any

from volpack.cli.catalog import add_catalog_option, local_time, print_json, verify_word
from volpack.errors import EXIT_OK
from volpack.units import human


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "show",
        help="show one catalogued archive",
        description="Show what the catalog records about one archive.",
    )
    parser.add_argument("id", metavar="ID", help="archive uuid or a unique prefix of it")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    add_catalog_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from volpack.catalog import Catalog
    from volpack.catalog.record import catalog_path

    with Catalog.open(catalog_path(args.catalog), create=False) as catalog:
        e = catalog.get(args.id)
    if args.json:
        print_json(e.to_json())
        return EXIT_OK
    used = min(e.used_blocks * e.block_size, e.volume_size)  # the last block may be partial
    lines = [
        ("archive", e.uuid),
        ("created", f"{local_time(e.created)} ({e.to_json()['created_iso']})"),
        ("source", f"{e.source_path} ({e.source_kind})"),
        ("filesystem uuid", e.fs_uuid or "-"),
        ("volume size", f"{e.volume_size} bytes ({human(e.volume_size)})"),
        ("block size", str(e.block_size)),
        ("used", f"{e.used_blocks} blocks ({human(used)})"),
        ("archive size", "-" if e.archive_size is None else f"{e.archive_size} bytes"),
        ("format", e.format_version),
        ("kind", _kind(e)),
        ("chain", f"{e.chain_id or '-'} seq {'?' if e.chain_seq is None else e.chain_seq}"),
        ("encrypted", _encrypted(e)),
        ("digest", e.digest or "-"),
        ("verified", f"{verify_word(e)} at {local_time(e.verified_at)}" if e.verified_at else "-"),
        ("recorded", local_time(e.recorded_at)),
    ]
    if e.base_uuid:
        lines.append(("base", f"{e.base_uuid} (digest {e.base_digest or '?'})"))
    lines += [("key slot", fp) for fp in e.key_slots or ()]
    lines += [("location", url) for url in e.urls]
    lines += [
        ("superseded", f"{s.url} overwritten by {s.by} at {local_time(s.at)}") for s in e.superseded
    ]
    if not e.urls and not e.superseded:
        lines.append(("location", "- (written to a stream)"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return EXIT_OK


def _kind(e: Any) -> str:
    if e.kind is None:
        return "not known (recorded before the catalog knew chains; run 'volpack catalog rebuild')"
    return str(e.kind)


def _encrypted(e: Any) -> str:
    if e.encrypted is None:
        return "not known (recorded before the catalog kept it; run 'volpack catalog rebuild')"
    if not e.encrypted:
        return "no"
    return f"yes, {len(e.key_slots or ())} key slot(s)"
