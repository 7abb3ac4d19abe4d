"""What the NBD server and the FUSE mount serve: a named, read-only volume address space.

Any object with ``size``, ``read(offset, length)`` and ``used_bytes()`` will do — the random-access
archive reader in production, a tiny in-memory volume in tests. Nothing here does I/O of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from volpack.extents import Extents


class Volume(Protocol):
    """A read-only volume address space (``volpack.format.random_access.Archive`` fits)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; zeros where nothing is stored."""
        ...

    def used_bytes(self) -> Extents:
        """Byte runs that hold data; everything else reads as zeros."""
        ...


def read_views(volume: Volume, offset: int, length: int) -> list[memoryview] | list[bytes]:
    """The bytes of a read as consecutive buffers: zero-copy slices when the volume offers
    ``read_views`` (the archive does: slices of its cached frames), else one ``read``."""
    views = getattr(volume, "read_views", None)
    if views is not None:
        return views(offset, length)
    return [volume.read(offset, length)]


@dataclass(frozen=True, slots=True, eq=False)
class Export:
    """One export: its name, the volume, and the used map, fetched once (answers block status)."""

    name: str
    volume: Volume
    size: int
    allocated: Extents
    description: str = ""
    frame_size: int = 0  # the volume's decode unit (an archive frame); 0: reads allocate as asked

    @staticmethod
    def of(name: str, volume: Volume, description: str = "") -> Export:
        size = int(volume.size)
        frame = int(getattr(volume, "frame_size", 0) or 0)
        return Export(name, volume, size, volume.used_bytes().clip(0, size), description, frame)

    def read_cost(self, length: int) -> int:
        """The most memory reading ``length`` bytes can take before they are sent.

        An archive decodes whole frames: a run of ``length`` dense bytes touches at most
        ``ceil(length / frame) + 1`` of them, each pinned until sent, plus one compressed copy
        while a frame is being decoded. Any other volume returns the bytes asked for.
        """
        f = self.frame_size
        if f <= 0:
            return length
        return f * (-(-length // f) + 2)

    def status_runs(
        self, offset: int, end: int, limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Consecutive runs covering ``[offset, end)``: (starts, lengths, used?) in address order.

        With ``limit``, the range is cut short before the used run after the first ``limit`` ones,
        so at most ``2 * limit + 1`` runs are built however many the range holds.
        """
        if limit is not None:
            runs = self.allocated
            first = int(np.searchsorted(runs.ends, offset, side="right"))
            if first + limit < len(runs):
                end = min(end, int(runs.starts[first + limit]))
        used = self.allocated.clip(offset, end)
        holes = used.complement(offset, end)
        starts = np.concatenate([used.starts, holes.starts])
        ends = np.concatenate([used.ends, holes.ends])
        is_used = np.concatenate([np.ones(len(used), bool), np.zeros(len(holes), bool)])
        order = np.argsort(starts, kind="stable")
        starts = starts[order]
        return starts, ends[order] - starts, is_used[order]
