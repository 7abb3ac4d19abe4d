"""Used-block detectors: holes (SEEK_DATA), zero scan, filesystem bitmaps and partition tables.

``used_map`` combines them into the volume's used map; a detector may only ever *remove* blocks
that another detector proves unused (a hole is never used). Detectors read, never write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from volpack.detect.base import Detection, Region
from volpack.errors import UsageError
from volpack.extents import Extents
from volpack.source.base import Source

DETECT_MODES = ("auto", "fs", "holes", "zeros", "all-used")

__all__ = ["DETECT_MODES", "Detection", "Plan", "Region", "plan_used", "used_map"]


def _read_at(source: Source) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        buf = bytearray(length)
        end = min(offset + length, source.size)
        if end > offset:
            source.read_into(offset, memoryview(buf)[: end - offset])
        return bytes(buf)

    return read_at


@dataclass(frozen=True)
class Plan:
    """What the detectors decide without reading data: blocks known used, and the candidate
    blocks the zero scan decides (disjoint)."""

    block_size: int
    known: Extents
    scan: Extents
    regions: tuple[Region, ...]
    warnings: tuple[str, ...] = ()

    def detection(self, used: Extents) -> Detection:
        return Detection(self.block_size, used, self.regions, self.warnings)


def plan_used(source: Source, block_size: int, mode: str = "auto") -> Plan:
    """The used map of ``source`` up to the zero scan (see :func:`used_map`)."""
    if mode not in DETECT_MODES:
        raise UsageError(f"--detect {mode}: unknown detector; use one of {', '.join(DETECT_MODES)}")
    size = source.size
    nblocks = -(-size // block_size)
    none = Extents.empty()
    if mode == "all-used":
        return Plan(
            block_size, Extents.span(0, nblocks), none, (Region(0, size, "all-used", None),)
        )
    data = source.data_extents().scale_out(block_size).clip(0, nblocks)
    if mode == "holes":
        return Plan(block_size, data, none, (Region(0, size, "holes", None),))
    if mode == "zeros":
        return Plan(block_size, none, data, (Region(0, size, "holes+zeros", None),))

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
    return Plan(block_size, known_blocks, scan, tuple(out), tuple(warnings))


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
    from volpack.detect.zeros import scan_used

    plan = plan_used(source, block_size, mode)
    return plan.detection(scan_used(source, plan.known, plan.scan, block_size, None, progress))
