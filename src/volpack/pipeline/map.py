"""``map``: the used map and physical map of a volume, without writing anything.

Source → used map (detect/) and physical map → VolumeMap. Library code: no printing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from volpack.detect import Detection, used_map
from volpack.physmap import PhysicalMap
from volpack.pipeline.common import DEFAULT_BLOCK, DEFAULT_FRAME, Progress, check_block_size
from volpack.source import open_source


@dataclass(frozen=True, slots=True, eq=False)
class VolumeMap:
    path: str
    size: int
    source: dict[str, Any]
    detection: Detection
    physical_map: PhysicalMap
    elapsed: float


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
            source,
            src.size,
            {"kind": info.kind, "path": info.path, "details": info.details},
            detection,
            pmap,
            time.perf_counter() - t0,
        )
    finally:
        src.close()
