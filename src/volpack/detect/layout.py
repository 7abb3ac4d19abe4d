"""Partition tables and filesystems: which detector knows which part of the volume.

``analyse`` returns regions that tile ``[0, size)``; a region with ``used=None`` is left to the
holes + zero-scan detectors. Damaged metadata never raises: it becomes a ``used=None`` region and
one warning line. Reads only, through ``read_at``.
"""

from __future__ import annotations

from typing import Any

from volpack.detect import partitions
from volpack.detect.base import ReadAt, Region
from volpack.detect.fs import FILESYSTEMS
from volpack.detect.fs._common import Area, FsDamaged
from volpack.extents import Extents

_FALLBACK = "holes and zero scan decide there"


def analyse(read_at: ReadAt, size: int) -> tuple[list[Region], list[str]]:
    """Regions tiling ``[0, size)`` in order, and warning lines."""
    warnings: list[str] = []
    if size <= 0:
        return [], warnings
    # A FAT or NTFS boot sector also ends in 55 AA; check it before reading sector 0 as an MBR.
    table = None
    if not _boot_sector_fs(read_at, size):
        table = partitions.read_table(read_at, size, warnings)
    if table is None:
        return filesystem_regions(read_at, 0, size, warnings), warnings

    items: list[tuple[int, int, list[Region]]] = []
    for start, end in table.table_runs:
        used = Extents.span(start, end)
        table_info = {"scheme": table.scheme, **table.details}
        items.append((start, end, [Region(start, end, table.scheme, used, table_info)]))
    for part in table.partitions:
        end = part.start + part.length
        info: dict[str, Any] = {"partition": part.number, "partition_type": part.type}
        if part.name:
            info["partition_name"] = part.name
        if part.uuid:
            info["partition_uuid"] = part.uuid
        regions = filesystem_regions(read_at, part.start, part.length, warnings)
        regions = [
            Region(r.start, r.end, r.detector, r.used, {**info, **r.details}) for r in regions
        ]
        items.append((part.start, end, regions))

    out: list[Region] = []
    cursor = 0
    for start, end, regions in sorted(items, key=lambda it: (it[0], it[1])):
        if start < cursor:
            warnings.append(
                f"volume: {regions[0].detector} range [{start}, {end}) overlaps the one before "
                f"it (ends at {cursor}); {_FALLBACK}"
            )
            if end > cursor:
                out.append(Region(cursor, end, "overlap", None))
                cursor = end
            continue
        if start > cursor:
            out.append(Region(cursor, start, "gap", None))
        out.extend(regions)
        cursor = end
    if cursor < size:
        out.append(Region(cursor, size, "gap", None))
    return out, warnings


def _boot_sector_fs(read_at: ReadAt, size: int) -> bool:
    from volpack.detect.fs import fat, ntfs

    area = Area(read_at, 0, size)
    return ntfs.probe(area) or fat.probe(area)


def filesystem_regions(
    read_at: ReadAt, start: int, length: int, warnings: list[str]
) -> list[Region]:
    """Regions tiling ``[start, start + length)``: the filesystem found there, or unknown."""
    end = start + length
    area = Area(read_at, start, length)
    found = [(name, mod) for name, mod in FILESYSTEMS if mod.probe(area)]
    if not found:
        return [Region(start, end, _container(area), None)]
    if len(found) > 1:
        names = ", ".join(name for name, _m in found)
        warnings.append(f"volume at byte {start}: signatures of {names} all present; {_FALLBACK}")
        return [Region(start, end, "ambiguous", None, {"signatures": [n for n, _m in found]})]
    name, mod = found[0]
    area.name = name
    try:
        result = mod.analyse(area)
    except FsDamaged as exc:
        warnings.append(f"{exc}; {_FALLBACK}")
        return [Region(start, end, name, None, {"fallback": str(exc)})]
    fs_end = start + result.size
    regions = [Region(start, fs_end, result.detector, result.used, result.details)]
    if fs_end < end:
        regions.append(Region(fs_end, end, "unknown", None, {"after": result.detector}))
    return regions


def _container(area: Area) -> str:
    """Name a volume whose blocks we cannot judge (shown by ``volpack map``; holes + zeros decide)."""
    if area.length >= 4096:
        head = area.read(0, 4096)
        if head[:6] == b"LUKS\xba\xbe":
            return "luks"
        for sector in range(4):
            label = head[sector * 512 : sector * 512 + 32]
            if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
                return "lvm2-pv"
    return "unknown"
