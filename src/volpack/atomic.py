"""Publishing files atomically: write under a hidden partial name next to the final one (see
``volpack.partials``), then fsync, rename and fsync the directory. Used by the file medium and by
file restore targets, so a reader never sees a partial file under the final name and a failure
never destroys an old one. A replaced file's permission bits and owner are carried over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from volpack.partials import DEFAULT_MODE, create, temp_path_for
from volpack.units import check_mode

__all__ = ["DEFAULT_MODE", "create_temp", "discard", "publish", "temp_path_for"]

log = logging.getLogger("volpack")


def create_temp(path: str, mode: int | None = None) -> tuple[str, int]:
    """A new locked partial for ``path`` as (partial path, fd), made with ``mode`` (default
    0600, less what the umask takes away); dead partials of ``path`` are removed first."""
    return create(path, None if mode is None else check_mode(mode))


def publish(fd: int, tmp: str, path: str, *, keep_existing: bool = True) -> None:
    """fsync ``fd`` (open on ``tmp``), rename ``tmp`` over ``path``, close ``fd``, fsync the
    directory.

    With ``keep_existing``, a regular file being replaced passes its permission bits and owner on
    (see ``_inherit``). Raises OSError; on failure ``fd`` is closed and ``tmp`` is left for
    ``discard``.
    """
    try:
        if keep_existing:
            _inherit(fd, path)
        os.fsync(fd)
        # Renamed before the close: the partial's lock is held until it has its final name, so a
        # sweep never finds a finished partial unlocked and removes it.
        os.replace(tmp, path)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _inherit(fd: int, path: str) -> None:
    """Give ``fd`` the owner and permission bits of the regular file at ``path``, if any. The
    owner only where permitted (root; else the group when we are in it); when the group cannot be
    kept, its permission bits are dropped rather than handed to another group."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(old.st_mode):
        return
    bits = stat.S_IMODE(old.st_mode) & 0o777
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (old.st_uid, old.st_gid):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except PermissionError:
            try:
                os.fchown(fd, -1, old.st_gid)
            except PermissionError:
                bits &= ~0o070
                log.warning(
                    "%s: the replaced file's group %d could not be kept; its group permission "
                    "bits were dropped",
                    path,
                    old.st_gid,
                )
    os.fchmod(fd, bits)


def discard(fd: int, tmp: str | None) -> None:
    """Remove the temporary file (if any) and close ``fd`` (if open); never raises. Removed
    before the close, while its lock is still held."""
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
