"""``map``: the used map and physical map of a volume, without writing anything.

Source → used map (detect/) and physical map → VolumeMap. Library code: no printing.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import Any

from volpack.detect import Detection, used_map
from volpack.physmap import PM_COMPRESSED, PM_UNWRITTEN, PM_ZERO, PhysicalMap
from volpack.pipeline.common import DEFAULT_BLOCK, DEFAULT_FRAME, Progress, check_block_size
from volpack.source import open_source


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class VolumeMap:
    path: str
    size: int
    source: dict[str, Any]
    detection: Detection
    physical_map: PhysicalMap
    elapsed: float

    def entries(self) -> list[dict[str, Any]]:
        """One entry per run, in volume order: used runs split at physical-map and detector-region
        boundaries (with location and flags); unused runs say whether they read as zeros (a hole or
        a zero cluster) or still hold stale data the detector found unused."""
        bs = self.detection.block_size
        used = self.detection.used.scale_in(bs).clip(0, self.size)
        regions = self.detection.regions
        starts = [r.start for r in regions]
        pmap = self.physical_map
        out: list[dict[str, Any]] = []
        for start, length, dev, phys, flags in pmap.locate(used):
            i = max(0, bisect.bisect_right(starts, start) - 1)
            entry: dict[str, Any] = {
                "start": start,
                "length": length,
                "data": True,
                "detector": regions[i].detector if regions else "?",
            }
            if dev >= 0:
                entry["device"] = pmap.devices[dev]
            if phys >= 0:
                entry["offset"] = phys
            if flags & PM_COMPRESSED:
                entry["compressed"] = True
            if flags:
                entry["flags"] = flags
            out.append(entry)
        for start, length, dev, _, flags in pmap.locate(used.complement(0, self.size)):
            zero = dev < 0 or bool(flags & (PM_ZERO | PM_UNWRITTEN))
            out.append({"start": start, "length": length, "data": False, "zero": zero})
        out.sort(key=lambda e: e["start"])
        merged: list[dict[str, Any]] = []
        for e in out:  # unused neighbours with the same zero flag read alike: one entry
            last = merged[-1] if merged else None
            if (
                last is not None
                and not e["data"]
                and not last["data"]
                and last["zero"] == e["zero"]
                and last["start"] + last["length"] == e["start"]
            ):
                last["length"] += e["length"]
            else:
                merged.append(e)
        return merged


def map_volume(
    source: str,
    *,
    block_size: int = DEFAULT_BLOCK,
    detect: str = "auto",
    source_format: str = "auto",
    pvs: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> VolumeMap:
    """Used map and physical map of a volume, without writing anything."""
    check_block_size(block_size, DEFAULT_FRAME)
    t0 = time.perf_counter()
    src = open_source(source, source_format, pvs=pvs)
    try:
        scan = (lambda done: progress("scan", done, src.size)) if progress else None
        detection = used_map(src, block_size, detect, scan)
        pmap = src.physical_map()
        info = src.info
        return VolumeMap(
            path=source,
            size=src.size,
            source={"kind": info.kind, "path": info.path, "details": info.details},
            detection=detection,
            physical_map=pmap,
            elapsed=time.perf_counter() - t0,
        )
    finally:
        src.close()
