"""An existing file or block device changed in place: what ``restore --apply`` writes into.

Unlike the other targets nothing is staged: the caller checks, before the first write, that the
target holds the incremental's base state; zero runs are punched (files) or zeroed (devices);
a file takes the new volume size. Reads (for the state checks) and writes go through one fd.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import stat

from volpack.errors import TargetError
from volpack.exactio import Subject, pread_exact, pwrite_all

BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_ZERO_CHUNK = 8 << 20


def _punch(fd: int, start: int, length: int) -> bool:
    """Deallocate ``[start, start+length)`` of a file, keeping its size; False if unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)  # libc's symbols, without `ldconfig -p`
    fallocate = libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return fallocate(fd, flags, start, length) == 0


class InPlaceTarget:
    """The file or block device at ``path``, opened read-write without truncation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._subject = Subject(path, TargetError, on_full="free space on the target's filesystem")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise TargetError(
                f"{path}: does not exist; --apply changes a volume that holds the base's state, "
                "restore the chain to a new target instead (without --apply)"
            ) from None
        except OSError as exc:
            raise TargetError(f"{path}: cannot stat ({exc.strerror})") from None
        self.device = stat.S_ISBLK(st.st_mode)
        if not (self.device or stat.S_ISREG(st.st_mode)):
            raise TargetError(f"{path}: is not a regular file or block device; --apply needs one")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if self.device else 0))
        except OSError as exc:
            hint = " (mounted or in use)" if exc.errno == errno.EBUSY else ""
            raise TargetError(f"{path}: cannot open for writing{hint} ({exc.strerror})") from None
        if self.device:
            buf = array.array("B", bytes(8))
            fcntl.ioctl(self.fd, BLKGETSIZE64, buf, True)
            self.size = int.from_bytes(buf.tobytes(), "little")
        else:
            self.size = st.st_size
        self._punch_ok = True

    def read(self, offset: int, length: int) -> bytes:
        """Target bytes; past the end of a file they read as zeros (a file that grew)."""
        n = max(0, min(length, self.size - offset))
        data = pread_exact(self.fd, n, offset, self._subject) if n else b""
        return data + bytes(length - n)

    def resize(self, volume_size: int) -> None:
        """A file takes the new volume size; a device must already hold it (checked first)."""
        if self.device:
            return
        try:
            os.ftruncate(self.fd, volume_size)
        except OSError as exc:
            raise TargetError(f"{self.path}: cannot set its size ({exc.strerror})") from None
        self.size = volume_size

    def write_at(self, offset: int, data: memoryview) -> None:
        pwrite_all(self.fd, data, offset, self._subject)

    def zero(self, start: int, end: int) -> None:
        """Make ``[start, end)`` read as zeros: punch a file, zero out a device."""
        if end <= start:
            return
        if not self.device and self._punch_ok:
            if _punch(self.fd, start, end - start):
                return
            self._punch_ok = False
        if self.device and start % 512 == 0 and end % 512 == 0:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, array.array("Q", [start, end - start]))
                return
            except OSError:
                pass
        zeros = memoryview(bytes(min(_ZERO_CHUNK, end - start)))
        for off in range(start, end, _ZERO_CHUNK):
            pwrite_all(self.fd, zeros[: min(_ZERO_CHUNK, end - off)], off, self._subject)

    def finish(self) -> None:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
        except OSError as exc:
            raise TargetError(
                f"{self.path}: flushing failed ({exc.strerror}); its contents are not reliable"
            ) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
