"""``verify``: read the whole archive checking every frame, count, the block hash table and the
digest; with a volume given, compare it too (used blocks equal, unused blocks zero where the
archive says so). With ``chain``, every base of an incremental too, each link and the state each
one leaves. Raises on any failure; returns a VerifyResult. Library code: no printing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from volpack.errors import VolumeDiffers
from volpack.pipeline.common import Progress, scatter
from volpack.source import open_source

if TYPE_CHECKING:
    from volpack.extents import Extents
    from volpack.format.keyring import Keyring
    from volpack.pipeline.chain import ChainView, Places


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
    level: str = "full"  # or "incremental"
    state_digest: str = ""
    # with chain=True: every archive verified, newest first (uuid, url)
    chain: tuple[tuple[str, str], ...] = ()
    encrypted: bool = False
    # False for an encrypted archive verified without a key: media integrity only (checksums of
    # the sealed bytes, copies, index, digest), nothing authenticated or decrypted
    authenticated: bool = True


def verify(
    archive_url: str,
    *,
    against: str | None = None,
    source_format: str = "auto",
    pvs: tuple[str, ...] = (),
    progress: Progress | None = None,
    chain: bool = False,
    places: Places | None = None,
    keyring: Keyring | None = None,
) -> VerifyResult:
    """Read the whole archive checking every frame, count, hash table and the digest; with
    ``against``, also compare a volume with it: used blocks equal; unused blocks zero where the
    archive's detector found them holes or zeros, elsewhere (filesystem-free blocks) nonzero ones
    are only counted in the result. With ``chain`` (and always with ``against`` for an
    incremental), every base down to the full too: each read whole, each link's UUID and digest,
    and each archive's hash table equal to its base's with its own changes applied. Raises on
    any failure.

    An encrypted archive is opened with ``keyring`` and then checked entirely, every record
    authenticated; without one only its media integrity is checked (``authenticated`` False):
    every checksum of the sealed bytes, the copies, the frame index and the digest."""
    result = _verify_one(
        archive_url, None if chain else against, source_format, pvs, progress, keyring
    )
    if result.level == "incremental" and (chain or against is not None):
        if keyring is not None:
            import dataclasses

            from volpack.pipeline.chain import Places

            places = dataclasses.replace(places or Places(), keyring=keyring)
        result = _verify_chain(
            archive_url, result, against, source_format, pvs, places, progress, keyring
        )
    return result


def _verify_one(
    archive_url: str,
    against: str | None,
    source_format: str,
    pvs: tuple[str, ...],
    progress: Progress | None,
    keyring: Keyring | None = None,
) -> VerifyResult:
    # Stages load on first use, so that importing the pipeline stays fast (see backup.py).
    from volpack.format.reader import ArchiveStream
    from volpack.media import open_reader
    from volpack.targets.compare import VolumeComparer, zero_runs

    t0 = time.perf_counter()
    medium = open_reader(archive_url)
    comparer = None
    try:
        # Without a key and nothing to compare, an encrypted archive is checked as media.
        public = keyring is None and against is None
        stream = ArchiveStream(medium, check_hashes=True, keyring=keyring, public=public)
        head = stream.read_head()
        h = head.header
        if h.incremental:
            against = None  # compared through the chain (the caller's second step)
        if against is not None:
            comparer = VolumeComparer(open_source(against, source_format, pvs=pvs), h.volume_size)
        sink = comparer.compare_at if comparer else (lambda off, data: None)
        if head.sealed:
            for dense_offset, _sealed in stream.frames(reuse=True):
                if progress is not None:
                    progress(
                        "verify",
                        dense_offset + h.frame_length(dense_offset // h.frame_size),
                        h.dense_size,
                    )
        else:
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
        level="incremental" if h.incremental else "full",
        state_digest=trailer.state_digest.hex(),
        encrypted=h.encrypted,
        authenticated=not head.sealed,
    )
    _raise_differences(diffs, against, archive_url)
    return result


def _raise_differences(
    diffs: tuple[tuple[int, int], ...], against: str | None, archive_url: str
) -> None:
    if diffs:
        first = ", ".join(f"[{a}, {b})" for a, b in diffs[:5])
        raise VolumeDiffers(
            f"{against}: differs from archive {archive_url} in "
            f"{len(diffs)}{'+' if len(diffs) >= 64 else ''} byte range(s), first "
            f"{first}; the archive itself is intact"
        )


def _verify_chain(
    archive_url: str,
    top: VerifyResult,
    against: str | None,
    source_format: str,
    pvs: tuple[str, ...],
    places: Places | None,
    progress: Progress | None,
    keyring: Keyring | None = None,
) -> VerifyResult:
    """Every base of the incremental ``top`` (already verified itself): read whole, linked, and
    the state each one leaves; then the chain's volume against ``against``."""
    import dataclasses

    from volpack.errors import ChainError
    from volpack.format.random_access import open_archive
    from volpack.pipeline.chain import ChainView, Places, resolve_chain
    from volpack.pipeline.prefetch import prefetched
    from volpack.targets.compare import VolumeComparer, zero_runs

    t0 = time.perf_counter()
    view = ChainView(
        resolve_chain(open_archive(archive_url, keyring=keyring), places or Places(keyring=keyring))
    )
    comparer = None
    try:
        done = [(top.archive_uuid, archive_url)]
        for arch in view.chain[1:]:
            r = _verify_one(arch.url, None, source_format, pvs, progress, keyring)
            if r.archive_uuid != arch.uuid or r.digest != arch.digest:
                raise ChainError(
                    f"{arch.url}: changed while being verified (now archive {r.archive_uuid}); "
                    "verify again"
                )
            done.append((arch.uuid, arch.url))
        for child, base in zip(view.chain, view.chain[1:], strict=False):
            assert child.hash_table is not None and base.hash_table is not None
            expected = base.hash_table.apply(child.covered, child.hash_table)
            if not expected.equals(child.hash_table):
                at = expected.first_difference(child.hash_table)
                raise ChainError(
                    f"{child.url}: its block hash table differs from its base {base.url}'s at "
                    f"hash block {at}, a block it does not hold: the archive does not apply to "
                    "this base; the chain is broken"
                )
        for k, child in enumerate(view.chain):
            if child.whole is not None and child.incremental:
                _check_partial(ChainView(view.chain[k:]), child.covered.subtract(child.whole))
        diffs: tuple[tuple[int, int], ...] = ()
        if against is not None:
            comparer = VolumeComparer(open_source(against, source_format, pvs=pvs), view.size)
            used = view.used_bytes()
            pieces = (
                [(off, min(8 << 20, end - off))]
                for start, end in used
                for off in range(start, end, 8 << 20)
            )
            ahead = prefetched(view, pieces)  # the chain's frames decode in a pool, as restore's
            try:
                for ((pos, _),), parts in ahead:
                    for part in parts:
                        comparer.compare_at(pos, part)
                        pos += len(part)
            finally:
                ahead.close()
            comparer.check_unused(used, zero_runs(view.desc.detection, view.size), view.block_size)
            diffs = comparer.differences()
    finally:
        view.close()
        if comparer is not None:
            comparer.close()
    _raise_differences(diffs, against, archive_url)
    return dataclasses.replace(
        top,
        against=against,
        differences=diffs,
        chain=tuple(done),
        elapsed=top.elapsed + time.perf_counter() - t0,
    )


def _check_partial(state: ChainView, partial: Extents) -> None:
    """A FINE incremental's hash blocks covered only in part: their entries are the hash of the
    state its chain leaves there, which only the chain's bytes can show (docs/format.md 3.4)."""
    from volpack.errors import CorruptArchive
    from volpack.format.hashtable import block_hash
    from volpack.pipeline.changes import block_indices

    link = state.top
    table = link.hash_table
    assert table is not None
    hbs = table.hash_block_size
    indices = block_indices(partial)
    recorded = table.hashes(indices)
    for index, want in zip(indices.tolist(), recorded, strict=True):
        start = index * hbs
        got = block_hash(state.read(start, min(hbs, state.size - start)), table.key)
        if got != want:
            raise CorruptArchive(
                f"{link.url}: hash block {index} (volume offset {start}) of the state its chain "
                f"leaves hashes to {got.hex()}, its table records {want.hex()}: the change hint "
                "it was made with was wrong there; restores give the bytes it holds, back up a "
                "new full to be sure of them"
            )
