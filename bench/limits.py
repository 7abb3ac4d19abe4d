"""The machine's limit in the same run: page-cache read of an input, write + fsync of an output.

Run as a child process (`python3 -I -S limits.py read FILE [BUFFER]` / `write FILE BYTES`) by
the same timing code as every other row, so the limit rows see the same warm cache and prefaulted
memory.
Standard library only, and started without site imports: the process adds ≈10 ms, not ≈50.
Must not know volpack or any peer; run.py turns its rows into each run's share of the limit.
"""

from __future__ import annotations

import mmap
import os
import sys

CHUNK = 1 << 20
# Two read sizes, as cp (128 KiB) and large-buffer copiers (1 MiB) read; run.py takes the faster
# as the limit. (With the page-aligned buffer below they come out within noise of each other
# here; the 4x gap once seen between them was the buffer's placement.)
READ_SIZES = (128 << 10, 1 << 20)


def read_data(path: str, chunk: int = CHUNK) -> int:
    """Read every data range of path once (holes skipped, as a hole-aware copier does)."""
    # Page-aligned, as a C copier's buffer is: a bytearray starts 16 bytes past a page, and the
    # kernel's copy into it runs 3-5x slower here (src/volpack/buffers.py).
    buf = memoryview(mmap.mmap(-1, chunk))
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        end, pos = os.fstat(fd).st_size, 0
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < hole:
                n = os.preadv(fd, [buf[: min(chunk, hole - pos)]], pos)  # not into the hole
                if n <= 0:
                    break
                pos += n
                total += n
    finally:
        os.close(fd)
    return total


def _sync_file_range():  # -> libc's sync_file_range, or None
    import ctypes
    import ctypes.util

    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn


def write_synced(path: str, nbytes: int) -> int:
    """Write nbytes of non-zero data to a new file at path, then fsync it. The fastest way this
    machine knows: writeback started every 8 MiB, and what is 32 MiB behind waited for and
    dropped from the page cache (as nbdcopy and volpack do), so the page cache reuses the same
    pages instead of filling fresh memory; a plain write + fsync was up to 2x slower here."""
    buf = b"\x5a" * CHUNK
    view = memoryview(buf)
    step, lag = 8 << 20, 32 << 20
    sfr = _sync_file_range()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = started = dropped = 0
        while done < nbytes:
            done += os.write(fd, view[: min(nbytes - done, CHUNK)])
            if sfr is not None and done - started >= step:
                sfr(fd, started, done - started, 2)  # SYNC_FILE_RANGE_WRITE
                started = done
                if done - lag - dropped >= step:
                    sfr(fd, dropped, done - lag - dropped, 7)  # wait before, write, wait after
                    os.posix_fadvise(fd, dropped, done - lag - dropped, os.POSIX_FADV_DONTNEED)
                    dropped = done - lag
        os.fsync(fd)
    finally:
        os.close(fd)
    return nbytes


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "read":
        read_data(argv[1], int(argv[2]) if len(argv) == 3 else CHUNK)
        return 0
    if len(argv) == 3 and argv[0] == "write":
        write_synced(argv[1], int(argv[2]))
        return 0
    print("usage: limits.py read FILE [BUFFER] | write FILE BYTES", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
