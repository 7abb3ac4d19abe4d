"""Raw volumes: regular files (images, sparse files) and block devices, opened read-only.

Data runs come from SEEK_DATA/SEEK_HOLE (holes read as zeros); the physical map comes from
FIEMAP for files (device id + physical offset) and is the identity for block devices. What the
kernel does not tell is recorded as unknown, never guessed.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat
import struct

import numpy as np

from volpack.errors import SourceError
from volpack.exactio import Subject, preadv_exact
from volpack.extents import Extents
from volpack.source.base import (
    PM_ENCODED,
    PM_SHARED,
    PM_UNKNOWN,
    PM_UNWRITTEN,
    PhysicalMap,
    SourceInfo,
)

BLKGETSIZE64 = 0x80081272
FS_IOC_FIEMAP = 0xC020660B
_FIEMAP = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 reserved
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_NOT_ALIGNED = 0x100
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_SHARED = 0x2000
_BATCH = 512


class RawSource:
    """A regular file or block device as a volume."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise SourceError(f"{path}: no such file or device; check the path") from None
        except OSError as exc:
            raise SourceError(f"{path}: cannot stat ({exc.strerror})") from None
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{path}: is a directory; give an image file or a block device")
        self.is_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_device or stat.S_ISREG(st.st_mode)):
            raise SourceError(
                f"{path}: not a regular file or block device; volpack reads volumes, not streams"
            )
        flags = os.O_RDONLY | os.O_CLOEXEC
        if self.is_device:
            flags |= os.O_EXCL  # fails while mounted or opened exclusively by someone else
        try:
            self.fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise SourceError(
                    f"{path}: device is busy (mounted or in use); back up a snapshot "
                    "or unmount it first"
                ) from None
            raise SourceError(f"{path}: cannot open for reading ({exc.strerror})") from None
        try:
            self._stat = os.fstat(self.fd)
            if self.is_device:
                buf = array.array("B", bytes(8))
                fcntl.ioctl(self.fd, BLKGETSIZE64, buf, True)
                self._size = int.from_bytes(buf.tobytes(), "little")
            else:
                self._size = self._stat.st_size
        except OSError as exc:
            os.close(self.fd)
            raise SourceError(
                f"{path}: cannot read its size ({exc.strerror}); check that it is a working "
                "image file or block device"
            ) from None
        self.device_name = (
            f"dev:{os.major(self._stat.st_rdev)}:{os.minor(self._stat.st_rdev)}"
            if self.is_device
            else f"dev:{os.major(self._stat.st_dev)}:{os.minor(self._stat.st_dev)}"
        )
        self._subject = Subject(
            path,
            SourceError,
            at_end="the volume shrank during the backup",
            on_error="the source device may be failing",
        )

    @property
    def size(self) -> int:
        return self._size

    @property
    def info(self) -> SourceInfo:
        kind = "blockdev" if self.is_device else "file"
        return SourceInfo(kind, os.path.abspath(self.path), {"device": self.device_name})

    def identity(self) -> tuple[object, ...]:
        st = os.fstat(self.fd)
        return (self._size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns if not self.is_device else 0)

    def data_extents(self) -> Extents:
        if self.is_device or self._size == 0:
            return Extents.span(0, self._size)
        starts: list[int] = []
        ends: list[int] = []
        pos = 0
        try:
            while pos < self._size:
                try:
                    data = os.lseek(self.fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # no data after pos
                    raise
                hole = os.lseek(self.fd, data, os.SEEK_HOLE)
                starts.append(data)
                ends.append(min(hole, self._size))
                pos = hole
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # filesystem without SEEK_DATA: all data
                return Extents.span(0, self._size)
            raise SourceError(f"{self.path}: cannot map holes ({exc.strerror})") from None
        return Extents.from_arrays(np.array(starts, np.int64), np.array(ends, np.int64))

    def physical_map(self) -> PhysicalMap:
        if self.is_device:
            return PhysicalMap.identity(self.device_name, self._size)
        runs = _fiemap(self.fd, self._size)
        if runs is None:
            return PhysicalMap.unknown(self._size)
        return PhysicalMap.build((self.device_name,), runs)

    def read_into(self, offset: int, buf: memoryview) -> None:
        want = len(buf)
        if offset + want > self._size:
            raise SourceError(
                f"{self.path}: read of {want} bytes at {offset} past the end "
                f"({self._size} bytes); the volume shrank during the backup"
            )
        preadv_exact(self.fd, (buf,), offset, self._subject)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _fiemap(fd: int, size: int) -> list[tuple[int, int, int, int, int]] | None:
    """FIEMAP extents as physical-map runs, or None when the filesystem does not support it."""
    runs: list[tuple[int, int, int, int, int]] = []
    start = 0
    while start < size:
        req = bytearray(_FIEMAP.size + _EXTENT.size * _BATCH)
        _FIEMAP.pack_into(req, 0, start, size - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, req, True)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                return None
            raise
        mapped = _FIEMAP.unpack_from(req, 0)[3]
        if mapped == 0:
            break
        last = False
        for i in range(mapped):
            logical, physical, length, _, _, flags, _, _, _ = _EXTENT.unpack_from(
                req, _FIEMAP.size + i * _EXTENT.size
            )
            end = min(logical + length, size)
            pm_flags = 0
            if flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DATA_INLINE):
                pm_flags |= PM_UNKNOWN
            if flags & FIEMAP_EXTENT_UNWRITTEN:
                pm_flags |= PM_UNWRITTEN
            if flags & FIEMAP_EXTENT_SHARED:
                pm_flags |= PM_SHARED
            if flags & (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_NOT_ALIGNED):
                pm_flags |= PM_ENCODED
            if end > logical:
                known = not pm_flags & PM_UNKNOWN
                runs.append(
                    (
                        logical,
                        end - logical,
                        0 if known else -1,
                        physical if known else -1,
                        pm_flags,
                    )
                )
            start = logical + length
            last = bool(flags & FIEMAP_EXTENT_LAST)
        if last:
            break
    return runs


def open_raw(path: str) -> RawSource:
    return RawSource(path)
