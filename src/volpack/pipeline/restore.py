"""``restore``: Medium → ArchiveStream → head (header, tables) → Target → scatter frames → tail.

Nothing is written before the header and tables checked out; on any failure the target is
aborted (a pre-existing target is never deleted). Library code: no printing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from volpack.errors import ArchiveReplaced, TargetError, UsageError
from volpack.format import records as R
from volpack.identity import Role, check_distinct
from volpack.pipeline.common import Progress, medium_roles, scatter
from volpack.targets.base import Target


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
        scatter(stream, head.table, h.volume_size, tgt.write_at, h.dense_size, progress)
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
