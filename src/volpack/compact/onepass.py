"""The dense copy and the zero scan in one read: frames are filled straight from the source's
known and candidate blocks in volume order, all-zero candidate blocks are dropped as they are
read, and the used map is learnt on the way (the archive's head, which needs it, is written
last: ``ArchiveWriter.write_stream``). Reads the source; knows nothing of the archive's bytes.
"""

from __future__ import annotations

import array
from collections.abc import Callable

import numpy as np

from volpack.detect.zeros import nonzero_mask
from volpack.extents import Extents
from volpack.source.base import Source


class TooManyRuns(Exception):
    """The used map has more runs than the head's room holds: the caller writes the archive
    the other way (scan, then copy). Internal to the backup pipeline, never shown."""


class Framer:
    """Fills frames with the used blocks of ``known`` (used, read as they are) and
    ``candidates`` (used when not all zero), which must not overlap; the short last block of
    the volume is padded with zeros to a whole block, as in the dense volume."""

    def __init__(
        self,
        source: Source,
        known: Extents,
        candidates: Extents,
        block_size: int,
        max_runs: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.block_size = block_size
        self.max_runs = max_runs
        self.progress = progress
        runs = sorted([(s, e, True) for s, e in known] + [(s, e, False) for s, e in candidates])
        self._runs = runs
        self._next = 0  # the next run of ``_runs`` to start
        self._current: tuple[int, int, bool] | None = None
        self._starts = array.array("q")  # the used map learnt so far, touching runs merged
        self._ends = array.array("q")
        self.dense_size = 0
        self.read_bytes = 0

    def fill(self, raw: memoryview) -> tuple[int, tuple[list[int], list[int], list[int]]]:
        """Fill ``raw`` (a frame: whole blocks) from its start with the next used blocks: the
        bytes filled (fewer than ``raw`` only for the last frame, 0 when none are left) and the
        volume runs in them (``ArchiveWriter.write_stream``)."""
        bs = self.block_size
        size = self.source.size
        room = len(raw) // bs
        filled = 0  # blocks
        volume: list[int] = []
        length: list[int] = []
        offset: list[int] = []
        while filled < room:
            if self._current is None:
                if self._next == len(self._runs):
                    break
                self._current = self._runs[self._next]
                self._next += 1
            b0, end, whole = self._current
            k = min(end - b0, room - filled)
            at = filled * bs
            view = raw[at : at + k * bs]
            got = min(k * bs, size - b0 * bs)
            self.source.read_into(b0 * bs, view[:got])
            if got < len(view):
                view[got:] = bytes(len(view) - got)
            self.read_bytes += got
            self._current = (b0 + k, end, whole) if b0 + k < end else None
            mask = None if whole else nonzero_mask(view, bs)
            if mask is None or mask.all():
                found = [(b0, k)]
            elif not mask.any():
                found = []
            else:
                kept = np.flatnonzero(mask)
                blocks = np.frombuffer(view, np.uint8).reshape(k, bs)
                blocks[: kept.size] = blocks[kept]  # the used blocks, moved down in order
                cut = np.flatnonzero(np.diff(kept) != 1) + 1
                first = np.append(0, cut)
                counts = np.diff(np.append(first, kept.size))
                found = list(zip((b0 + kept[first]).tolist(), counts.tolist(), strict=True))
            for start, count in found:
                self._learn(start, count)
                if volume and volume[-1] + length[-1] == start * bs:
                    length[-1] += count * bs
                else:
                    volume.append(start * bs)
                    length.append(count * bs)
                    offset.append(filled * bs)
                filled += count
            if self.progress is not None:
                self.progress(self.read_bytes)
        self.dense_size += filled * bs
        return filled * bs, (volume, length, offset)

    def _learn(self, start: int, count: int) -> None:
        if self._ends and self._ends[-1] == start:
            self._ends[-1] = start + count
            return
        if len(self._starts) >= self.max_runs:
            raise TooManyRuns(f"more than {self.max_runs} runs of used blocks")
        self._starts.append(start)
        self._ends.append(start + count)

    @property
    def exhausted(self) -> bool:
        """Whether every known and candidate block has been read."""
        return self._current is None and self._next == len(self._runs)

    def used(self) -> Extents:
        """The used map of every block filled (call after the last frame)."""
        return Extents.from_arrays(
            np.frombuffer(self._starts, np.int64), np.frombuffer(self._ends, np.int64)
        )
