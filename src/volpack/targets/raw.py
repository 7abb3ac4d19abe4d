"""Raw restore targets: a thin regular file, or a block device.

A file target is written under a temporary name and renamed only after the whole archive checked
out, so an existing file (``--force``) stays intact until then and a failed restore leaves
nothing; a new file is made 0600 unless a mode is given, a replaced one keeps its mode and owner. A block device is written in place; unused ranges are zeroed unless the caller says the
device already reads zeros.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat

from volpack.atomic import create_temp, discard, publish
from volpack.errors import TargetError, UsageError
from volpack.exactio import Subject, pwrite_all
from volpack.extents import Extents
from volpack.targets.base import writable_limit
from volpack.units import check_mode, human
from volpack.writeback import Writeback

BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
_ZERO_CHUNK = 8 << 20


def check_new_file(path: str, *, exists: bool, force: bool) -> None:
    """Refuse an existing file target without ``force``, and a missing directory."""
    if exists and not force:
        raise TargetError(
            f"{path}: already exists; use --force to replace it (it is kept until the restore "
            "has fully succeeded)"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise TargetError(f"{path}: directory {directory} does not exist; create it first")


def create_file_temp(path: str, mode: int | None) -> tuple[str, int]:
    """The locked partial a file target writes before it replaces ``path``: (path, fd)."""
    try:
        return create_temp(path, mode)
    except OSError as exc:
        raise TargetError(
            f"{path}: cannot create ({exc.strerror}); choose a target in a writable directory"
        ) from None


class FileTarget:
    """A thin file: unused blocks stay holes; the exact volume size is set at the end."""

    def __init__(self, path: str, *, force: bool, mode: int | None = None) -> None:
        self.path = path
        self.description = f"thin file {path}"
        self._subject = Subject(
            path,
            TargetError,
            on_full="free space or choose another target (nothing was replaced)",
        )
        check_new_file(path, exists=os.path.lexists(path), force=force)
        self.mode = None if mode is None else check_mode(mode)
        self.tmp: str | None = None
        self.fd = -1
        self.size = 0
        self._writeback: Writeback | None = None

    def prepare(self, volume_size: int, used_bytes: Extents) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        vfs = os.statvfs(directory)
        free = vfs.f_bavail * vfs.f_frsize
        need = used_bytes.total()
        if free < need:
            raise TargetError(
                f"{self.path}: {human(free)} ({free} B) free in {directory}, the "
                f"restore needs {human(need)} ({need} B); free space first"
            )
        self.size = volume_size
        self.tmp, self.fd = create_file_temp(self.path, self.mode)
        self._writeback = Writeback(self.fd)

    def write_at(self, offset: int, data: memoryview) -> None:
        pwrite_all(self.fd, data, offset, self._subject)
        assert self._writeback is not None
        self._writeback.wrote(offset + len(data))

    def finish(self) -> None:
        fd, self.fd = self.fd, -1
        try:
            assert self.tmp is not None
            os.ftruncate(fd, self.size)
            publish(fd, self.tmp, self.path, keep_existing=self.mode is None)
        except OSError as exc:
            raise TargetError(
                f"{self.path}: could not complete the restore ({exc.strerror}); "
                "the previous file, if any, is unchanged"
            ) from None

    def abort(self) -> None:
        discard(self.fd, self.tmp)
        self.fd = -1


class DeviceTarget:
    """A block device written in place; unused ranges zeroed (BLKZEROOUT, else zero writes)."""

    def __init__(self, path: str, *, force: bool, allow_smaller: bool, assume_zeroed: bool) -> None:
        self.path = path
        self.description = f"block device {path}"
        self._subject = Subject(path, TargetError, on_full="restore to a larger device")
        if not force:
            raise TargetError(
                f"{path}: is a block device; restoring overwrites all of it, add --force"
            )
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            hint = " (mounted or in use)" if exc.errno == errno.EBUSY else ""
            raise TargetError(f"{path}: cannot open for writing{hint} ({exc.strerror})") from None
        buf = array.array("B", bytes(8))
        fcntl.ioctl(self.fd, BLKGETSIZE64, buf, True)
        self.capacity = int.from_bytes(buf.tobytes(), "little")
        self.allow_smaller = allow_smaller
        self.assume_zeroed = assume_zeroed
        self.limit = 0
        self.zeroed_to = 0
        self._zeroout_ok = True
        self._writeback = Writeback(self.fd)

    def prepare(self, volume_size: int, used_bytes: Extents) -> None:
        self.limit = writable_limit(
            self.path, "device", self.capacity, volume_size, used_bytes, self.allow_smaller
        )

    def _zero(self, start: int, end: int) -> None:
        if self.assume_zeroed or end <= start:
            return
        if self._zeroout_ok and start % 512 == 0 and end % 512 == 0:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, array.array("Q", [start, end - start]))
                return
            except OSError:
                self._zeroout_ok = False  # not supported here: fall back to writing zeros
        zeros = memoryview(bytes(min(_ZERO_CHUNK, end - start)))
        for off in range(start, end, _ZERO_CHUNK):
            pwrite_all(self.fd, zeros[: min(_ZERO_CHUNK, end - off)], off, self._subject)

    def write_at(self, offset: int, data: memoryview) -> None:
        self._zero(self.zeroed_to, offset)
        pwrite_all(self.fd, data, offset, self._subject)
        self.zeroed_to = offset + len(data)
        self._writeback.wrote(self.zeroed_to)

    def finish(self) -> None:
        self._zero(self.zeroed_to, self.limit)
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
        except OSError as exc:
            raise TargetError(
                f"{self.path}: flushing the device failed ({exc.strerror}); its "
                "contents are not reliable"
            ) from None

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_raw_target(
    path: str,
    *,
    force: bool = False,
    allow_smaller: bool = False,
    assume_zeroed: bool = False,
    mode: int | None = None,
) -> FileTarget | DeviceTarget:
    """A thin file (new ones made with ``mode``, default 0600) or a block device (written in
    place; ``mode`` is refused)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TargetError(f"{path}: cannot stat ({exc.strerror})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise TargetError(f"{path}: is a directory; give a file name or a block device")
    if st is not None and stat.S_ISBLK(st.st_mode):
        if mode is not None:
            raise UsageError(
                f"{path}: is a block device, written in place with its own mode; --mode is for "
                "files restore creates, drop it"
            )
        return DeviceTarget(
            path, force=force, allow_smaller=allow_smaller, assume_zeroed=assume_zeroed
        )
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise TargetError(f"{path}: not a regular file or block device")
    return FileTarget(path, force=force, mode=mode)
