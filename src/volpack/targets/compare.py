"""Compare a volume with an archive (verify --against): used bytes equal, unused bytes zero.

Fed the archive's frames in volume order; unused ranges are checked only where the volume has
data (holes are zeros by definition). Keeps the first differing ranges, merged.
"""

from __future__ import annotations

import numpy as np

from volpack.extents import Extents
from volpack.source.base import Source

MAX_DIFFS = 64
_CHUNK = 8 << 20


class VolumeComparer:
    def __init__(self, source: Source, volume_size: int) -> None:
        self.source = source
        self.volume_size = volume_size
        self._diffs: list[list[int]] = []
        self._buf = bytearray(_CHUNK)
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
            view = memoryview(self._buf)[:n]
            self.source.read_into(offset + pos, view)
            if view != data[pos : pos + n]:
                self._mismatch(offset + pos, view, data[pos : pos + n])
            pos += n

    def check_unused(self, used_bytes: Extents) -> None:
        size = min(self.source.size, self.volume_size)
        candidates = self.source.data_extents().clip(0, size).subtract(used_bytes)
        zeros = bytes(_CHUNK)
        for start, end in candidates:
            for off in range(start, end, _CHUNK):
                n = min(_CHUNK, end - off)
                view = memoryview(self._buf)[:n]
                self.source.read_into(off, view)
                if view != zeros[:n]:
                    self._mismatch(off, view, zeros[:n])

    def differences(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted((a, b) for a, b in self._diffs))

    def close(self) -> None:
        self.source.close()
