"""``volpack mount ARCHIVE MOUNTPOINT``: the archive's volume as one read-only file, via FUSE.

Runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or SIGINT/SIGTERM; run it
in the background with ``&`` or a service manager. No filesystem logic here (volpack.serve.fuse).
"""

from __future__ import annotations

import argparse
import os
import sys

from volpack.cli.common import (
    add_medium_options,
    add_search_option,
    apply_medium_options,
    places_from,
    size_arg,
)
from volpack.cli.keys import add_open_options
from volpack.errors import EXIT_OK
from volpack.serve.fuse import DEFAULT_FILE_NAME, mount
from volpack.units import human


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mount",
        help="expose an archive's volume as a read-only file through FUSE",
        description=(
            "Mount ARCHIVE read-only on MOUNTPOINT as a single file holding the volume (unused "
            "blocks read as zeros). Loop-mount that file to browse the backed-up filesystem: "
            "losetup -r -f --show MOUNTPOINT/volume.img; mount -o ro /dev/loopN /mnt. Stays in the "
            "foreground until unmounted or interrupted."
        ),
    )
    parser.add_argument("archive", metavar="ARCHIVE", help="archive path or URL")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    parser.add_argument(
        "--file-name",
        default=DEFAULT_FILE_NAME,
        metavar="NAME",
        help=f"name of the volume file (default {DEFAULT_FILE_NAME})",
    )
    parser.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the file (needs user_allow_other in /etc/fuse.conf)",
    )
    parser.add_argument(
        "--cache-size",
        type=size_arg("--cache-size"),
        default="64M",
        metavar="SIZE",
        help="decoded frames kept in memory, in bytes (K/M/G suffixes; default 64M, at least one frame)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log FUSE requests")
    add_search_option(parser)
    parser.add_argument(
        "--catalog", metavar="PATH", help="catalog where bases of an incremental are looked up"
    )
    add_open_options(parser)
    add_medium_options(parser, tape=False)
    parser.set_defaults(func=run, own_signals=True)  # stops on SIGTERM itself


def run(args: argparse.Namespace) -> int:
    apply_medium_options(args)
    from volpack.pipeline.chain import open_chain

    cache = args.cache_size
    with open_chain(args.archive, places_from(args), cache_bytes=cache) as archive:
        path = os.path.join(args.mountpoint, args.file_name)
        if not args.quiet:
            print(
                f"volpack: mounting {args.archive} ({human(archive.size)}) as {path}; "
                f"stop with Ctrl-C or fusermount3 -u {args.mountpoint}",
                file=sys.stderr,
                flush=True,
            )
        mount(
            archive,
            args.mountpoint,
            file_name=args.file_name,
            allow_other=args.allow_other,
            debug=args.verbose,
        )
    return EXIT_OK
