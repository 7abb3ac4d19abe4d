"""Checks shared by the CLI tests: an error is one ``volpack: error:`` line with its exit code."""

from __future__ import annotations

import subprocess


def one_error_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The single error line of a finished ``volpack`` run, after checking its exit code, that
    no traceback was printed, and that the line names each of ``words`` (case-insensitive)."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("volpack: error:")]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]
