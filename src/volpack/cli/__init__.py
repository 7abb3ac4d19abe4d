"""The ``volpack`` console script: argparse front end, one module per verb.

It parses arguments, calls the library, prints results (stdout) and logs (stderr), and turns
VolpackError into one line and its exit code. Logic a library user would need lives elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any, NoReturn

from volpack.errors import (
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_WARNING,
    VolpackError,
)

# Verb modules under volpack.cli, in help order. Each has register(subparsers) -> None, which
# sets ``func`` (args -> exit code) on its parser.
VERBS = (
    "backup",
    "restore",
    "verify",
    "merge",
    "rewrap",
    "info",
    "map",
    "serve",
    "mount",
    "list",
    "show",
    "prune",
    "catalog",
    "cleanup",
    "key",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a service manager stopping a job) or SIGHUP (the SSH
    session or terminal went away), raised where SIGINT raises KeyboardInterrupt so that the
    same cleanup runs: no partial archive, no S3 upload left open, QEMU's fleecing and bitmaps
    undone. Python's default would end the process at once and leave all of that behind."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Handled while a verb runs. SIGHUP only where it is not ignored: `nohup volpack …` means it.
_ENDING = (signal.SIGTERM, signal.SIGHUP)


def _terminate(signum: int, frame: object) -> NoReturn:
    # A second signal while the first one's cleanup runs must not cut it short (SIGKILL does).
    for s in _ENDING:
        if signal.getsignal(s) is _terminate:
            signal.signal(s, signal.SIG_IGN)
    raise Terminated(signum)


class Parser(argparse.ArgumentParser):
    """argparse with volpack's error shape: one ``volpack: error:`` line, a pointer to the
    verb's --help, exit 2 (argparse's default prints the whole usage first)."""

    verb = ""  # on the top-level parser, build_parser sets the verb that was given

    def error(self, message: str) -> NoReturn:
        verb = self.prog.removeprefix("volpack").strip() or self.verb
        subject, hint = (f"{verb}: ", f"volpack {verb} --help") if verb else ("", "volpack --help")
        self.exit(EXIT_USAGE, f"volpack: error: {subject}{message}\nvolpack: see '{hint}'\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when ``argv`` names a verb, only that verb's module is imported (start-up
    time counts in every backup: the other verbs would pull in NBD, FUSE and catalog code)."""
    from volpack import __version__

    parser = Parser(
        prog="volpack",
        description="Block-level backup of volumes: only used blocks, self-describing archives.",
    )
    parser.add_argument("--version", action="version", version=f"volpack {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    given = sys.argv[1:] if argv is None else argv
    words = [a for a in given if not a.startswith("-")]
    chosen: tuple[str, ...] | list[str] = words[:1] if words and words[0] in VERBS else VERBS
    if not words and "--version" in given and not {"-h", "--help"} & set(given):
        # Printing the version needs no verb; registering all of them would import numpy, the
        # NBD server and the catalog (~0.15 s) to print one line.
        chosen = ()
    for verb in chosen:
        importlib.import_module(f"volpack.cli.{verb}").register(sub)
    if len(chosen) == 1:
        parser.verb = chosen[0]  # "unrecognized arguments" comes from the top-level parser
    return parser


class _LogFormat(logging.Formatter):
    """``volpack: MESSAGE`` for progress notes, ``volpack: warning: MESSAGE`` for warnings, so a
    warning reads the same from every verb (`map` prints its own the same way)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "volpack: warning: " if record.levelno >= logging.WARNING else "volpack: "
        return prefix + record.getMessage()


class _WarningCount(logging.Handler):
    """Counts the warnings a logger gives while a verb runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def main(argv: list[str] | None = None) -> int:
    # Before numpy is imported: its huge-page hint on large arrays makes resident memory depend
    # on what the kernel has free (a 2 MiB page counts whole), and volpack's bound is on what it
    # needs. A user's own setting wins.
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    # numpy holds volpack's tables and never multiplies matrices, but importing it starts
    # OpenBLAS's worker threads, which spin a while on the cores the pipeline needs (1-3 % of a
    # backup's CPU in perf): one job a process needs no BLAS threads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from volpack.cli import results

    parser = build_parser(argv)
    try:
        # Option types (sizes) raise UsageError, which argparse lets through: one line, exit 2.
        args = parser.parse_args(argv)
    except VolpackError as exc:
        print(f"volpack: error: {exc}", file=sys.stderr)
        return exc.exit_code
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat())
    logging.basicConfig(level=level, handlers=[handler])
    # A reader of the results that stops early (`volpack list | head`) is not an error: the
    # rest of the results is dropped and the verb's own exit code stands (README "Exit codes").
    guard = results.install()
    # A chain passed over a damaged base for its stand-in: the result is right, but the
    # damage must show in the exit code of a nightly job, not only in its log.
    warned = _WarningCount()
    logging.getLogger("volpack.chain").addHandler(warned)
    # serve and mount stop on SIGTERM their own way (libfuse installs its handler only where
    # none is set), so they are left to it.
    previous: dict[signal.Signals, Any] = {}
    if (
        not getattr(args, "own_signals", False)
        and threading.current_thread() is threading.main_thread()
    ):
        for sig in _ENDING:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _terminate)
    try:
        code = int(args.func(args))
        return EXIT_WARNING if code == EXIT_OK and warned.count else code
    except VolpackError as exc:
        print(f"volpack: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # A SIGINT can land between a constructor's return and its caller binding the result:
        # the object then goes with its socket open when the traceback's frames go. The kernel
        # closes it as the process ends, and what lives outside (QEMU exports, partial
        # archives) its owners' cleanup undid, so the frames go here, without ResourceWarnings.
        signum: int = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            exc.__traceback__ = None
            del exc
        if signum == signal.SIGINT:
            line, code = "interrupted", EXIT_INTERRUPTED
        else:
            line = f"terminated ({signal.Signals(signum).name})"
            code = EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_HANGUP
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"volpack: {line}", file=sys.stderr)
        return code
    finally:
        for sig, prior in previous.items():
            signal.signal(sig, signal.SIG_DFL if prior is None else prior)
        results.finish(guard)
        logging.getLogger("volpack.chain").removeHandler(warned)


if __name__ == "__main__":
    sys.exit(main())
