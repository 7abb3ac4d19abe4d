"""Used-block detectors: holes (SEEK_DATA), zero scan, filesystem bitmaps and partition tables.

``used_map`` combines them into the volume's used map; a detector may only ever *remove* blocks
that another detector proves unused (a hole is never used). Detectors read, never write.
"""

from __future__ import annotations

from collections.abc import Callable

from volpack.detect.base import Detection, Region
from volpack.errors import UsageError
from volpack.extents import Extents
from volpack.source.base import Source

DETECT_MODES = ("auto", "fs", "holes", "zeros", "all-used")

__all__ = ["DETECT_MODES", "Detection", "Region", "used_map"]


def _read_at(source: Source) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        buf = bytearray(length)
        end = min(offset + length, source.size)
        if end > offset:
            source.read_into(offset, memoryview(buf)[: end - offset])
        return bytes(buf)

    return read_at


def used_map(
    source: Source,
    block_size: int,
    mode: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> Detection:
    """The used map of ``source`` in ``block_size`` blocks, and which detector decided where.

    auto/fs: partition tables and filesystems decide their regions; the rest falls back to holes
    and zero scan. holes: SEEK_DATA only. zeros: holes, then drop all-zero blocks. all-used: every
    block. ``progress`` receives bytes scanned so far.
    """
    from volpack.detect.zeros import nonzero_blocks

    if mode not in DETECT_MODES:
        raise UsageError(f"--detect {mode}: unknown detector; use one of {', '.join(DETECT_MODES)}")
    size = source.size
    nblocks = -(-size // block_size)
    if mode == "all-used":
        return Detection(block_size, Extents.span(0, nblocks), (Region(0, size, "all-used", None),))
    data = source.data_extents().scale_out(block_size).clip(0, nblocks)
    if mode == "holes":
        return Detection(block_size, data, (Region(0, size, "holes", None),))
    if mode == "zeros":
        used = nonzero_blocks(source, data, block_size, progress)
        return Detection(block_size, used, (Region(0, size, "holes+zeros", None),))

    from volpack.detect.layout import analyse

    regions, warnings = analyse(_read_at(source), size)
    known = Extents.empty()
    unknown = Extents.empty()
    out: list[Region] = []
    for r in regions:
        if r.used is None:
            unknown = unknown.union(Extents.span(r.start, r.end))
            out.append(Region(r.start, r.end, "holes+zeros", None, r.details))
        else:
            known = known.union(r.used)
            out.append(r)
    if mode == "fs" and not any(r.used is not None for r in regions):
        warnings = [
            *warnings,
            "no partition table or filesystem recognised; used holes + zero "
            "scan for the whole volume",
        ]
    # A region's used bytes widen to whole blocks; a block shared with a fallback region is
    # scanned too, so neither side can lose data.
    known_blocks = known.scale_out(block_size).intersect(data)
    scan = unknown.scale_out(block_size).intersect(data).subtract(known_blocks)
    used = known_blocks.union(nonzero_blocks(source, scan, block_size, progress))
    return Detection(block_size, used, tuple(out), tuple(warnings))
