"""Volumes in: raw files, block devices, and (by format) qcow2 and LVM.

``open_source`` picks the reader; each reader yields size, data runs, physical map and bytes.
"""

from __future__ import annotations

from volpack.source.base import PhysicalMap, Source, SourceInfo

__all__ = ["PhysicalMap", "Source", "SourceInfo", "open_source"]


def open_source(path: str, source_format: str = "auto") -> Source:
    """Open ``path`` read-only as a volume. ``source_format``: auto | raw (more formats register here)."""
    from volpack.source.raw import open_raw

    return open_raw(path)
