"""Tape device layer under the tape medium: records, filemarks, positioning and drive status.

``TapeDevice`` is the seam; ``ScsiTape`` drives a Linux st device (``/dev/nst0``) through the
MTIOCTOP/MTIOCGET ioctls of <sys/mtio.h>, and the emulator (``emulator.py``) models the same
behaviour in a directory. This layer knows nothing of archives or volume sets and reports
failures as ``OSError`` with the device's errno (ENOSPC, EIO, ENOMEM …); the medium maps them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Protocol

# --- <sys/mtio.h> (Linux) -------------------------------------------------------------------
# struct mtop { short mt_op; int mt_count; }  → 8 bytes with the alignment padding.
MTOP = struct.Struct("@hi")
# struct mtget { long type, resid, dsreg, gstat, erreg; daddr_t fileno, blkno; }  → 48 bytes.
MTGET = struct.Struct("@lllllii")

_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    # The Linux _IOC encoding: dir(2 bits) | size(14) | type(8) | nr(8).
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


MTIOCTOP = _ioc(_IOC_WRITE, "m", 1, MTOP.size)
MTIOCGET = _ioc(_IOC_READ, "m", 2, MTGET.size)

MTFSF = 1  # forward past N filemarks
MTBSF = 2  # backward past N filemarks (ends on the BOT side of the last one)
MTWEOF = 5  # write N filemarks
MTREW = 6  # rewind
MTNOP = 8  # no-op; refreshes the status MTIOCGET returns
MTSETBLK = 20  # block size; 0 = variable-length records

GMT_EOF = 0x80000000
GMT_BOT = 0x40000000
GMT_EOT = 0x20000000  # early warning: close to the end of the medium
GMT_EOD = 0x08000000
GMT_WR_PROT = 0x04000000
GMT_ONLINE = 0x01000000
GMT_DR_OPEN = 0x00040000


@dataclass(frozen=True, slots=True)
class TapeStatus:
    """Where the head is and what the drive says; ``None`` where the drive does not tell."""

    file_number: int | None  # 0-based, counted in filemarks passed since BOT
    record_number: int | None  # 0-based within the current file
    at_bot: bool
    early_warning: bool
    at_eod: bool | None  # None: unknown without reading (real drives)
    write_protected: bool


class TapeDevice(Protocol):
    """One drive with one loaded medium. Every call moves whole records."""

    name: str

    def write_record(self, record: bytes | bytearray | memoryview) -> None:
        """Write one record. OSError(ENOSPC) means it was *not* written (early warning or end)."""
        ...

    def read_record(self, buf: memoryview) -> int:
        """Read one record into ``buf``: its length, 0 at a filemark (then past it).

        OSError(EIO) is a read error, never the end of data; ENOMEM if ``buf`` is too small.
        """
        ...

    def write_filemark(self, count: int = 1) -> None: ...

    def rewind(self) -> None: ...

    def forward_files(self, count: int) -> None:
        """Move past ``count`` filemarks (MTFSF): to the start of a later file."""
        ...

    def status(self) -> TapeStatus: ...

    def close(self) -> None: ...


class ScsiTape:
    """A Linux st device (``/dev/nst0``: the non-rewinding node) in variable-record mode."""

    def __init__(self, path: str, *, write: bool) -> None:
        self.name = path
        flags = (os.O_RDWR if write else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags)
        try:
            # Variable-length records: each write() is one record and a read() returns exactly
            # one record, so the volume header can be read before its record size is known.
            self._op(MTSETBLK, 0)
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise OSError(errno.ENOTTY, "not a tape device (MTIOCTOP refused)", path) from exc
            raise

    def _op(self, op: int, count: int) -> None:
        fcntl.ioctl(self._fd, MTIOCTOP, MTOP.pack(op, count))

    def write_record(self, record: bytes | bytearray | memoryview) -> None:
        n = os.write(self._fd, record)
        if n != len(record):
            # st never splits a variable-length record; a short count is a device fault.
            raise OSError(errno.EIO, f"short write of a tape record ({n} of {len(record)} bytes)")

    def read_record(self, buf: memoryview) -> int:
        return os.readv(self._fd, [buf])

    def write_filemark(self, count: int = 1) -> None:
        self._op(MTWEOF, count)

    def rewind(self) -> None:
        self._op(MTREW, 1)

    def forward_files(self, count: int) -> None:
        if count > 0:
            self._op(MTFSF, count)

    def status(self) -> TapeStatus:
        raw = fcntl.ioctl(self._fd, MTIOCGET, bytes(MTGET.size))
        _type, _resid, _dsreg, gstat, _erreg, fileno, blkno = MTGET.unpack(raw)
        gstat &= 0xFFFFFFFF
        return TapeStatus(
            file_number=fileno if fileno >= 0 else None,
            record_number=blkno if blkno >= 0 else None,
            at_bot=bool(gstat & GMT_BOT),
            early_warning=bool(gstat & GMT_EOT),
            at_eod=True if gstat & GMT_EOD else None,
            write_protected=bool(gstat & GMT_WR_PROT),
        )

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
