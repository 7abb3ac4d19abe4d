"""Compare a volume with an archive (verify --against): used bytes equal; unused bytes zero where
the archive's detector made them unused *because* they were zero, else only reported.

Fed the archive's frames in volume order; unused ranges are checked only where the volume has
data (holes are zeros by definition). Keeps the first differing ranges, merged. Reads only.
"""

from __future__ import annotations

import numpy as np

from volpack.buffers import buffer
from volpack.extents import Extents
from volpack.format.description import DetectionDescription
from volpack.source.base import Source

MAX_DIFFS = 64
_CHUNK = 8 << 20
_ZEROS = bytes(_CHUNK)

# Detectors (as recorded in an archive's detection regions) whose unused blocks were zeros when
# the archive was made: a hole, a block the zero scan found all zero, or none at all (all-used).
# Nonzero bytes there mean the volume changed. Any other detector (a filesystem's or partition
# table's allocation map) drops blocks that may still hold deleted or stale data.
ZERO_BY_DEFINITION = ("holes", "holes+zeros", "all-used")


def zero_by_definition(recorded: object, volume_size: int) -> Extents:
    """``zero_runs`` of a detection description as recorded in JSON (anything unusable: all)."""
    return zero_runs(DetectionDescription.from_json(recorded), volume_size)


def zero_runs(detection: DetectionDescription, volume_size: int) -> Extents:
    """Byte runs of the volume where the archive's unused blocks must read as zeros, from the
    recorded ``detection``; all of it when the archive records no usable regions."""
    if not detection.regions or not detection.complete:
        return Extents.span(0, volume_size)
    spans = [(r.start, r.end) for r in detection.regions if r.detector in ZERO_BY_DEFINITION]
    return Extents.from_pairs(spans).clip(0, volume_size)


class VolumeComparer:
    def __init__(self, source: Source, volume_size: int) -> None:
        self.source = source
        self.volume_size = volume_size
        self._diffs: list[list[int]] = []
        self._stale: list[list[int]] = []  # unused, not zero, where that is no difference
        self._stale_blocks = 0
        self._last_stale_block = -1
        self._buf = buffer(_CHUNK)
        if source.size != volume_size:
            lo, hi = sorted((source.size, volume_size))
            self._note(lo, hi)

    def _note(self, start: int, end: int) -> None:
        if self._diffs and self._diffs[-1][1] >= start:
            self._diffs[-1][1] = max(self._diffs[-1][1], end)
        elif len(self._diffs) < MAX_DIFFS:
            self._diffs.append([start, end])

    def _mismatch(self, offset: int, mine: memoryview, theirs: memoryview | bytes) -> None:
        a = np.frombuffer(mine, np.uint8)
        b = np.frombuffer(theirs, np.uint8)
        bad = np.flatnonzero(a != b)
        if bad.size:
            self._note(offset + int(bad[0]), offset + int(bad[-1]) + 1)

    def compare_at(self, offset: int, data: memoryview) -> None:
        end = min(offset + len(data), self.source.size)
        pos = 0
        while offset + pos < end:
            n = min(_CHUNK, end - offset - pos)
            view = self._buf[:n]
            self.source.read_into(offset + pos, view)
            if view != data[pos : pos + n]:
                self._mismatch(offset + pos, view, data[pos : pos + n])
            pos += n

    def check_unused(
        self, used_bytes: Extents, must_be_zero: Extents | None = None, block_size: int = 4096
    ) -> None:
        """Read the volume's data where the archive holds nothing. Inside ``must_be_zero`` (default:
        everywhere) nonzero bytes are differences; elsewhere they are counted as stale blocks."""
        size = min(self.source.size, self.volume_size)
        candidates = self.source.data_extents().clip(0, size).subtract(used_bytes)
        if must_be_zero is None:
            must_be_zero = Extents.span(0, size)
        for start, end in candidates.intersect(must_be_zero):
            for off in range(start, end, _CHUNK):
                n = min(_CHUNK, end - off)
                view = self._read(off, n)
                if view != _ZEROS[:n]:
                    self._mismatch(off, view, _ZEROS[:n])
        for start, end in candidates.subtract(must_be_zero):
            for off in range(start, end, _CHUNK):
                n = min(_CHUNK, end - off)
                view = self._read(off, n)
                if view != _ZEROS[:n]:
                    self._count_stale(off, view, block_size)

    def _read(self, offset: int, n: int) -> memoryview:
        view = self._buf[:n]
        self.source.read_into(offset, view)
        return view

    def _count_stale(self, offset: int, view: memoryview, block_size: int) -> None:
        """Count the archive blocks in ``view`` holding any nonzero byte; keep their first runs."""
        first = offset // block_size
        lead = offset - first * block_size
        nblocks = -(-(lead + len(view)) // block_size)
        padded = np.zeros(nblocks * block_size, np.uint8)
        padded[lead : lead + len(view)] = np.frombuffer(view, np.uint8)
        blocks = np.flatnonzero(padded.reshape(nblocks, block_size).any(axis=1)) + first
        if not blocks.size:
            return
        # Runs are read in increasing order: a block cut by a chunk boundary counts once.
        self._stale_blocks += int(blocks.size) - int(int(blocks[0]) == self._last_stale_block)
        self._last_stale_block = int(blocks[-1])
        breaks = np.flatnonzero(np.diff(blocks) != 1)
        run_starts = blocks[np.concatenate(([0], breaks + 1))]
        run_ends = blocks[np.concatenate((breaks, [blocks.size - 1]))] + 1
        end = offset + len(view)
        for b0, b1 in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
            s, e = max(b0 * block_size, offset), min(b1 * block_size, end)
            if self._stale and self._stale[-1][1] >= s:
                self._stale[-1][1] = max(self._stale[-1][1], e)
            elif len(self._stale) < MAX_DIFFS:
                self._stale.append([s, e])

    def stale(self) -> tuple[int, tuple[tuple[int, int], ...]]:
        """(blocks the archive holds as unused that are not zero, their first byte ranges)."""
        return self._stale_blocks, tuple((a, b) for a, b in self._stale)

    def differences(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted((a, b) for a, b in self._diffs))

    def close(self) -> None:
        self.source.close()
