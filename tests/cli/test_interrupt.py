"""SIGINT: one line and exit 130, whatever the interrupted code held.

A SIGINT can land after a constructor opened a socket and before its caller bound the object;
the object then goes when the CLI drops the traceback. Under ``-W error`` (as in these tests)
that used to print "Exception ignored ... ResourceWarning" with a traceback after the one line.
"""

from __future__ import annotations

import argparse
import socket
import sys
import warnings

from volpack import cli
from volpack.errors import EXIT_INTERRUPTED


def test_an_interrupt_that_drops_an_open_socket_prints_one_line(monkeypatch, capsys):
    def verb(args: argparse.Namespace) -> int:
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # noqa: F841 (held by the frame)
        raise KeyboardInterrupt

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(func=verb)

    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(cli, "build_parser", lambda argv: Parser())
    filters = list(warnings.filters)
    code = cli.main(["backup"])
    assert code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "volpack: interrupted\n"
    assert unraisable == []
    assert warnings.filters == filters  # the CLI's own calls in a process change no filter
