"""Two-phase mode: copy the used data to a staging file or device at dense addresses first.

Where a zero scan runs and staging has room for every byte it reads, the scan hands each used
block over as it finds it (``Staging.taker``): the source is read once. Otherwise staging is
filled from the address table in physical-map order (``Staging.fill``, fewest seeks on the real
disk), after the scan if one ran. Then the source can be released early; the staging copy is streamed whole, in order, without looking at usage
again.
Space is checked before anything is copied. A staging file is never linked under a name (see
``_create_unnamed``), so even a killed backup leaves none behind.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

import numpy as np

from volpack.buffers import buffer
from volpack.compact.table import AddressTable
from volpack.errors import SourceError, UsageError
from volpack.exactio import Subject, preadv_exact, pwrite_all, pwritev_all
from volpack.physmap import PhysicalMap
from volpack.source.base import Source
from volpack.units import human

_CHUNK = 8 << 20


def physical_order(
    table: AddressTable, pmap: PhysicalMap, volume_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Used byte pieces split at physical-map boundaries, sorted by (device, physical offset).

    Returns (volume_offsets, lengths, dense_offsets); pieces with no known location keep volume
    order after the located ones.
    """
    bs = table.block_size
    a, n, dev, phys, _ = pmap.locate_arrays(table.used_bytes(volume_size))
    vstart = table.volume_block * bs
    run = np.searchsorted(vstart, a, side="right") - 1
    dense = table.dense_block[run] * bs + (a - vstart[run]) if len(a) else a
    located = phys >= 0
    order = np.lexsort((np.where(located, phys, a), np.where(located, dev, np.iinfo(np.int64).max)))
    return a[order], n[order], dense[order]


def one_pass_fits(room: int | None, candidates: int) -> bool:
    """Whether staging can take the zero scan's output as it comes: the dense volume is known
    only after the scan, so staging must hold every candidate byte the scan may keep."""
    return room is not None and room >= candidates


