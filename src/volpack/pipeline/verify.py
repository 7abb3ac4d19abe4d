"""``verify``: read the whole archive checking every frame, count and the digest; with a volume
given, compare it too (used blocks equal, unused blocks zero where the archive says so).

Raises on any failure; returns a VerifyResult. Library code: no printing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from volpack.errors import VolumeDiffers
from volpack.pipeline.common import Progress, scatter
from volpack.source import open_source


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    archive_uuid: str
    url: str
    frame_count: int
    archive_size: int
    digest: str
    against: str | None
    differences: tuple[tuple[int, int], ...]  # first differing byte ranges (volume offsets)
    elapsed: float
    # Blocks unused in the archive (a filesystem said so) that are not zero in the volume:
    # deleted or stale data, not a difference. Their count and first byte ranges.
    unused_nonzero_blocks: int = 0
    unused_nonzero: tuple[tuple[int, int], ...] = ()


def verify(
    archive_url: str,
    *,
    against: str | None = None,
    source_format: str = "auto",
    pvs: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> VerifyResult:
    """Read the whole archive checking every frame, count and the digest; with ``against``, also
    compare a volume with it: used blocks equal; unused blocks zero where the archive's detector
    found them holes or zeros, elsewhere (filesystem-free blocks) nonzero ones are only counted
    in the result. Raises on any failure."""
    # Stages load on first use, so that importing the pipeline stays fast (see backup.py).
    from volpack.format.reader import ArchiveStream
    from volpack.media import open_reader
    from volpack.targets.compare import VolumeComparer, zero_runs

    t0 = time.perf_counter()
    medium = open_reader(archive_url)
    comparer = None
    try:
        stream = ArchiveStream(medium)
        head = stream.read_head()
        h = head.header
        if against is not None:
            comparer = VolumeComparer(open_source(against, source_format, pvs=pvs), h.volume_size)
        sink = comparer.compare_at if comparer else (lambda off, data: None)
        scatter(stream, head.table, h.volume_size, sink, h.dense_size, progress)
        trailer = stream.read_tail()
        diffs: tuple[tuple[int, int], ...] = ()
        stale: tuple[int, tuple[tuple[int, int], ...]] = (0, ())
        if comparer is not None:
            comparer.check_unused(
                head.table.used_bytes(h.volume_size),
                zero_runs(head.desc.detection, h.volume_size),
                h.block_size,
            )
            diffs = comparer.differences()
            stale = comparer.stale()
    finally:
        medium.close()
        if comparer is not None:
            comparer.close()
    result = VerifyResult(
        archive_uuid=h.uuid,
        url=archive_url,
        frame_count=h.frame_count,
        archive_size=stream.offset,
        digest=trailer.digest.hex(),
        against=against,
        differences=diffs,
        elapsed=time.perf_counter() - t0,
        unused_nonzero_blocks=stale[0],
        unused_nonzero=stale[1],
    )
    if diffs:
        first = ", ".join(f"[{a}, {b})" for a, b in diffs[:5])
        raise VolumeDiffers(
            f"{against}: differs from archive {archive_url} in "
            f"{len(diffs)}{'+' if len(diffs) >= 64 else ''} byte range(s), first "
            f"{first}; the archive itself is intact"
        )
    return result
