"""Results on stdout whose reader may go away (``volpack list | head``).

When the reader of stdout closes the pipe, further results are dropped and the verb runs to its
end, so the exit code says what the verb did, not that nobody read the rest. It guards only the
text results on ``sys.stdout``; an archive streamed to ``-`` is written to fd 1 by the pipe
medium, which reports a broken pipe as a medium error (the archive is incomplete).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, TextIO


class ResultStream:
    """A stand-in for ``sys.stdout`` that turns a broken pipe into silence."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._gone(exc)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._gone(exc)

    def _gone(self, exc: OSError) -> None:
        if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
            raise exc
        self.reader_gone = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install() -> ResultStream:
    """Put a ResultStream in front of ``sys.stdout``."""
    guard = ResultStream(sys.stdout)
    sys.stdout = guard
    return guard


def finish(guard: ResultStream) -> None:
    """Flush what is left; when the reader went away, point fd 1 at /dev/null so that the
    interpreter's own last flush of the bytes still buffered does not fail at exit."""
    guard.flush()
    sys.stdout = guard._stream
    if guard.reader_gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
