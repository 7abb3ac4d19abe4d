"""The Source seam: what every volume in the pipeline offers (size, data runs, physical map, bytes).

A Source is opened read-only and reads bytes; it never decides which blocks are *used* (that is
detect/) and never knows about archives (that is format/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from volpack.extents import Extents

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


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the archive records about where a volume came from (JSON-able)."""

    kind: str  # "file", "blockdev", "qcow2", "lvm", …
    path: str
    details: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """A volume opened read-only."""

    @property
    def size(self) -> int:
        """Volume size in bytes."""
        ...

    @property
    def info(self) -> SourceInfo: ...

    def data_extents(self) -> Extents:
        """Byte runs that may hold data; everything else is known to read as zeros (holes)."""
        ...

    def physical_map(self) -> PhysicalMap: ...

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the volume bytes at ``offset``; bytes past ``size`` are an error."""
        ...

    def identity(self) -> tuple[object, ...]:
        """A value that changes when the volume changes (size, mtime, …) for the point-in-time check."""
        ...

    def close(self) -> None: ...
