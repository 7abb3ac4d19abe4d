"""Partial files: the hidden ``.NAME.XXXXXXXX.partial`` that archives and file restore targets are
written to before they are published. Their writer holds an exclusive flock on the partial for
its whole life, so a partial whose lock can be taken is provably dead and may be removed.
This module names, creates, probes and removes partials; it never touches any other file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger("volpack")

DEFAULT_MODE = 0o600
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.partial$")
# flock fails with these where the file system cannot lock: then nothing can be proven dead.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)

# States of a partial as ``probe`` finds it.
DEAD = "dead"  # its lock could be taken: no writer holds it
IN_USE = "in-use"  # a live writer holds its lock
UNKNOWN = "unknown"  # it could not be opened or locked here: never removed


def temp_path_for(path: str) -> str:
    """A fresh hidden name in the same directory (``.NAME.XXXXXXXX.partial``)."""
    directory, name = os.path.split(os.path.abspath(path))
    # os.urandom, not secrets: secrets imports hmac and hashlib, which load and start OpenSSL
    # (3.5 MiB resident, 4 ms) in every plain backup and restore for eight hex digits.
    return os.path.join(directory, f".{name}.{os.urandom(4).hex()}.partial")


def final_name(partial_name: str) -> str | None:
    """``NAME`` for a partial's file name ``.NAME.XXXXXXXX.partial``; None for other names."""
    m = _PARTIAL.match(partial_name)
    return m.group("name") if m else None


def create(path: str, mode: int | None = None) -> tuple[str, int]:
    """Remove the dead partials of ``path``, then create and lock a new one for writing.

    Returns (partial path, fd). The file is made with ``mode`` (default 0600; the umask may take
    bits away) and stays locked until ``fd`` is closed. Raises OSError.
    """
    sweep(path)
    while True:
        tmp = temp_path_for(path)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            DEFAULT_MODE if mode is None else mode,
        )
        try:
            if not _lock(fd, blocking=True):
                return tmp, fd  # no locks on this file system: sweeps leave it alone anyway
            # Between O_CREAT and the lock, a sweep may have found the file unlocked and removed
            # it; the lock is only proof of life for a name that still holds this file.
            if os.fstat(fd).st_nlink > 0:
                return tmp, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _lock(fd: int, *, blocking: bool) -> bool:
    """Take the exclusive lock; False where the file system has no locks. Raises
    BlockingIOError when ``blocking`` is false and another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return False
        raise
    return True


@dataclass(frozen=True, slots=True)
class Partial:
    """A partial file found in a directory: where, how big, when last written, and its state."""

    path: str
    size: int
    mtime: float
    state: str
    reason: str = ""


def find(directory: str, name: str | None = None) -> list[Partial]:
    """The partials in ``directory`` (only those of final name ``name`` when given), probed, in
    name order. Raises OSError when the directory cannot be listed."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            owner = final_name(entry.name)
            if owner is None or (name is not None and owner != name):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue  # not something volpack made
            found.append(probe(entry.path))
    return sorted(found, key=lambda p: p.path)


def probe(path: str) -> Partial:
    """Whether the partial at ``path`` is dead, in use or unknown (the lock is taken and released
    at once; the file is not changed)."""
    with _held(path) as (st, state, reason):
        return Partial(path, st.st_size if st else 0, st.st_mtime if st else 0.0, state, reason)


def remove_if_dead(path: str) -> Partial:
    """Remove the partial at ``path`` if it is dead, holding its lock while doing so. Returns
    what was found; raises OSError when a dead partial could not be removed."""
    with _held(path) as (st, state, reason):
        if state == DEAD:
            with contextlib.suppress(FileNotFoundError):  # another sweep was first
                os.unlink(path)
        return Partial(path, st.st_size if st else 0, st.st_mtime if st else 0.0, state, reason)


@contextlib.contextmanager
def _held(path: str):
    """Yields (stat, state, reason) with the partial's lock held when the state is DEAD."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None, UNKNOWN, "gone"
        return
    except OSError as exc:
        yield None, UNKNOWN, f"cannot open ({exc.strerror})"
        return
    try:
        st = os.fstat(fd)
        try:
            locked = _lock(fd, blocking=False)
        except BlockingIOError:
            yield st, IN_USE, "a running writer holds it"
            return
        if not locked:
            yield st, UNKNOWN, "the file system cannot lock it, so it cannot be proven dead"
            return
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            yield st, UNKNOWN, "gone"
            return
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            yield st, UNKNOWN, "replaced while being checked"
            return
        yield st, DEAD, "no writer holds it"
    finally:
        os.close(fd)


def sweep(path: str) -> None:
    """Remove the dead partials of ``path`` left by interrupted runs. Best effort: a partial that
    is in use or cannot be proven dead stays, and a failure here never stops the caller."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        stale = [p for p in find(directory, name) if p.state == DEAD]
    except OSError as exc:
        log.debug("%s: could not look for stale partial files (%s)", directory, exc.strerror)
        return
    for p in stale:
        try:
            done = remove_if_dead(p.path)
        except OSError as exc:
            log.warning("%s: stale partial file not removed (%s)", p.path, exc.strerror)
            continue
        if done.state == DEAD:
            log.info("removed %s (%d bytes) left by an interrupted run", p.path, done.size)
