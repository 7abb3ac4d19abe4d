"""The physical map value: runs of volume bytes → (device, physical offset), with flags.

A pure value (numpy arrays, no I/O) shared by the stages that make it (source/), carry it
(compact/ staging, format/ PMAP) and use it (targets/ physical layout); it imports nothing of
theirs, so none of them has to import another stage to name it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volpack.extents import Extents, unique

# Physical-map flags (recorded on the medium; values are part of the format, docs/format.md).
PM_UNKNOWN = 1  # the volume range is stored somewhere we could not locate (never guessed)
PM_UNWRITTEN = 2  # allocated but reads as zeros (FIEMAP unwritten, preallocated)
PM_COMPRESSED = 4  # stored compressed (qcow2 compressed cluster)
PM_ZERO = 8  # the format itself says zeros (qcow2 zero cluster)
PM_SHARED = 16  # physical range shared with another file (reflink)
PM_ENCODED = 32  # stored in a transformed encoding (inline, encrypted, tail-packed)


@dataclass(frozen=True, slots=True, eq=False)
class PhysicalMap:
    """Runs of volume bytes → (device, physical byte offset). Sorted by ``starts``, disjoint.

    ``device[i]`` indexes ``devices`` (a file path, ``dev:MAJ:MIN``, a PV name …), ``-1`` when not
    known; ``offsets[i]`` is ``-1`` when the location is not known.
    """

    devices: tuple[str, ...]
    starts: np.ndarray
    lengths: np.ndarray
    device: np.ndarray
    offsets: np.ndarray
    flags: np.ndarray

    @staticmethod
    def build(devices: tuple[str, ...], runs: list[tuple[int, int, int, int, int]]) -> PhysicalMap:
        """From ``(start, length, device_index, physical_offset, flags)`` tuples in any order."""
        arr = np.array(runs, dtype=np.int64).reshape(-1, 5)
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        return PhysicalMap(
            devices,
            arr[:, 0].copy(),
            arr[:, 1].copy(),
            arr[:, 2].astype(np.int32),
            arr[:, 3].copy(),
            arr[:, 4].astype(np.uint32),
        )

    @staticmethod
    def identity(device: str, size: int) -> PhysicalMap:
        """A raw device: volume offset == physical offset."""
        runs = [(0, size, 0, 0, 0)] if size else []
        return PhysicalMap.build((device,), runs)

    @staticmethod
    def unknown(size: int) -> PhysicalMap:
        runs = [(0, size, -1, -1, PM_UNKNOWN)] if size else []
        return PhysicalMap.build((), runs)

    def __len__(self) -> int:
        return int(self.starts.size)

    def locate(self, used: Extents) -> list[tuple[int, int, int, int, int]]:
        """Byte runs of ``used`` split at this map's boundaries, in volume order, as
        ``(start, length, device, physical_offset, flags)``; ``device = -1`` where unmapped."""
        cols = self.locate_arrays(used)
        return list(zip(*(c.tolist() for c in cols), strict=True))

    def locate_arrays(self, used: Extents) -> tuple[np.ndarray, ...]:
        """``locate`` as five int64 arrays (starts, lengths, device, physical, flags)."""
        ends = self.starts + self.lengths
        cuts = unique(np.concatenate([used.starts, used.ends, self.starts, ends]))
        a, b = cuts[:-1], cuts[1:]
        if len(used):
            k = np.searchsorted(used.starts, a, side="right") - 1
            inside = (k >= 0) & (a < used.ends[np.maximum(k, 0)])
            a, b = a[inside], b[inside]
        else:
            a, b = a[:0], b[:0]
        if not len(self):
            none = np.full(len(a), -1, np.int64)
            return a, b - a, none, none.copy(), np.zeros(len(a), np.int64)
        j = np.searchsorted(self.starts, a, side="right") - 1
        jj = np.maximum(j, 0)
        hit = (j >= 0) & (a < ends[jj])
        dev = np.where(hit, self.device[jj], -1).astype(np.int64)
        known = hit & (self.offsets[jj] >= 0)
        phys = np.where(known, self.offsets[jj] + (a - self.starts[jj]), -1).astype(np.int64)
        flags = np.where(hit, self.flags[jj], 0).astype(np.int64)
        return a, b - a, dev, phys, flags

    def runs(self) -> list[tuple[int, int, int, int, int]]:
        return list(
            zip(
                self.starts.tolist(),
                self.lengths.tolist(),
                self.device.tolist(),
                self.offsets.tolist(),
                self.flags.tolist(),
                strict=True,
            )
        )
