"""Wires the stages for backup, restore, verify and map; returns typed results.

backup:  Source → used map → AddressTable → [Staging] → ArchiveWriter → Medium
restore: Medium → ArchiveStream → tables → scatter frames → Target
Library code: no printing; progress and notices go through callbacks.
"""

from __future__ import annotations

import socket
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from volpack import __version__
from volpack.compact.table import AddressTable
from volpack.detect import Detection, used_map
from volpack.errors import (
    ArchiveReplaced,
    SourceError,
    TargetError,
    UsageError,
    VolumeDiffers,
)
from volpack.format import records as R
from volpack.identity import Role, check_distinct
from volpack.source import open_source
from volpack.source.base import PhysicalMap
from volpack.targets.base import Target

DEFAULT_BLOCK = 4096
DEFAULT_FRAME = 4 << 20
DEFAULT_COMPRESS = "zstd:1"

# progress(phase, done, total): phase is "scan", "stage", "write", "restore", "verify".
Progress = Callable[[str, int, int], None]


def parse_compress(text: str) -> tuple[int, int]:
    """'none' | 'zstd' | 'zstd:LEVEL' → (codec, level)."""
    name, _, level = text.partition(":")
    if name == "none" and not level:
        return R.CODEC_NONE, 0
    if name == "zstd":
        try:
            lvl = int(level) if level else 1
        except ValueError:
            lvl = 99
        if not -7 <= lvl <= 22:
            raise UsageError(f"--compress {text}: zstd level must be a number from -7 to 22")
        return R.CODEC_ZSTD, lvl
    raise UsageError(f"--compress {text}: unknown codec; use none, zstd or zstd:LEVEL")


def check_block_size(block_size: int, frame_size: int) -> None:
    if not (block_size & (block_size - 1) == 0 and R.MIN_BLOCK <= block_size <= R.MAX_BLOCK):
        raise UsageError(f"--block-size {block_size}: must be a power of two from 512 to 1 MiB")
    if not (frame_size & (frame_size - 1) == 0 and R.MIN_FRAME <= frame_size <= R.MAX_FRAME):
        raise UsageError(f"--frame-size {frame_size}: must be a power of two from 64 KiB to 64 MiB")
    if frame_size < block_size:
        raise UsageError(f"--frame-size {frame_size} is smaller than --block-size {block_size}")


def _region_json(detection: Detection) -> list[dict[str, Any]]:
    return [
        {"start": r.start, "end": r.end, "detector": r.detector, "details": r.details}
        for r in detection.regions
    ]


def pmap_array(pmap: PhysicalMap):  # -> np.ndarray of PMAP_DTYPE
    import numpy as np

    runs = np.zeros(len(pmap), R.PMAP_DTYPE)
    runs["volume_offset"] = pmap.starts
    runs["length"] = pmap.lengths
    runs["physical"] = np.where(
        pmap.offsets < 0, np.uint64(R.UNKNOWN_OFFSET), pmap.offsets.astype(np.uint64)
    )
    runs["device"] = pmap.device
    runs["flags"] = pmap.flags
    return runs


# -- map ----------------------------------------------------------------------------------------
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


# -- backup -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BackupResult:
    archive_uuid: str
    url: str
    volume_size: int
    block_size: int
    used_blocks: int
    dense_size: int
    archive_size: int
    stored_bytes: int
    frame_count: int
    digest: str
    elapsed: float
    created_ns: int
    source: dict[str, Any]
    detection: dict[str, Any] = field(default_factory=dict)
    staging: str | None = None
    used_bytes: int = 0  # used blocks' bytes within the volume (the last block may be partial)


