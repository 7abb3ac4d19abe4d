"""``backup``: Source → used map → AddressTable → [Staging] → ArchiveWriter → Medium.

The archive is committed only after the source proved unchanged; any failure aborts the medium
(a file medium keeps an older archive at the same name). Library code: no printing.
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
from volpack.errors import SourceError, UsageError
from volpack.format import records as R
from volpack.format.description import (
    ArchiveDescription,
    DetectionDescription,
    OptionsDescription,
    RegionDescription,
    SourceDescription,
)
from volpack.format.pmap import encode_pmap
from volpack.identity import Role, check_distinct
from volpack.pipeline.common import (
    DEFAULT_BLOCK,
    DEFAULT_COMPRESS,
    DEFAULT_FRAME,
    Progress,
    check_block_size,
    medium_roles,
    parse_compress,
)
from volpack.source import open_source
from volpack.source.base import Source, SourceInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupResult:
    """A finished backup. Sizes in bytes: ``volume_size`` of the source, ``dense_size`` of the
    used blocks laid end to end (whole blocks), ``used_bytes`` of them within the volume,
    ``stored_bytes`` of frame data after compression, ``archive_size`` of the whole archive.
    ``elapsed`` in seconds; ``source`` and ``detection`` as recorded in the archive's DESC."""

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
    # Imported here, not at the top: ``import volpack.pipeline`` (every verb) stays fast for the
    # CLI, which loads only the stages the verb it runs needs.
    from volpack.compact.dense import DenseReader
    from volpack.compact.staging import Staging
    from volpack.format.writer import ArchiveWriter
    from volpack.media import open_writer

    check_block_size(block_size, frame_size)
    codec, level = parse_compress(compress)
    t0 = time.perf_counter()
    if not allow_mounted:
        _check_not_in_use(source, pvs)
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
        created = time.time_ns()
        header = R.Header(
            uuid=str(uuidlib.uuid4()),
            block_size=block_size,
            frame_size=frame_size,
            volume_size=src.size,
            used_blocks=table.used_blocks,
            created_ns=created,
            codec=codec,
            codec_level=level,
        )
        desc = _description(src.info, detect, detection, compress, staging is not None)
        head = (
            R.encode_desc(desc.to_json())
            + encode_pmap(pmap)
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
        archive_uuid=header.uuid,
        url=medium.location,
        volume_size=header.volume_size,
        block_size=block_size,
        used_blocks=header.used_blocks,
        dense_size=header.dense_size,
        archive_size=written.archive_size,
        stored_bytes=written.stored_bytes,
        frame_count=written.frame_count,
        digest=written.digest,
        elapsed=time.perf_counter() - t0,
        created_ns=created,
        source=desc.source.to_json(),
        detection=desc.detection.to_json(),
        staging=staging,
        used_bytes=table.used_bytes(header.volume_size).total(),
    )


def _check_not_in_use(source: str, pvs: tuple[str, ...]) -> None:
    from volpack.detect.mounted import check_not_mounted

    if source.startswith(("nbd://", "nbd+unix://")):
        return  # a live export: its server, not this host's mounts, says whether it is in use
    # An LVM volume is in use when one of its PVs is (an active VG on a loop device).
    for path in pvs if source.startswith("lvm:") else (source,):
        check_not_mounted(path)


def _description(
    info: SourceInfo, detect: str, detection: Detection, compress: str, staged: bool
) -> ArchiveDescription:
    """The archive's DESC: this tool and host, the source, how its used map was made, options."""
    return ArchiveDescription(
        tool=f"volpack {__version__}",
        host=socket.gethostname(),
        source=SourceDescription(kind=info.kind, path=info.path, details=info.details),
        detection=DetectionDescription(
            mode=detect,
            regions=tuple(
                RegionDescription(r.start, r.end, r.detector, r.details) for r in detection.regions
            ),
            warnings=tuple(detection.warnings),
        ),
        options=OptionsDescription(compress=compress, staging=staged),
    )


def _source_roles(
    source: str, source_format: str, pvs: tuple[str, ...], details: dict[str, Any]
) -> list[Role]:
    """The files and devices a backup reads: the source, a qcow2 image's backing chain and data
    file, or an LVM volume's PVs."""
    if source.startswith(("nbd://", "nbd+unix://")):
        return []  # a network export occupies no local file or device volpack could overlap
    if source_format == "lvm" or source.startswith("lvm:"):
        return [Role(pv, f"a physical volume of the source {source}", "--pv") for pv in pvs]
    roles = [Role(source, "the source being backed up", "source")]
    for layer in details.get("backing_chain") or ():
        roles.append(Role(layer["path"], f"a backing file of the source {source}", "source"))
    if details.get("data_file"):
        roles.append(Role(details["data_file"], f"the data file of the source {source}", "source"))
    return roles


def _check_unchanged(src: Source, before: tuple[object, ...], path: str) -> None:
    if src.identity() != before:
        raise SourceError(
            f"{path}: the volume changed during the backup (size or modification "
            "time); back up a snapshot or an unmounted, inactive volume"
        )
