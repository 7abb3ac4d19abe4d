"""``volpack serve ARCHIVE…``: export archives over NBD, read-only, until SIGINT/SIGTERM.

Parses options, opens the archives through the random-access reader and runs the server from
volpack.serve; prints the nbd:// URLs on stderr. No protocol logic here.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from contextlib import ExitStack
from pathlib import PurePosixPath

from volpack.cli.common import (
    add_medium_options,
    add_search_option,
    apply_medium_options,
    places_from,
    size_arg,
)
from volpack.cli.keys import add_open_options
from volpack.errors import EXIT_OK, UsageError
from volpack.serve.allocator import use_one_malloc_arena
from volpack.serve.export import Export
from volpack.serve.nbd_server import (
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_PORT,
    DEFAULT_REPLY_BUDGET,
    NbdServer,
)
from volpack.units import human

log = logging.getLogger("volpack")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="export archives read-only over NBD (nbdcopy, qemu-img, nbdfuse, nbd-client)",
        description=(
            "Serve each ARCHIVE as a named, read-only NBD export without restoring it. Unused "
            "blocks read as zeros and are reported as holes (base:allocation). Runs until "
            "interrupted (SIGINT/SIGTERM)."
        ),
    )
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE", help="archive path or URL")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"TCP address to listen on (default 127.0.0.1:{DEFAULT_PORT}; [::1]:PORT for IPv6)",
    )
    where.add_argument("--socket", metavar="PATH", help="listen on a Unix socket instead of TCP")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="export name for the archive in the same position (default: the archive's file stem)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="drop clients that have not finished the handshake after this long (default 10)",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=DEFAULT_CLIENT_TIMEOUT,
        metavar="SECONDS",
        help=(
            "drop clients that take none of a reply from their socket for this long "
            f"(default {DEFAULT_CLIENT_TIMEOUT:g}); idle clients between requests are kept"
        ),
    )
    parser.add_argument(
        "--max-clients", type=int, default=512, metavar="N", help="connections at once (512)"
    )
    parser.add_argument(
        "--reply-budget",
        type=size_arg("--reply-budget"),
        default=f"{DEFAULT_REPLY_BUDGET >> 20}M",
        metavar="SIZE",
        help=(
            "memory that replies being read or waiting for slow clients may hold, all clients "
            f"together (default {DEFAULT_REPLY_BUDGET >> 20}M, at least 1M); clients wait for "
            "their share"
        ),
    )
    parser.add_argument(
        "--cache-size",
        type=size_arg("--cache-size"),
        default="64M",
        metavar="SIZE",
        help="decoded frames kept per archive, in bytes (K/M/G suffixes; default 64M, at least one frame)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    add_search_option(parser)
    parser.add_argument(
        "--catalog", metavar="PATH", help="catalog where bases of an incremental are looked up"
    )
    add_open_options(parser)
    add_medium_options(parser, tape=False)
    parser.set_defaults(func=run, own_signals=True)  # stops on SIGTERM itself


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` (loopback) or ``HOST`` (default port)."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (len(text) > end + 1 and text[end + 1] != ":"):
            raise UsageError(f"--listen '{text}': write IPv6 addresses as [ADDR]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    host = host or "127.0.0.1"
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--listen '{text}': port '{port_text}' is not a number in 0..65535")
    return host, int(port_text)


def export_name(url: str) -> str:
    """The default export name: the last path component without its suffix."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    if ":" in path.split("/", 1)[0]:  # scheme:… → keep what follows the scheme
        path = path.split(":", 1)[1]
    name = PurePosixPath(path).stem or PurePosixPath(path).name
    if not name:
        raise UsageError(f"{url}: cannot derive an export name from it; give one with --name")
    return name


def run(args: argparse.Namespace) -> int:
    # Before any thread exists: glibc fixes its arena limit when the first thread allocates.
    use_one_malloc_arena()
    apply_medium_options(args)
    from volpack.pipeline.chain import open_chain

    places = places_from(args)

    if len(args.name) > len(args.archives):
        raise UsageError(
            f"--name given {len(args.name)} times for {len(args.archives)} archives; "
            "give at most one name per archive"
        )
    cache = args.cache_size
    if args.handshake_timeout <= 0 or args.max_clients < 1:
        raise UsageError("--handshake-timeout and --max-clients must be positive numbers")
    if not 0 < args.client_timeout < float("inf"):
        raise UsageError(
            f"--client-timeout {args.client_timeout:g}: give a positive number of seconds"
        )
    budget = args.reply_budget
    if budget < 1 << 20:
        raise UsageError(
            f"--reply-budget {budget}: {budget} bytes is under the 1 MiB minimum; give at least 1M"
        )
    names = list(args.name) + [export_name(u) for u in args.archives[len(args.name) :]]
    with ExitStack() as stack:
        exports = []
        for url, name in zip(args.archives, names, strict=True):
            archive = open_chain(url, places, cache_bytes=cache)
            stack.callback(archive.close)
            desc = f"volpack archive {archive.uuid} of {url} ({human(archive.size)})"
            exports.append(Export.of(name, archive, desc))
        if args.socket:
            server = NbdServer(
                exports,
                socket_path=args.socket,
                handshake_timeout=args.handshake_timeout,
                max_clients=args.max_clients,
                client_timeout=args.client_timeout,
                reply_budget=budget,
            )
        else:
            host, port = parse_listen(args.listen)
            server = NbdServer(
                exports,
                host=host,
                port=port,
                handshake_timeout=args.handshake_timeout,
                max_clients=args.max_clients,
                client_timeout=args.client_timeout,
                reply_budget=budget,
            )
        stack.enter_context(server)
        for url, export in zip(server.urls(), exports, strict=True):
            print(f"volpack: serving {url}  ({human(export.size)})", file=sys.stderr, flush=True)
        if server.default is not None:
            print('volpack: the empty export name "" reaches it too', file=sys.stderr, flush=True)

        def stop(signum: int, _frame: object) -> None:
            log.info("%s: stopping", signal.Signals(signum).name)
            server.shutdown()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.serve_forever()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return EXIT_OK
