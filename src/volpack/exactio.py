"""Exact positioned I/O on file descriptors: read exactly, write all, or raise one volpack error.

The one place where short counts are retried and where a short read at the end of a file, a full
disk or an OSError becomes the caller's error family, naming the subject, the offset and the bytes
expected and got. It never copies: os.preadv and os.pwritev fill and drain the caller's buffers
directly, without the GIL. It never decides what a short file means; the caller's Subject says.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from volpack.errors import VolpackError

# The kernel refuses more buffers than this in one call (EINVAL).
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


@dataclass(frozen=True, slots=True)
class Subject:
    """What is read or written, for the one-line error ``name: problem at offset; remedy``.

    ``error`` is the family raised for an OSError and for a read that ends early; ``full`` (by
    default ``error``) for a write that finds no space left. The remedies finish the message.
    """

    name: str
    error: type[VolpackError]
    at_end: str = ""
    on_error: str = ""
    full: type[VolpackError] | None = None
    on_full: str = ""


def _line(problem: str, remedy: str) -> str:
    return f"{problem}; {remedy}" if remedy else problem


def _nbytes(buffers: Sequence[memoryview]) -> int:
    return sum(v.nbytes for v in buffers)


def _advance(pending: list[memoryview], first: int, n: int) -> int:
    """Drop the first ``n`` bytes still pending (slicing the buffer they end in, in place);
    returns the index of the first buffer with bytes left."""
    while n and n >= pending[first].nbytes:
        n -= pending[first].nbytes
        first += 1
    if n:
        pending[first] = pending[first].cast("B")[n:]
    return first


def preadv_upto(fd: int, buffers: Sequence[memoryview], offset: int, what: Subject) -> int:
    """Fill ``buffers`` from ``offset`` on, retrying short counts; stop early only at the end of
    the file. Returns the bytes read; an OSError becomes ``what.error``."""
    want = _nbytes(buffers)
    pending = list(buffers)
    first = got = 0
    while got < want:
        try:
            # os.preadv retries EINTR itself (PEP 475); short counts are retried here.
            n = os.preadv(fd, pending[first : first + IOV_MAX], offset + got)
        except OSError as exc:
            raise what.error(
                _line(
                    f"{what.name}: read error at offset {offset + got} ({exc.strerror})",
                    what.on_error,
                )
            ) from None
        except OverflowError:  # past the largest file offset: no file holds bytes there
            break
        if n == 0:
            break
        got += n
        if got < want:
            first = _advance(pending, first, n)
    return got


def preadv_exact(fd: int, buffers: Sequence[memoryview], offset: int, what: Subject) -> None:
    """Fill ``buffers`` from ``offset`` on, or raise ``what.error`` naming the bytes expected and
    the bytes there were before the end of the file."""
    got = preadv_upto(fd, buffers, offset, what)
    want = _nbytes(buffers)
    if got < want:
        raise what.error(
            _line(
                f"{what.name}: {want} bytes expected at offset {offset}, only {got} before the "
                f"end at offset {offset + got}",
                what.at_end,
            )
        )


def pread_exact(fd: int, length: int, offset: int, what: Subject) -> bytes:
    """``length`` bytes from ``offset``, or raise as :func:`preadv_exact` does."""
    buf = bytearray(length)
    preadv_exact(fd, [memoryview(buf)], offset, what)
    return bytes(buf)


def pwritev_all(fd: int, buffers: Sequence[memoryview], offset: int, what: Subject) -> None:
    """Write every byte of ``buffers`` from ``offset`` on, retrying short counts. No space left
    raises ``what.full`` (or ``what.error``), any other OSError ``what.error``."""
    want = _nbytes(buffers)
    pending = list(buffers)
    first = done = 0
    while done < want:
        try:
            n = os.pwritev(fd, pending[first : first + IOV_MAX], offset + done)
        except OSError as exc:
            at = offset + done
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise (what.full or what.error)(
                    _line(f"{what.name}: no space left at offset {at}", what.on_full)
                ) from None
            raise what.error(
                _line(f"{what.name}: write error at offset {at} ({exc.strerror})", what.on_error)
            ) from None
        except OverflowError:
            raise what.error(
                f"{what.name}: write at offset {offset + done} is past the largest file offset"
            ) from None
        if n == 0:  # never for a file or device; refuse to spin on a writer that takes nothing
            raise what.error(f"{what.name}: wrote nothing at offset {offset + done}")
        done += n
        if done < want:
            first = _advance(pending, first, n)


def pwrite_all(fd: int, view: memoryview, offset: int, what: Subject) -> None:
    """Write every byte of ``view`` at ``offset``, as :func:`pwritev_all` does."""
    pwritev_all(fd, (view,), offset, what)


__all__ = [
    "IOV_MAX",
    "Subject",
    "pread_exact",
    "preadv_exact",
    "preadv_upto",
    "pwrite_all",
    "pwritev_all",
]
