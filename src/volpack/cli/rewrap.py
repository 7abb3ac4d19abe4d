"""``volpack rewrap OLD NEW``: the same sealed archive with new key slots (frames copied as they
are). Only argument handling and output; the work is ``volpack.pipeline.rewrap``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from volpack.cli.common import add_medium_options, add_output_options, apply_medium_options, emit
from volpack.cli.keys import add_seal_options, seal_keys
from volpack.errors import EXIT_OK, UsageError
from volpack.units import human, parse_mode


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rewrap",
        help="give a sealed archive new key slots, without re-encrypting it",
        description="Write NEW: the sealed archive OLD with its key slots replaced by one per new "
        "key (--recipient, --passphrase, --passphrase-file, --key-file) and a new header MAC. "
        "Frames, tables and the hash table are copied as they are: the data key stays, so a key "
        "that could open OLD and kept a copy of the data key is not locked out. Slots of kinds "
        "this volpack does not know are kept. The old keys (-i/--identity, --old-key-file, "
        "--old-passphrase-file) must open OLD; nothing is written otherwise.",
    )
    p.add_argument("archive", metavar="OLD", help="the sealed archive (path or URL)")
    p.add_argument("output", metavar="NEW", help="the rewrapped archive (path, '-' or URL)")
    old = p.add_argument_group("keys that open OLD")
    old.add_argument(
        "-i",
        "--identity",
        action="append",
        default=[],
        metavar="FILE",
        help="an age identity file; '-' for stdin (repeatable)",
    )
    old.add_argument(
        "--old-key-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a key file of exactly 32 bytes (repeatable)",
    )
    old.add_argument(
        "--old-passphrase-file", metavar="FILE", help="a passphrase, first line of FILE"
    )
    add_seal_options(p)
    p.add_argument("--force", action="store_true", help="replace an existing NEW")
    p.add_argument("--mode", metavar="OCTAL", help="permission bits of a new archive file")
    p.add_argument("--catalog", metavar="PATH", help="catalog file (default: the user's catalog)")
    p.add_argument("--no-catalog", action="store_true", help="do not record NEW")
    add_medium_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from volpack.cli.keys import open_keys
    from volpack.format.keyring import Keyring
    from volpack.pipeline.rewrap import rewrap

    apply_medium_options(args)
    if args.cipher is not None:
        raise UsageError(
            "rewrap: --cipher cannot change: the records stay sealed as they are; drop --cipher"
        )
    if not (args.identity or args.old_key_file or args.old_passphrase_file):
        raise UsageError(
            "rewrap: no key to open OLD; add -i/--identity FILE, --old-key-file FILE or "
            "--old-passphrase-file FILE"
        )
    new = seal_keys(args)
    if new is None:
        raise UsageError(
            "rewrap: no new key; add --recipient age1…, --passphrase, --passphrase-file FILE "
            "or --key-file FILE"
        )
    old_args = argparse.Namespace(
        identity=args.identity,
        passphrase=False,
        passphrase_file=args.old_passphrase_file,
        key_file=args.old_key_file,
    )
    result = rewrap(
        args.archive,
        args.output,
        keyring=Keyring(lambda: open_keys(old_args), expect_sealed=True),
        encrypt=new,
        force=args.force,
        mode=None if args.mode is None else parse_mode(args.mode),
    )
    if not args.no_catalog and args.output != "-":
        from volpack.catalog import record_after_rewrap

        record_after_rewrap(result.url, result.old_digest, args.catalog)
    lines = [
        f"archive {result.archive_uuid} -> {result.url}",
        f"{len(result.key_slots)} key slots ({result.kept_unknown} of unknown kinds kept), "
        f"archive {human(result.archive_size)}, {result.elapsed:.2f} s",
    ]
    emit(args, dataclasses.asdict(result), lines, to_stderr=args.output == "-")
    return EXIT_OK
