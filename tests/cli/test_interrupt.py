"""SIGINT, SIGTERM and SIGHUP: one line and exit 130, 143 or 129, whatever the code held.

A SIGINT can land after a constructor opened a socket and before its caller bound the object;
the object then goes when the CLI drops the traceback. Under ``-W error`` (as in these tests)
that used to print "Exception ignored ... ResourceWarning" with a traceback after the one line.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import warnings

import pytest

from volpack import cli
from volpack.errors import EXIT_INTERRUPTED


def as_the_verb(monkeypatch, verb) -> None:
    """Make ``cli.main`` run ``verb`` whatever its arguments (the parser is bypassed)."""

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(func=verb)

    monkeypatch.setattr(cli, "build_parser", lambda argv: Parser())


def test_an_interrupt_that_drops_an_open_socket_prints_one_line(monkeypatch, capsys):
    def verb(args: argparse.Namespace) -> int:
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # noqa: F841 (held by the frame)
        raise KeyboardInterrupt

    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    as_the_verb(monkeypatch, verb)
    filters = list(warnings.filters)
    code = cli.main(["backup"])
    assert code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "volpack: interrupted\n"
    assert unraisable == []
    assert warnings.filters == filters  # the CLI's own calls in a process change no filter


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")],
    ids=["SIGTERM", "SIGHUP"],
)
def test_sigterm_and_sighup_run_the_interrupt_cleanup(monkeypatch, capsys, sig, code, line):
    """The handler is volpack's only while a verb runs; the caller's comes back after."""
    cleaned: list[bool] = []

    def verb(args: argparse.Namespace) -> int:
        try:
            os.kill(os.getpid(), sig)
            for _ in range(1000):  # the handler runs between these bytecodes
                time.sleep(0.001)
            return 0
        finally:
            cleaned.append(True)

    as_the_verb(monkeypatch, verb)
    # A suite run under nohup ignores SIGHUP, and volpack leaves an ignored SIGHUP ignored.
    outer = signal.signal(sig, signal.SIG_DFL)
    try:
        assert cli.main(["backup"]) == code
        assert signal.getsignal(sig) == signal.SIG_DFL
    finally:
        signal.signal(sig, outer)
    assert cleaned == [True]
    assert capsys.readouterr().err == f"volpack: terminated ({line})\n"


def test_a_sighup_ignored_by_nohup_stays_ignored(monkeypatch):
    seen: list[object] = []

    def verb(args: argparse.Namespace) -> int:
        seen.append(signal.getsignal(signal.SIGHUP))
        return 0

    as_the_verb(monkeypatch, verb)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert cli.main(["backup"]) == 0
        assert seen == [signal.SIG_IGN]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
