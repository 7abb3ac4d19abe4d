"""Publishing files atomically: write under a hidden temporary name next to the final one, then
fsync, rename and fsync the directory. Used by the file medium and by file restore targets, so a
reader never sees a partial file under the final name and a failure never destroys an old one.
"""

from __future__ import annotations

import contextlib
import os
import secrets


def temp_path_for(path: str) -> str:
    """A fresh hidden name in the same directory (``.NAME.XXXXXXXX.partial``)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{secrets.token_hex(4)}.partial")


def publish(fd: int, tmp: str, path: str) -> None:
    """fsync and close ``fd`` (open on ``tmp``), rename ``tmp`` over ``path``, fsync the directory.

    Raises OSError; on failure ``fd`` is closed and ``tmp`` is left for ``discard``.
    """
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def discard(fd: int, tmp: str | None) -> None:
    """Close ``fd`` (if open) and remove the temporary file (if any); never raises."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
