"""Early writeback: send a file's dirty pages to disk while more data is still coming, then drop
them from the page cache.

Without it the kernel keeps the whole output dirty in the page cache until the final fsync, which
then waits for all of it while the CPU sits idle (here: 1 GiB written then fsynced in 0.70 s;
with writeback queued every 8 MiB, 0.46 s). ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` only starts
the I/O and never waits for it; durability still comes from the fsync that publishes the file.

Two measured details (a backup from an NBD export, 1.45 GiB archive, ``perf``):
- Only whole 64 KiB-aligned spans are queued. Queuing up to an unaligned end puts the page that
  the next write fills under writeback, and that write then waits for the disk (stable pages):
  system time 3.4 s, against 2.1 s with aligned spans.
- Spans that are ``LAG`` behind the writer are waited for and dropped with
  ``POSIX_FADV_DONTNEED``, as ``nbdcopy`` and ``dd oflag=nocache`` do. The page cache then reuses
  the same few pages instead of filling fresh memory with an archive nobody will read soon
  (copying into never-used pages cost 1.4 s of the backup above; ``nbdcopy`` paid 0.2 s for the
  same bytes), and a backup does not push the host's working set out of memory.
Linux only; elsewhere, and on files that refuse it (pipes), it quietly does nothing.
"""

from __future__ import annotations

import ctypes
import os
import stat

STEP = 8 << 20
LAG = 32 << 20  # writeback still running when the writer waits for the oldest span
ALIGN = 1 << 16
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _load():  # -> the libc function, or None
    try:
        # The process's own symbols hold libc's: find_library would run `ldconfig -p` in a
        # child process at every start.
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()


class Writeback:
    """Call ``wrote(end)`` after writing up to file offset ``end`` (for sequential and
    increasing-offset writers; a write below ``dropped`` is correct, only slower)."""

    def __init__(self, fd: int, step: int = STEP) -> None:
        self.fd = fd
        self.step = step
        self.started = 0  # writeback was queued for [0, started)
        self.dropped = 0  # [0, dropped) was written to disk and dropped from the page cache
        self.enabled = _sync_file_range is not None

    def wrote(self, end: int) -> None:
        end &= ~(ALIGN - 1)
        if not self.enabled or end - self.started < self.step:
            return
        assert _sync_file_range is not None
        if _sync_file_range(self.fd, self.started, end - self.started, _WRITE):
            # ESPIPE (pipe), EINVAL (some special files): nothing to gain, stop trying. Real
            # I/O errors surface again at fsync, which the caller reports.
            self.enabled = False
            return
        self.started = end
        upto = end - LAG
        if upto - self.dropped < self.step:
            return
        length = upto - self.dropped
        if _sync_file_range(self.fd, self.dropped, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER):
            return  # an I/O error: left to the fsync; nothing dropped
        os.posix_fadvise(self.fd, self.dropped, length, os.POSIX_FADV_DONTNEED)
        self.dropped = upto


def for_fd(fd: int) -> Writeback:
    """A Writeback for ``fd``, disabled unless it is a regular file or a block device."""
    wb = Writeback(fd)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        wb.enabled = False
    return wb
