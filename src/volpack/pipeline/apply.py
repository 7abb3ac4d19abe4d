"""``restore --apply``: bring a volume that holds an incremental's base state to the incremental's
state in place, reading the incremental in one pass (file, pipe, tape, S3).

Before the first write: the archive's head, its base (found and checked like a chain restore's,
for its block hash table), the target's size, and the target's bytes against the base's hash
table (a sample, or every hash block with ``verify_target="full"``); when the base is not found
(a chain on tape), the whole target hashed against the state digest the base link records. A
target that is not in the base's state is refused untouched. After the last write the changed
hash blocks are checked against the incremental's own table. Library code: no printing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from volpack.errors import ChainError, TargetError, UsageError
from volpack.extents import Extents
from volpack.format.hashtable import HashTable, block_hash
from volpack.identity import Role, check_distinct
from volpack.pipeline.changes import sample_blocks
from volpack.pipeline.common import Progress, medium_roles, scatter

if TYPE_CHECKING:
    from volpack.format import records as R
    from volpack.pipeline.chain import Places
    from volpack.pipeline.restore import RestoreResult
    from volpack.targets.inplace import InPlaceTarget

VERIFY_TARGET = ("sample", "full")


def _check_state(
    tgt: InPlaceTarget, table: HashTable, blocks: Extents, full: bool, *, before: bool
) -> int:
    """Hash the target's hash blocks (all of ``blocks``, or a sample) against ``table``; returns
    how many were checked, raises TargetError naming the first that differs."""
    if full:
        indices = np.concatenate(
            [np.arange(s, e, dtype=np.int64) for s, e in blocks] or [np.zeros(0, np.int64)]
        )
    else:
        indices = sample_blocks(blocks, table.hash_block_size)
    hbs = table.hash_block_size
    recorded = table.hashes(indices)
    for index, expected in zip(indices.tolist(), recorded, strict=True):
        data = tgt.read(index * hbs, table.block_length(index))
        if block_hash(data, table.key) == expected:
            continue
        if before:
            raise TargetError(
                f"{tgt.path}: hash block {index} (bytes {index * hbs}..) does not hold the base's "
                "state, so this incremental does not apply to it; nothing was written; restore "
                "the chain to a new target instead (without --apply), or apply the archives in "
                "order"
            )
        raise TargetError(
            f"{tgt.path}: hash block {index} (bytes {index * hbs}..) does not read back as the "
            "archive holds it after applying; the target is not reliable: restore the chain to "
            "a new target"
        )
    return len(indices)


def _check_whole_state(tgt: InPlaceTarget, h: R.Header) -> None:
    """Without the base archive: hash every hash block of the target and compare the state digest
    with the one the incremental's base link records (one digest: it says only that the target
    differs, not where)."""
    link = h.base
    assert link is not None
    hbs, size = h.hash_block_size, link.volume_size
    pairs = (
        (i, block_hash(tgt.read(i * hbs, min(hbs, size - i * hbs)))) for i in range(-(-size // hbs))
    )
    if HashTable.from_pairs(hbs, size, pairs).state_digest() != link.state_digest:
        raise TargetError(
            f"{tgt.path}: its {size} B hashed whole (the base archive was not found) do not give "
            f"the base's state {link.state_digest.hex()[:16]}…, so this incremental does not "
            "apply to it; nothing was written; apply the archives in order, or give the bases' "
            "place with --search"
        )


def apply(
    archive_url: str,
    target: str,
    *,
    force: bool = False,
    verify_target: str = "sample",
    places: Places | None = None,
    progress: Progress | None = None,
    expect_uuid: str | None = None,
) -> RestoreResult:
    """Apply the incremental at ``archive_url`` onto ``target`` (a file or block device holding
    its base's state), in place. ``force`` is required: the target is changed where it stands.
    An encrypted incremental and its base are opened with the keyring of ``places``."""
    from volpack.format.random_access import Archive
    from volpack.format.reader import ArchiveStream
    from volpack.media import open_reader
    from volpack.pipeline.chain import Places, find_base
    from volpack.pipeline.restore import RestoreResult, check_expected
    from volpack.targets.inplace import InPlaceTarget

    if verify_target not in VERIFY_TARGET:
        raise UsageError(f"--verify-target {verify_target}: use sample or full")
    if not force:
        raise TargetError(
            f"{target}: --apply changes it in place; add --force to confirm that it holds the "
            "base's state and may be changed"
        )
    t0 = time.perf_counter()
    check_distinct(
        [
            *medium_roles(archive_url, "the archive being applied", "archive", "/dev/stdin"),
            Role(target, "the volume being changed", "target"),
        ],
        TargetError,
    )
    medium = open_reader(archive_url)
    opened: dict[str, Archive] = {}
    tgt: InPlaceTarget | None = None
    keyring = places.keyring if places is not None else None  # an encrypted chain's keys
    try:
        if medium.size is not None:
            # footer and trailer first: refuse incomplete archives up front
            Archive(medium, keyring=keyring)
        stream = ArchiveStream(medium, keyring=keyring)
        head = stream.read_head()
        h = head.header
        check_expected(h, archive_url, expect_uuid)
        if not h.incremental or h.base is None:
            raise UsageError(
                f"{archive_url}: is a full archive; --apply is for incrementals: restore it "
                "without --apply"
            )
        try:
            base_table = find_base(h, archive_url, places or Places(), opened).hash_table
        except ChainError:
            base_table = None  # e.g. a chain on tape: the link's state digest checks the target
        tgt = InPlaceTarget(target)
        need = max(h.volume_size, h.base.volume_size) if tgt.device else h.base.volume_size
        if (tgt.device and tgt.size < need) or (not tgt.device and tgt.size != need):
            raise TargetError(
                f"{target}: holds {tgt.size} B, the base's volume is {h.base.volume_size} B"
                + (f" and the new one {h.volume_size} B" if tgt.device else "")
                + "; it is not the base's volume: restore the chain to a new target instead"
            )
        if base_table is None:
            _check_whole_state(tgt, h)
        else:
            base_blocks = Extents.span(0, base_table.hash_blocks)
            _check_state(tgt, base_table, base_blocks, verify_target == "full", before=True)
        # Checked: now change it. Size first (a file that grows takes the new tail as zeros).
        if h.volume_size > tgt.size:
            tgt.resize(h.volume_size)
        bs = h.block_size
        for start, end in head.zeros.scale_in(bs).clip(0, h.volume_size):
            tgt.zero(start, end)
        scatter(stream, head.table, h.volume_size, tgt.write_at, h.dense_size, progress)
        stream.read_tail()
        if h.volume_size < tgt.size:
            tgt.resize(h.volume_size)
        assert stream.hash_table is not None
        _check_state(tgt, stream.hash_table, head.covered, verify_target == "full", before=False)
        tgt.finish()
    finally:
        if tgt is not None:
            tgt.close()
        medium.close()
        for arch in opened.values():
            arch.close()
    return RestoreResult(
        archive_uuid=h.uuid,
        target=target,
        volume_size=h.volume_size,
        used_bytes=head.table.used_bytes(h.volume_size).total(),
        frame_count=h.frame_count,
        elapsed=time.perf_counter() - t0,
    )