def backup(
    source: str,
    archive_url: str,
    *,
    block_size: int = DEFAULT_BLOCK,
    detect: str = "auto",
    compress: str = DEFAULT_COMPRESS,
    frame_size: int = DEFAULT_FRAME,
    staging: str | None = None,
    force: bool = False,
    mode: int | None = None,
    source_format: str = "auto",
    pvs: tuple[str, ...] = (),
    allow_mounted: bool = False,
    threads: int = 2,
    progress: Progress | None = None,
    on_source_released: Callable[[], None] | None = None,
) -> BackupResult:
    """Back up the used blocks of ``source`` to a new archive at ``archive_url``. A new archive
    file gets permission bits ``mode`` (default 0600); one replaced with ``force`` keeps its own."""
    from volpack.compact.dense import DenseReader
    from volpack.compact.staging import Staging
    from volpack.format.writer import ArchiveWriter
    from volpack.media import open_writer

    check_block_size(block_size, frame_size)
    codec, level = parse_compress(compress)
    t0 = time.perf_counter()
    if not allow_mounted:
        from volpack.detect.mounted import check_not_mounted

        # An LVM volume is in use when one of its PVs is (an active VG on a loop device).
        for path in pvs if source.startswith("lvm:") else (source,):
            check_not_mounted(path)
    src = open_source(source, source_format, pvs=pvs)
    medium = None
    stage = None
    try:
        check_distinct(
            [
                *_source_roles(source, source_format, pvs, src.info.details),
                *medium_roles(
                    archive_url, "the archive being written", "archive path", "/dev/stdout"
                ),
                *([Role(staging, "the staging area", "staging path")] if staging else []),
            ],
            UsageError,
        )
        before = src.identity()
        medium = open_writer(archive_url, force=force, mode=mode)
        scan = (lambda done: progress("scan", done, src.size)) if progress else None
        detection = used_map(src, block_size, detect, scan)
        table = AddressTable.from_used(detection.used, block_size)
        pmap = src.physical_map()
        info = src.info
        created = time.time_ns()
        header = R.Header(
            str(uuidlib.uuid4()),
            block_size,
            frame_size,
            src.size,
            table.used_blocks,
            created,
            codec,
            level,
        )
        source_desc = {"kind": info.kind, "path": info.path, "details": info.details}
        detection_desc = {
            "mode": detect,
            "regions": _region_json(detection),
            "warnings": list(detection.warnings),
        }
        desc = {
            "tool": f"volpack {__version__}",
            "host": socket.gethostname(),
            "source": source_desc,
            "detection": detection_desc,
            "options": {"compress": compress, "staging": staging is not None},
        }
        head = (
            R.encode_desc(desc)
            + R.encode_pmap(pmap.devices, pmap_array(pmap))
            + R.encode_atab(table.volume_block, table.count)
        )
        writer = ArchiveWriter(medium, header, head, threads=threads)
        total = table.dense_size
        if staging is not None:
            stage = Staging(staging, total, force=force)
            fill = (lambda done: progress("stage", done, total)) if progress else None
            stage.fill(src, table, pmap, fill)
            _check_unchanged(src, before, source)
            src.close()
            if on_source_released is not None:
                on_source_released()
            read = stage.read
        else:
            read = DenseReader(src, table).read
        fs = frame_size
        writer.write_head()
        writer.write_frames(
            lambda seq, view: read(seq * fs, view),
            (lambda done: progress("write", done, total)) if progress else None,
        )
        if staging is None:
            _check_unchanged(src, before, source)
        written = writer.finish()
        medium.commit()
    except BaseException:
        if medium is not None:
            medium.abort()
        raise
    finally:
        src.close()
        if stage is not None:
            stage.close()
    return BackupResult(
        header.uuid,
        archive_url,
        header.volume_size,
        block_size,
        header.used_blocks,
        header.dense_size,
        written.archive_size,
        written.stored_bytes,
        written.frame_count,
        written.digest,
        time.perf_counter() - t0,
        created,
        source_desc,
        detection_desc,
        staging,
        table.used_bytes(header.volume_size).total(),
    )


def _source_roles(
    source: str, source_format: str, pvs: tuple[str, ...], details: dict[str, Any]
) -> list[Role]:
    """The files and devices a backup reads: the source, a qcow2 image's backing chain and data
    file, or an LVM volume's PVs."""
    if source_format == "lvm" or source.startswith("lvm:"):
        return [Role(pv, f"a physical volume of the source {source}", "--pv") for pv in pvs]
    roles = [Role(source, "the source being backed up", "source")]
    for layer in details.get("backing_chain") or ():
        roles.append(Role(layer["path"], f"a backing file of the source {source}", "source"))
    if details.get("data_file"):
        roles.append(Role(details["data_file"], f"the data file of the source {source}", "source"))
    return roles


def medium_roles(url: str, what: str, choose: str, stdio: str) -> list[Role]:
    """The local file an archive URL names (``stdio``, /dev/stdout or /dev/stdin, for '-': a
    redirection may point it at the source or target); nothing for remote media."""
    from volpack.media import scheme_of
    from volpack.media.file import path_of

    scheme = scheme_of(url)
    if scheme == "-":
        return [Role(stdio, what, choose)]
    return [Role(path_of(url), what, choose)] if scheme == "file" else []


def _check_unchanged(src: Any, before: tuple[object, ...], path: str) -> None:
    if src.identity() != before:
        raise SourceError(
            f"{path}: the volume changed during the backup (size or modification "
            "time); back up a snapshot or an unmounted, inactive volume"
        )


# -- restore ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RestoreResult:
    archive_uuid: str
    target: str
    volume_size: int
    used_bytes: int
    frame_count: int
    elapsed: float


