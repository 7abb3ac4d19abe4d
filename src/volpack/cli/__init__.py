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
)


def build_parser() -> argparse.ArgumentParser:
    from volpack import __version__

    parser = argparse.ArgumentParser(
        prog="volpack",
        description="Block-level backup of volumes: only used blocks, self-describing archives.",
    )
    parser.add_argument("--version", action="version", version=f"volpack {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        importlib.import_module(f"volpack.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
