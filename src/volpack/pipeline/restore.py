"""``restore``: Medium → ArchiveStream → head (header, tables) → Target → scatter frames → tail.

The sequence is written once, in ``restore_to``; the verbs differ only in the target they open
once the head is known (a file, block device or qcow2 image; the PVs of ``--layout physical``).
An incremental is restored through its chain (``restore_chain_to``: every link checked first,
each block written once, from the newest archive that holds it), or applied in place onto a
target that holds its base's state (``pipeline.apply``).
Nothing is written before the header and tables checked out; on any failure the target is aborted
(a pre-existing target is never deleted). Library code: no printing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from volpack.errors import ArchiveReplaced, TargetError, UsageError
from volpack.format import records as R
from volpack.identity import Role, check_distinct
from volpack.pipeline.common import Progress, medium_roles, scatter
from volpack.targets.base import Target

if TYPE_CHECKING:
    from volpack.format.keyring import Keyring
    from volpack.format.random_access import Archive
    from volpack.format.reader import Head
    from volpack.pipeline.chain import Places
    from volpack.targets.physical import PhysicalTarget

T = TypeVar("T", bound=Target)


@dataclass(frozen=True, slots=True, kw_only=True)
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
    places: Places | None = None,
    keyring: Keyring | None = None,
) -> RestoreResult:
    """Restore the volume in ``archive_url`` to ``target`` (thin file or block device, an NBD
    export ``nbd://…``, or a qcow2 image with ``target_format="qcow2"``). With ``expect_uuid``
    (restore by catalog id), a different archive there is refused before the target is touched.
    A new file gets permission bits ``mode`` (default 0600); one replaced with ``force`` keeps its
    own. An incremental is restored with its whole chain; its bases are looked for in its own
    directory or prefix, the catalog and ``places``. An encrypted archive (and chain) is opened
    with ``keyring``; a key that opens none of its slots is refused before the target is
    touched."""
    # Stages load on first use, so that importing the pipeline stays fast (see backup.py).
    from volpack.targets.raw import open_raw_target

    nbd = target.startswith(("nbd://", "nbd+unix://"))

    def open_target(head: Head) -> Target:
        if nbd:
            from volpack.targets.nbd import open_nbd_target

            if target_format != "raw":
                raise UsageError(
                    f"--target-format {target_format}: an NBD export takes raw volume bytes; "
                    "choose the image format when exporting it (qemu-nbd -f)"
                )
            return open_nbd_target(
                target, force=force, allow_smaller=allow_smaller, assume_zeroed=assume_zeroed
            )
        if target_format == "raw":
            return open_raw_target(
                target,
                force=force,
                allow_smaller=allow_smaller,
                assume_zeroed=assume_zeroed,
                mode=mode,
            )
        if target_format == "qcow2":
            from volpack.targets.qcow2 import open_qcow2_target

            return open_qcow2_target(target, force=force, mode=mode)
        raise UsageError(f"--target-format {target_format}: use raw or qcow2")

    from volpack.pipeline.chain import Places

    # An NBD export occupies no local file or device that could overlap the archive.
    roles = [] if nbd else [Role(target, "the restore target", "target")]
    done = restore_to(
        archive_url,
        open_target,
        roles=roles,
        progress=progress,
        expect_uuid=expect_uuid,
        places=places or Places(),
        keyring=keyring,
    )
    return done.result(target)


def restore_physical(
    archive_url: str,
    pv_paths: tuple[str, ...],
    *,
    force: bool = False,
    progress: Progress | None = None,
    expect_uuid: str | None = None,
    keyring: Keyring | None = None,
) -> RestoreResult:
    """Restore ``archive_url`` onto ``pv_paths`` at its recorded physical offsets
    (``--layout physical``), in one pass over the archive (files, pipes, tape, S3). With
    ``expect_uuid``, another archive there is refused before any PV is opened."""
    from volpack.targets.physical import open_physical_for_archive

    def open_target(head: Head) -> PhysicalTarget:
        if head.header.incremental:
            raise UsageError(
                f"{archive_url}: is an incremental archive; --layout physical writes one archive's "
                "physical map: restore it in volume layout, or merge the chain into a full first"
            )
        return open_physical_for_archive(archive_url, head, pv_paths, force=force)

    roles = [Role(p, "a physical volume being written", "physical volume path") for p in pv_paths]
    done = restore_to(
        archive_url,
        open_target,
        roles=roles,
        progress=progress,
        expect_uuid=expect_uuid,
        keyring=keyring,
    )
    return done.result(", ".join(done.target.paths))  # the PVs written, in the recorded order


@dataclass(frozen=True, slots=True, eq=False)
class Restored(Generic[T]):
    """What ``restore_to`` did: the archive's header, the finished target, the bytes written."""

    header: R.Header
    target: T
    used_bytes: int
    elapsed: float

    def result(self, target: str) -> RestoreResult:
        h = self.header
        return RestoreResult(
            archive_uuid=h.uuid,
            target=target,
            volume_size=h.volume_size,
            used_bytes=self.used_bytes,
            frame_count=h.frame_count,
            elapsed=self.elapsed,
        )


def restore_to(
    archive_url: str,
    open_target: Callable[[Head], T],
    *,
    roles: Sequence[Role],
    progress: Progress | None = None,
    expect_uuid: str | None = None,
    places: Places | None = None,
    keyring: Keyring | None = None,
) -> Restored[T]:
    """The one restore sequence: refuse a target that is the archive (``roles``); check footer and
    trailer first where the medium has a size; read and check the head; refuse an archive that is
    not ``expect_uuid``; only then ``open_target(head)``, ``prepare``, scatter the frames, check
    the tail and ``finish``; ``abort`` the target on any failure. An incremental goes through
    ``restore_chain_to`` (random access); from a stream it needs ``apply``."""
    from volpack.format.random_access import Archive
    from volpack.format.reader import ArchiveStream
    from volpack.media import open_reader
    from volpack.media.base import MediumReader
    from volpack.pipeline.chain import Places

    t0 = time.perf_counter()
    check_distinct(
        [*medium_roles(archive_url, "the archive being restored", "archive", "/dev/stdin"), *roles],
        TargetError,
    )
    medium: MediumReader | None = open_reader(archive_url)
    assert medium is not None
    tgt: T | None = None
    try:
        if medium.size is not None:
            # footer and trailer first: refuse incomplete archives up front
            top = Archive(medium, keyring=keyring)
            if top.incremental:
                check_expected(top.header, archive_url, expect_uuid)
                medium = None  # the chain owns it now
                where = places or Places()
                if where.keyring is None:
                    where = dataclasses.replace(where, keyring=keyring)
                return restore_chain_to(top, open_target, where, progress, t0)
        stream = ArchiveStream(medium, keyring=keyring)
        head = stream.read_head()
        h = head.header
        check_expected(h, archive_url, expect_uuid)
        if h.incremental:
            raise UsageError(
                f"{archive_url}: is an incremental archive (chain {h.chain_id[:8]}… sequence "
                f"{h.chain_seq}) read as a stream; restore it from its file or URL so its bases "
                "can be read, or apply it onto a target holding its base with --apply"
            )
        used_bytes = head.table.used_bytes(h.volume_size)
        tgt = open_target(head)
        tgt.prepare(h.volume_size, used_bytes)
        scatter(stream, head.table, h.volume_size, tgt.write_at, h.dense_size, progress)
        stream.read_tail()
        tgt.finish()
    except BaseException:
        if tgt is not None:
            tgt.abort()
        raise
    finally:
        if medium is not None:
            medium.close()
    return Restored(
        header=h, target=tgt, used_bytes=used_bytes.total(), elapsed=time.perf_counter() - t0
    )


_CHUNK = 8 << 20


def restore_chain_to(
    top: Archive,
    open_target: Callable[[Head], T],
    places: Places,
    progress: Progress | None,
    t0: float,
) -> Restored[T]:
    """Restore the state an incremental's chain leaves: resolve and check every link (UUID,
    digest, geometry) before the target is opened, then write each used byte once, in volume
    order, from the newest archive holding it; the rest is unused (zero)."""
    from volpack.format.reader import Head
    from volpack.pipeline.chain import ChainView, resolve_chain
    from volpack.pipeline.prefetch import prefetched

    try:
        view = ChainView(resolve_chain(top, places))
    except BaseException:
        top.close()
        raise
    tgt: T | None = None
    try:
        h = top.header
        head = Head(
            header=h,
            header_bytes=top.trailer.header_bytes,
            desc=top.desc,
            pmap=top.physical_map,
            table=top.table,
            head_records=top.trailer.head_records,
            zeros=top.zeros,
            covered=top.covered,
            whole=top.whole,
        )
        used = view.used_bytes()
        tgt = open_target(head)
        tgt.prepare(h.volume_size, used)
        total, done = used.total(), 0
        pieces = (
            [(off, min(_CHUNK, end - off))]
            for start, end in used
            for off in range(start, end, _CHUNK)
        )
        # The frames of the next pieces (from every link) decode in a small pool while this
        # thread writes: one frame at a time, a 10-link chain restored 1.3-1.5x slower than a full.
        views = prefetched(view, pieces)
        try:
            for ((off, _),), parts in views:
                pos = off
                for part in parts:
                    tgt.write_at(pos, part)
                    pos += len(part)
                done += pos - off
                if progress is not None:
                    progress("restore", done, total)
        finally:
            views.close()
        tgt.finish()
    except BaseException:
        if tgt is not None:
            tgt.abort()
        raise
    finally:
        view.close()
    return Restored(header=h, target=tgt, used_bytes=total, elapsed=time.perf_counter() - t0)


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
