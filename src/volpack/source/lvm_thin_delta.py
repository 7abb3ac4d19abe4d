"""LVM thin mappings as a change hint: which thin blocks map differently in two thin devices.

Two devices of one pool that map a block to the same data block hold the same bytes there (a
shared data block is copied before it is written), so the blocks mapped differently, or in one
device only, are all that can have changed — what ``thin_delta`` reports. Pure functions on
mappings; nothing here reads a device or decides whether a hint is trusted (pipeline/changes.py).
"""

from __future__ import annotations

import blake3
import numpy as np

from volpack.extents import Extents, unique
from volpack.source.lvm_thin import ThinMap


def mapping_digest(tmap: ThinMap) -> str:
    """A digest of a device's whole mapping (thin block → data block runs), so a later backup can
    find a device that still maps exactly what an archive read."""
    h = blake3.blake3(max_threads=1)
    for part in (tmap.virt, tmap.data, tmap.length):
        h.update(np.ascontiguousarray(part, dtype="<i8").tobytes())
    return h.hexdigest()


def _at(tmap: ThinMap, points: np.ndarray) -> np.ndarray:
    """The data block each thin block in ``points`` maps to, or -1 where it is unmapped."""
    if tmap.virt.size == 0:
        return np.full(points.size, -1, np.int64)
    run = np.searchsorted(tmap.virt, points, side="right") - 1
    safe = np.maximum(run, 0)
    inside = (run >= 0) & (points < tmap.virt[safe] + tmap.length[safe])
    return np.where(inside, tmap.data[safe] + (points - tmap.virt[safe]), -1)


def mapping_delta(old: ThinMap, new: ThinMap) -> Extents:
    """Runs of thin blocks mapped to different data blocks, or mapped in one device only.

    Every run boundary of either map splits the block range into pieces inside which both maps
    are each unmapped or linear, so comparing each piece at its start decides the whole piece."""
    points = unique(
        np.concatenate([old.virt, old.virt + old.length, new.virt, new.virt + new.length]).astype(
            np.int64
        )
    )
    if points.size < 2:
        return Extents.empty()
    starts, ends = points[:-1], points[1:]
    differ = _at(old, starts) != _at(new, starts)
    return Extents.from_arrays(starts[differ], ends[differ])
