"""``volpack prune``: apply a keep-last/daily/weekly/monthly policy per volume and delete the rest.

Prints the plan before anything happens, then lists the media and reads which archive each
location holds (any error aborts with nothing deleted) and deletes through the medium API, one
archive at a time. Only argument handling and output; the work is in ``volpack.catalog.prune``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from volpack.cli.catalog import add_catalog_option, local_time, print_json, superseded_note
from volpack.cli.common import add_medium_options, apply_medium_options
from volpack.errors import EXIT_OK, EXIT_WARNING

log = logging.getLogger("volpack")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="delete archives a retention policy does not keep",
        description="For each volume in the catalog, keep the archives selected by any --keep-* "
        "rule and delete the others from their media. Every base an archive kept needs "
        "(incremental chains) is kept too, and the plan says so; a kept incremental whose base "
        "the catalog does not know, or knows with another digest, stops the prune with nothing "
        "deleted (exit code 11). Days, weeks (ISO, from Monday) and months "
        "are in local time (set TZ to change it). At least one rule is required. A location is "
        "deleted only if the archive read there is the one being removed; records of archives "
        "written over in place (superseded) are forgotten without touching the media. Exit "
        "code 1 when a location was found written over outside this catalog (it is kept).",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="where kept archives need older links only as bases, first write a merged full "
        "beside the newest such base (NAME.merged-ID.vpk), record and check it, then delete the "
        "links it stands in for; any failure deletes nothing",
    )
    for name, what in (
        ("last", "the N newest archives"),
        ("daily", "the newest archive of each of the N newest days that have archives"),
        ("weekly", "the newest archive of each of the N newest ISO weeks that have archives"),
        ("monthly", "the newest archive of each of the N newest months that have archives"),
    ):
        parser.add_argument(f"--keep-{name}", type=int, default=0, metavar="N", help=f"keep {what}")
    parser.add_argument("--source", metavar="S", help="only prune archives of this volume")
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would be deleted, delete nothing"
    )
    parser.add_argument("--json", action="store_true", help="print the plan and outcome as JSON")
    add_catalog_option(parser)
    add_medium_options(parser, tape=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_medium_options(args)
    from volpack.catalog import Catalog, Policy, recorded_source
    from volpack.catalog.prune import check, execute, plan
    from volpack.catalog.record import catalog_path

    policy = Policy(args.keep_last, args.keep_daily, args.keep_weekly, args.keep_monthly)
    policy.check()
    path = catalog_path(args.catalog)
    written: dict[str, Any] = {}
    with Catalog.open(path, create=False) as catalog:
        source = recorded_source(catalog, args.source) if args.source else None
        pplan = plan(catalog, policy, source=source, merge=args.merge)
        if not args.json:
            _print_plan(pplan, args.dry_run)
        outcome = None
        checked = None
        if pplan.remove:
            checked = check(pplan)  # raises, with nothing deleted, if any listing or read fails
        if pplan.merges and checked is not None and not args.dry_run:
            from volpack.catalog.prune_merge import replan, write_merges

            # Merged fulls first: until they are written, recorded and planned around, nothing
            # is deleted.
            from volpack.pipeline.chain import Places
            from volpack.pipeline.merge import merge

            def merge_to(src: str, out: str) -> str:
                return merge(src, out, places=Places(catalog=path)).url

            written = write_merges(catalog, pplan, checked, merge_to)
            for top, entry in written.items():
                log.info("merged the chain of %s into %s (%s)", top, entry.urls[0], entry.uuid)
            pplan = replan(catalog, pplan, written, source=source)
            checked = check(pplan)
        if not args.dry_run and (pplan.remove or pplan.superseded):
            outcome = execute(catalog, pplan, checked)
    spared = outcome.spared if outcome else (checked.spared if checked else ())
    for s in spared:
        log.warning(
            "%s: not deleted: it holds %s now, not archive %s (written over outside this "
            "catalog)%s",
            s.url,
            s.holds,
            s.uuid,
            "" if args.dry_run else f"; {s.uuid[:8]} is forgotten at that location",
        )
    if args.json:
        print_json(
            {
                "dry_run": bool(args.dry_run),
                "keep": [
                    {
                        **e.to_json(),
                        "reasons": list(g.decision.reasons[e.uuid]),
                        "base_of": list(g.base_of.get(e.uuid, ())),
                    }
                    for g in pplan.groups
                    for e in g.keep
                ],
                "remove": [e.to_json() for e in pplan.remove],
                "merges": [
                    {
                        "base": m.top.uuid,
                        "from": m.source_url,
                        "url": m.url,
                        "for": list(m.users),
                        "archive": written[m.top.uuid].uuid if m.top.uuid in written else None,
                    }
                    for m in pplan.merges
                ]
                if not written
                else [
                    {"base": top, "url": e.urls[0], "archive": e.uuid} for top, e in written.items()
                ],
                "superseded": [e.to_json() for e in pplan.superseded],
                "deleted": list(outcome.deleted) if outcome else [],
                "already_gone": list(outcome.already_gone) if outcome else [],
                "forgotten": list(outcome.forgotten) if outcome else [],
                "spared": [{"uuid": s.uuid, "url": s.url, "holds": s.holds} for s in spared],
            }
        )
    elif outcome is not None:
        if written:
            print(f"merged {len(written)} chains into fulls; ", end="")
        print(f"deleted {len(outcome.deleted)} archives", end="")
        if outcome.already_gone:
            print(f"; {len(outcome.already_gone)} were already gone and are forgotten", end="")
        if outcome.forgotten:
            print(f"; {len(outcome.forgotten)} superseded records forgotten", end="")
        print()
    return EXIT_WARNING if spared else EXIT_OK


def _print_plan(pplan: Any, dry_run: bool) -> None:
    verb = "would delete" if dry_run else "delete"
    for group in pplan.groups:
        line = f"{group.source}: keep {len(group.keep)}, {verb} {len(group.remove)}"
        if group.merges:
            line += f", {'would merge' if dry_run else 'merge'} {len(group.merges)} into fulls"
        if group.superseded:
            line += (
                f", {'would forget' if dry_run else 'forget'} {len(group.superseded)} superseded"
            )
        print(line)
        for e in group.keep:
            why = ", ".join(_reason(group, e.uuid, r) for r in group.decision.reasons[e.uuid])
            print(f"  keep    {e.uuid[:8]}  {local_time(e.created)}  ({why})")
        for e in group.remove:
            where = ", ".join(e.urls) or "(no location; forget only)"
            print(f"  {'remove':<7} {e.uuid[:8]}  {local_time(e.created)}  {where}")
        for m in group.merges:
            users = ", ".join(u[:8] for u in m.users)
            print(
                f"  {'would merge' if dry_run else 'merge'} {m.top.uuid[:8]}  "
                f"{local_time(m.top.created)}  into {m.url}  (a full standing in for it as "
                f"base of {users})"
            )
        for e in group.superseded:
            print(f"  forget  {e.uuid[:8]}  {local_time(e.created)}  ({superseded_note(e)})")
    if not pplan.groups:
        print("no archives in the catalog match; nothing to do")


def _reason(group: Any, uuid: str, reason: str) -> str:
    if reason != "base":
        return reason
    users = group.base_of.get(uuid, ())
    return "kept as base of " + ", ".join(u[:8] for u in users)
