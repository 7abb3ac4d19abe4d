"""The ``volpack`` console script: argparse front end, one module per verb.

It parses arguments, calls the library, prints results (stdout) and logs (stderr), and turns
VolpackError into one line and its exit code. Logic a library user would need lives elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from volpack.errors import EXIT_INTERRUPTED, VolpackError

# Verb modules under volpack.cli, in help order. Each has register(subparsers) -> None, which
# sets ``func`` (args -> exit code) on its parser.
VERBS = (
    "backup",
    "restore",
    "verify",
    "info",
    "map",
    "serve",
    "mount",
    "list",
    "show",
    "prune",
    "catalog",
    "cleanup",
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when ``argv`` names a verb, only that verb's module is imported (start-up
    time counts in every backup: the other verbs would pull in NBD, FUSE and catalog code)."""
    from volpack import __version__

    parser = argparse.ArgumentParser(
        prog="volpack",
        description="Block-level backup of volumes: only used blocks, self-describing archives.",
    )
    parser.add_argument("--version", action="version", version=f"volpack {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    chosen = words[:1] if words and words[0] in VERBS else VERBS
    for verb in chosen:
        importlib.import_module(f"volpack.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    logging.basicConfig(level=level, format="volpack: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except VolpackError as exc:
        print(f"volpack: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("volpack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `volpack map … | head`).
        sys.stderr.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())
