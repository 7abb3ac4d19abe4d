"""Early writeback: queue a file's dirty pages for writing while more data is still coming.

Without it the kernel keeps the whole output dirty in the page cache until the final fsync, which
then waits for all of it while the CPU sits idle (here: 1 GiB written then fsynced in 0.70 s;
with writeback queued every 8 MiB, 0.46 s). ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` only starts
the I/O and never waits for it; durability still comes from the fsync that publishes the file.
Linux only; elsewhere, and on files that refuse it (pipes), it quietly does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat

STEP = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _load():  # -> the libc function, or None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()


class Writeback:
    """Call ``wrote(end)`` after writing up to file offset ``end`` (offsets must not go back by
    more than one step, which holds for sequential and increasing-offset writers)."""

    def __init__(self, fd: int, step: int = STEP) -> None:
        self.fd = fd
        self.step = step
        self.started = 0  # writeback was queued for [0, started)
        self.enabled = _sync_file_range is not None

    def wrote(self, end: int) -> None:
        if not self.enabled or end - self.started < self.step:
            return
        assert _sync_file_range is not None
        if _sync_file_range(self.fd, self.started, end - self.started, _SYNC_FILE_RANGE_WRITE):
            # ESPIPE (pipe), EINVAL (some special files): nothing to gain, stop trying. Real
            # I/O errors surface again at fsync, which the caller reports.
            self.enabled = False
            return
        self.started = end


def for_fd(fd: int) -> Writeback:
    """A Writeback for ``fd``, disabled unless it is a regular file or a block device."""
    wb = Writeback(fd)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        wb.enabled = False
    return wb