def restore(
    archive_url: str,
    target: str,
    *,
    force: bool = False,
    allow_smaller: bool = False,
    assume_zeroed: bool = False,
    target_format: str = "raw",
    mode: int | None = None,
    progress: Progress | None = None,
    expect_uuid: str | None = None,
) -> RestoreResult:
    """Restore the volume in ``archive_url`` to ``target`` (thin file or block device).
    With ``expect_uuid`` (restore by catalog id), a different archive there is refused before
    the target is touched. A new file gets permission bits ``mode`` (default 0600); one replaced
    with ``force`` keeps its own."""
    from volpack.format.random_access import Archive
    from volpack.format.reader import ArchiveStream
    from volpack.media import open_reader
    from volpack.targets.raw import open_raw_target

    t0 = time.perf_counter()
    check_distinct(
        [
            *medium_roles(archive_url, "the archive being restored", "archive", "/dev/stdin"),
            Role(target, "the restore target", "target"),
        ],
        TargetError,
    )
    medium = open_reader(archive_url)
    tgt: Target | None = None
    try:
        if medium.size is not None:
            Archive(medium)  # footer and trailer first: refuse incomplete archives up front
        stream = ArchiveStream(medium)
        head = stream.read_head()
        h = head.header
        check_expected(h, archive_url, expect_uuid)
        used_bytes = head.table.used_bytes(h.volume_size)
        if target_format == "raw":
            tgt = open_raw_target(
                target,
                force=force,
                allow_smaller=allow_smaller,
                assume_zeroed=assume_zeroed,
                mode=mode,
            )
        elif target_format == "qcow2":
            from volpack.targets.qcow2 import open_qcow2_target

            tgt = open_qcow2_target(target, force=force, mode=mode)
        else:
            raise UsageError(f"--target-format {target_format}: use raw or qcow2")
        tgt.prepare(h.volume_size, used_bytes)
        _scatter(stream, head.table, h.volume_size, tgt.write_at, h.dense_size, progress)
        stream.read_tail()
        tgt.finish()
    except BaseException:
        if tgt is not None:
            tgt.abort()
        raise
    finally:
        medium.close()
    return RestoreResult(
        h.uuid, target, h.volume_size, used_bytes.total(), h.frame_count, time.perf_counter() - t0
    )


def check_expected(header: R.Header, archive_url: str, expect_uuid: str | None) -> None:
    """Refuse an archive that is not the one asked for (its location was written over since)."""
    if expect_uuid is None or header.uuid == expect_uuid:
        return
    made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(header.created_ns / 1e9))
    raise ArchiveReplaced(
        f"{archive_url}: holds archive {header.uuid} (made {made}), not archive {expect_uuid} "
        "that was asked for: it was overwritten since the catalog recorded it; nothing was "
        f"written; to restore the archive there now give its location "
        f"('volpack restore {archive_url} TARGET'), or pick another with 'volpack list'"
    )


def _scatter(
    stream: Any,
    table: AddressTable,
    volume_size: int,
    write_at: Callable[[int, memoryview], None],
    total: int,
    progress: Progress | None,
) -> None:
    """Frames in dense order → writes at volume offsets (increasing), clipped to the volume."""
    for dense_offset, raw in stream.frames():
        vs, lens, ds = table.dense_to_volume(dense_offset, dense_offset + len(raw))
        for v, n, d in zip(vs.tolist(), lens.tolist(), ds.tolist(), strict=True):
            n = min(n, volume_size - v)
            if n > 0:
                pos = d - dense_offset
                write_at(v, raw[pos : pos + n])
        if progress is not None:
            progress("restore", dense_offset + len(raw), total)


# -- verify -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
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
    from volpack.format.reader import ArchiveStream
    from volpack.media import open_reader
    from volpack.targets.compare import VolumeComparer, zero_by_definition

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
        _scatter(stream, head.table, h.volume_size, sink, h.dense_size, progress)
        trailer = stream.read_tail()
        diffs: tuple[tuple[int, int], ...] = ()
        stale: tuple[int, tuple[tuple[int, int], ...]] = (0, ())
        if comparer is not None:
            comparer.check_unused(
                head.table.used_bytes(h.volume_size),
                zero_by_definition(head.desc.get("detection"), h.volume_size),
                h.block_size,
            )
            diffs = comparer.differences()
            stale = comparer.stale()
    finally:
        medium.close()
        if comparer is not None:
            comparer.close()
    result = VerifyResult(
        h.uuid,
        archive_url,
        h.frame_count,
        stream.offset,
        trailer.digest.hex(),
        against,
        diffs,
        time.perf_counter() - t0,
        *stale,
    )
    if diffs:
        first = ", ".join(f"[{a}, {b})" for a, b in diffs[:5])
        raise VolumeDiffers(
            f"{against}: differs from archive {archive_url} in "
            f"{len(diffs)}{'+' if len(diffs) >= 64 else ''} byte range(s), first "
            f"{first}; the archive itself is intact"
        )
    return result


__all__ = [
    "BackupResult",
    "RestoreResult",
    "VerifyResult",
    "VolumeMap",
    "backup",
    "map_volume",
    "restore",
    "verify",
]
