"""A live volume read over NBD (``nbd://HOST[:PORT]/EXPORT``, ``nbd+unix:///EXPORT?socket=PATH``).

Data runs come from the server's ``base:allocation`` context: a run flagged HOLE and ZERO is known
to read as zeros; a HOLE without ZERO has undefined contents, so it is data (read and zero-scanned);
no context means every byte is data. A ``qemu:dirty-bitmap:NAME`` context gives the dirty runs
of a bitmap, a hint for incrementals (checked there, never trusted here). Never guesses; never
decides which blocks are used.
"""

from __future__ import annotations

import numpy as np

from volpack import nbdwire as w
from volpack.errors import SourceError
from volpack.extents import Extents
from volpack.source.base import PM_UNWRITTEN, PhysicalMap, SourceInfo
from volpack.source.nbd_client import NbdClient

_UNUSED = w.STATE_HOLE | w.STATE_ZERO


class NbdSource:
    """An NBD export as a volume, opened read-only (no write is ever sent)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._status: list[tuple[int, int, int]] | None = None
        self._status_read = False
        self._client = NbdClient(url, SourceError)
        self._size = self._client.export.size

    @property
    def size(self) -> int:
        return self._size

    @property
    def info(self) -> SourceInfo:
        details: dict[str, object] = {"export": self._client.addr.export}
        details.update(self._client.export.details())
        return SourceInfo("nbd", self.url, details)

    def identity(self) -> tuple[object, ...]:
        # NBD tells no modification time or generation: only the size can show a change. A live
        # export must be a point-in-time view (a snapshot, a fleecing node) for the backup to be.
        return (self._size,)

    def _runs(self) -> list[tuple[int, int, int]] | None:
        if not self._status_read:
            self._status = self._client.block_status()
            self._status_read = True
        return self._status

    def data_extents(self) -> Extents:
        runs = self._runs()
        if runs is None:
            return Extents.span(0, self._size)
        arr = np.array(runs, dtype=np.int64).reshape(-1, 3)
        keep = (arr[:, 2] & _UNUSED) != _UNUSED
        return Extents.from_arrays(arr[keep, 0], arr[keep, 0] + arr[keep, 1])

    def dirty_bitmaps(self) -> dict[str, Extents]:
        """Dirty byte runs of every bitmap the server exports (the qcow2 source's shape)."""
        names = [
            c[len(w.QEMU_DIRTY_BITMAP) :]
            for c in self._client.export.contexts
            if c.startswith(w.QEMU_DIRTY_BITMAP)
        ]
        return {name: self.dirty_extents(name) for name in names}

    def dirty_extents(self, bitmap: str) -> Extents:
        """Byte runs the server's ``qemu:dirty-bitmap:BITMAP`` context calls dirty."""
        runs = self._client.block_status(w.QEMU_DIRTY_BITMAP + bitmap)
        if runs is None:
            offered = [
                c[len(w.QEMU_DIRTY_BITMAP) :]
                for c in self._client.export.contexts
                if c.startswith(w.QEMU_DIRTY_BITMAP)
            ]
            raise SourceError(
                f"{self.url}: export {self._client.addr.export!r} offers no dirty bitmap "
                f"{bitmap!r} (it offers {', '.join(map(repr, offered)) or 'none'}); expose it "
                f"with qemu-nbd -B {bitmap} or block-export-add with "
                f'"bitmaps": ["{bitmap}"] (libvirt pull backups name it backup-DISK)'
            )
        arr = np.array(runs, dtype=np.int64).reshape(-1, 3)
        dirty = (arr[:, 2] & w.STATE_DIRTY) != 0
        return Extents.from_arrays(arr[dirty, 0], arr[dirty, 0] + arr[dirty, 1])

    def physical_map(self) -> PhysicalMap:
        """Export offsets on the export itself: where the server stores them is not told."""
        runs = self._runs()
        if runs is None:
            return PhysicalMap.identity(self.url, self._size)
        out = [
            (start, length, 0, start, PM_UNWRITTEN if flags & w.STATE_ZERO else 0)
            for start, length, flags in runs
            if flags & _UNUSED != _UNUSED
        ]
        return PhysicalMap.build((self.url,), out)

    def read_into(self, offset: int, buf: memoryview) -> None:
        if offset + len(buf) > self._size:
            raise SourceError(
                f"{self.url}: read of {len(buf)} bytes at {offset} past the end "
                f"({self._size} bytes)"
            )
        self._client.pread(buf, offset)

    def close(self) -> None:
        self._client.close()


def open_nbd(url: str) -> NbdSource:
    return NbdSource(url)