def room(path: str) -> int | None:
    """Bytes a new staging file at ``path`` (free space in its directory) or the block device
    at ``path`` (its size) can hold; None when that cannot be told (Staging then says why)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError:
        return None
    try:
        if st is not None and stat.S_ISBLK(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
        if st is not None:
            return None  # an existing file: refused by Staging
        vfs = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return vfs.f_bavail * vfs.f_frsize


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        why = " (mounted or in use)" if exc.errno == errno.EBUSY else ""
        raise UsageError(
            f"staging {path}: cannot open for writing{why} ({exc.strerror}); choose a staging "
            "file or device nothing else uses"
        ) from None


class Staging:
    """A staging file (unnamed, gone when closed) or block device holding the dense volume."""

    def __init__(self, path: str, dense_size: int, *, force: bool, scanning: bool = False) -> None:
        """``scanning``: filled by the zero scan (``taker``), so ``dense_size`` is the most the
        dense volume can be, every candidate byte the scan reads; messages say so."""
        self.path = path
        self.dense_size = dense_size
        self.created = False
        need = (
            f"the used blocks may need up to {human(dense_size)} ({dense_size} B, every "
            "allocated byte the zero scan reads)"
            if scanning
            else f"the dense volume needs {human(dense_size)} ({dense_size} B)"
        )
        self._subject = self._make_subject(path, dense_size, need)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            if not force:
                raise UsageError(
                    f"staging {path}: is a block device; its contents will be "
                    "overwritten, add --force"
                )
            self.fd = _open(path, os.O_RDWR | os.O_EXCL)
            capacity = os.lseek(self.fd, 0, os.SEEK_END)
            if capacity < dense_size:
                os.close(self.fd)
                raise UsageError(
                    f"staging {path}: device holds {human(capacity)} ({capacity} B), {need}; "
                    "use a larger device"
                )
            return
        if st is not None:
            raise UsageError(
                f"staging {path}: already exists; give a new file name or a block "
                "device (an existing file is never overwritten)"
            )
        directory = os.path.dirname(os.path.abspath(path))
        try:
            vfs = os.statvfs(directory)
        except OSError as exc:
            raise UsageError(f"staging {path}: directory {directory}: {exc.strerror}") from None
        free = vfs.f_bavail * vfs.f_frsize
        if free < dense_size:
            raise UsageError(
                f"staging {path}: {human(free)} ({free} B) free in {directory}, {need}; "
                "free space or choose another staging path"
            )
        self.fd = _create_unnamed(path)
        self.created = True

    def fill(
        self,
        source: Source,
        table: AddressTable,
        pmap: PhysicalMap,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        vs, lens, ds = physical_order(table, pmap, source.size)
        view = buffer(_CHUNK)
        done = 0
        for v, n, d in zip(vs.tolist(), lens.tolist(), ds.tolist(), strict=True):
            for off in range(0, n, _CHUNK):
                k = min(_CHUNK, n - off)
                source.read_into(v + off, view[:k])
                self._pwrite(view[:k], d + off)
                done += k
                if progress is not None:
                    progress(done)
        # The short last block of a volume is zero-padded in the dense volume (explicitly: a
        # staging device holds old data there).
        if len(table):
            bs = table.block_size
            last_end = int(table.volume_block[-1] + table.count[-1]) * bs
            pad = last_end - max(source.size, int(table.volume_block[-1]) * bs)
            if pad > 0:
                self._pwrite(memoryview(bytes(pad)), table.dense_size - pad)

    @staticmethod
    def _make_subject(path: str, dense_size: int, need: str) -> Subject:
        return Subject(
            f"staging {path}",
            SourceError,
            at_end=f"it must hold the whole {dense_size}-byte dense volume; it was truncated "
            "or replaced during the backup, run the backup again",
            # The same family as the up-front space check: the staging area chosen is too
            # small, whichever moment finds out (README "Exit codes").
            full=UsageError,
            on_full=f"{need}; free space or choose a larger staging area",
        )

    def taker(self) -> Callable[[memoryview, list[tuple[int, int]]], None]:
        """A zero scan sink (detect/zeros.py) that appends each used block to the dense
        volume as the scan finds it, in volume order: the source is read once. Call
        :meth:`settle` with the dense size found once the scan is done."""
        at = 0

        def take(view: memoryview, pieces: list[tuple[int, int]]) -> None:
            nonlocal at
            parts = [view[o : o + n] for o, n in pieces]
            pwritev_all(self.fd, parts, at, self._subject)
            at += sum(n for _, n in pieces)

        return take

    def settle(self, dense_size: int) -> None:
        """The dense volume's size, known once a one-pass fill is done (it was checked
        against every candidate byte, so it fits)."""
        self.dense_size = dense_size
        self._subject = self._make_subject(
            self.path, dense_size, f"the dense volume needs {human(dense_size)} ({dense_size} B)"
        )

    def _pwrite(self, data: memoryview, offset: int) -> None:
        pwrite_all(self.fd, data, offset, self._subject)

    def read(self, dense_offset: int, view: memoryview) -> None:
        """Fill ``view`` with the dense bytes at ``dense_offset``; a staging file that ends
        before them was cut short behind volpack's back, and is refused, never read as zeros."""
        preadv_exact(self.fd, (view,), dense_offset, self._subject)

    def close(self) -> None:
        # A staging file has no name: closing it frees its space.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _create_unnamed(path: str) -> int:
    """A new 0600 file (less what the umask takes away) for staging at ``path``, without a name:
    made with O_TMPFILE in ``path``'s directory, so the kernel frees it when its last descriptor
    closes, also when the process is killed. Where the file system lacks O_TMPFILE it is made at
    ``path`` and unlinked at once (only a kill between those two calls can leave it)."""
    directory = os.path.dirname(os.path.abspath(path))
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        try:
            return os.open(directory, flags | os.O_TMPFILE, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(
            f"staging {path}: cannot create ({exc.strerror}); choose a staging path in a "
            "writable directory"
        ) from None
    try:
        os.unlink(path)
    except OSError as exc:
        os.close(fd)
        raise UsageError(
            f"staging {path}: cannot make it unnamed ({exc.strerror}); choose a staging path "
            "in a directory you may remove files from"
        ) from None
    return fd


__all__ = ["Staging", "physical_order"]
