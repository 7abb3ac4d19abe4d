"""``merge``: ChainView → AddressTable → ArchiveWriter → Medium, never reading the source.

A synthetic full holds the state an incremental's chain leaves; with ``onto`` (a base in the
chain) the result is one incremental on that base holding what every newer link changed. Each
block is copied from the newest archive holding it. The result is committed only when its block
hash table equals the top archive's: the merge left exactly the state the chain leaves.
Library code: no printing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from volpack.compact.table import AddressTable
from volpack.errors import ChainError, UsageError
from volpack.extents import Extents
from volpack.format import records as R
from volpack.format.description import ChangesDescription
from volpack.format.hashtable import HashBuilder
from volpack.format.pmap import encode_pmap
from volpack.identity import check_distinct
from volpack.pipeline.chain import ChainView, Places, resolve_chain
from volpack.pipeline.common import DEFAULT_COMPRESS, Progress, medium_roles, parse_compress
from volpack.pipeline.prefetch import prefetched

if TYPE_CHECKING:
    from volpack.crypto import EncryptKeys


def _names(text: str, uuid: str, url: str) -> bool:
    """Whether ``text`` (a UUID or its prefix, or a location in any spelling) names the archive."""
    from volpack import media
    from volpack.errors import VolpackError

    if len(text) >= 4 and uuid.replace("-", "").startswith(text.replace("-", "").lower()):
        return True
    try:
        return media.canonical_url(text) == media.canonical_url(url)
    except VolpackError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeResult:
    archive_uuid: str
    url: str
    level: str  # "full" or "incremental"
    merged: tuple[str, ...]  # uuids of the archives merged, newest first
    base_uuid: str | None
    volume_size: int
    used_bytes: int
    archive_size: int
    digest: str
    state_digest: str
    elapsed: float


def merge(
    archive_url: str,
    out_url: str,
    *,
    onto: str | None = None,
    compress: str = DEFAULT_COMPRESS,
    force: bool = False,
    mode: int | None = None,
    threads: int = 2,
    places: Places | None = None,
    progress: Progress | None = None,
    encrypt: EncryptKeys | None = None,
) -> MergeResult:
    """Merge the chain of the incremental at ``archive_url`` into a new archive at ``out_url``: a
    full, or with ``onto`` (the UUID or URL of a base in the chain) an incremental on that base.
    An encrypted chain (opened with the keyring of ``places``) is merged into an archive sealed
    to ``encrypt``, keeping the chain's hash key so the result stands in for the links."""
    from volpack.format.random_access import open_archive
    from volpack.format.writer import ArchiveWriter
    from volpack.media import open_writer

    codec, level = parse_compress(compress)
    t0 = time.perf_counter()
    check_distinct(
        [
            *medium_roles(archive_url, "the archive being merged", "archive", "/dev/stdin"),
            *medium_roles(out_url, "the merged archive", "output", "/dev/stdout"),
        ],
        UsageError,
    )
    top = open_archive(archive_url, keyring=places.keyring if places else None)
    if not top.incremental:
        top.close()
        raise UsageError(
            f"{archive_url}: is a full archive; there is nothing to merge (copy it as it is)"
        )
    if top.header.encrypted != (encrypt is not None):
        top.close()
        raise UsageError(
            f"{archive_url}: the chain is encrypted, so the merged archive must be too: add "
            "--recipient, --passphrase-file or --key-file"
            if encrypt is None
            else f"{archive_url}: the chain is not encrypted; leave out the key options"
        )
    try:
        view = ChainView(resolve_chain(top, places or Places()))
    except BaseException:
        top.close()
        raise
    medium = None
    try:
        chain = view.chain
        cut = len(chain)
        if onto is not None:
            cut = next((i for i, a in enumerate(chain) if _names(onto, a.uuid, a.url)), -1)
            if cut <= 0:
                raise UsageError(
                    f"--onto {onto}: not a base in the chain of {archive_url} ("
                    + ", ".join(a.uuid[:8] for a in chain[1:])
                    + "); give one of those UUIDs or its location"
                )
        merged = chain[:cut]
        h = top.header
        bs = h.block_size
        vblocks = h.volume_blocks
        covered_hb = Extents.span(0, h.hash_blocks)
        if cut < len(chain):
            covered_hb = Extents.empty()
            for arch in merged:
                covered_hb = covered_hb.union(arch.covered)
        covered = covered_hb.scale_in(h.hash_block_size // bs).clip(0, vblocks)
        data = view.used.intersect(covered)
        zeros = covered.subtract(data)
        table = AddressTable.from_used(data, bs)
        base = chain[cut] if cut < len(chain) else None
        header = R.Header(
            uuid=str(uuidlib.uuid4()),
            block_size=bs,
            frame_size=h.frame_size,
            volume_size=h.volume_size,
            used_blocks=table.used_blocks,
            created_ns=time.time_ns(),
            codec=codec,
            codec_level=level,
            incompat_features=R.WRITTEN_INCOMPAT | (R.FEATURE_INCREMENTAL if base else 0),
            hash_block_size=h.hash_block_size,
            chain_id=h.chain_id,
            chain_seq=h.chain_seq,
            base=R.BaseLink(base.uuid, base.trailer.digest, base.trailer.state_digest, base.size)
            if base
            else None,
        )
        desc = dataclasses.replace(
            top.desc,
            changes=ChangesDescription("merge", 0, None, ()),
            extra={**top.desc.extra, "merged": [a.uuid for a in merged]},
        )
        head = (
            R.encode_desc(desc.to_json())
            + encode_pmap(top.physical_map)
            + R.encode_atab(table.volume_block, table.count)
            + (R.encode_ztab(zeros) if base else b"")
        )
        state = None
        if base is not None:
            base_table = base.hash_table
            assert base_table is not None
            state = lambda own: base_table.apply(covered_hb, own)  # noqa: E731
        sealing = None
        if encrypt is not None and top.unsealer is not None:
            from volpack.format.sealing import Sealing

            header = dataclasses.replace(
                header,
                incompat_features=header.incompat_features | R.FEATURE_ENCRYPTED,
                minor=R.MINOR_ENCRYPTED,
            )
            sealing = Sealing(header, encrypt, top.unsealer.chain_key)
        medium = open_writer(out_url, force=force, mode=mode)
        key = sealing.chain_key if sealing is not None else None
        writer = ArchiveWriter(
            medium,
            header,
            head,
            threads=threads,
            hashes=HashBuilder(table, h.volume_size, h.hash_block_size, key),
            state=state,
            sealing=sealing,
        )
        fs = h.frame_size
        total = table.dense_size

        def frame_ranges(seq: int) -> list[tuple[int, int]]:
            d0 = seq * fs
            vs, lens, _ = table.dense_to_volume(d0, min(d0 + fs, total))
            # Past the volume's end (its last block's tail) the chain view reads zeros.
            return list(zip(vs.tolist(), lens.tolist(), strict=True))

        # The writer's pool calls produce for consecutive frames at once; the chain's frames
        # they need are decoded ahead in a pool of their own (one at a time inside produce, a
        # 10-link merge took 1.5x a full restore) and handed out in frame order.
        ahead = prefetched(view, (frame_ranges(seq) for seq in range(-(-total // fs))))
        ready: dict[int, list[memoryview]] = {}
        next_seq = 0
        lock = threading.Lock()

        def produce(seq: int, out: memoryview) -> None:
            nonlocal next_seq
            with lock:
                while seq not in ready:
                    _, views = next(ahead)
                    ready[next_seq] = views
                    next_seq += 1
                views = ready.pop(seq)
            pos = 0
            for part in views:
                out[pos : pos + len(part)] = part
                pos += len(part)
            assert pos == len(out)

        writer.write_head()
        try:
            writer.write_frames(
                produce, (lambda done: progress("write", done, total)) if progress else None
            )
        finally:
            ahead.close()
        written = writer.finish()
        assert writer.hash_table is not None and top.hash_table is not None
        if not writer.hash_table.equals(top.hash_table):
            at = writer.hash_table.first_difference(top.hash_table)
            raise ChainError(
                f"{archive_url}: the merged volume differs from the state the archive records at "
                f"hash block {at}; a link of the chain is damaged: run 'volpack verify --chain'"
            )
        medium.commit()
    except BaseException:
        if medium is not None:
            medium.abort()
        raise
    finally:
        view.close()
    return MergeResult(
        archive_uuid=header.uuid,
        url=medium.location,
        level="incremental" if base else "full",
        merged=tuple(a.uuid for a in merged),
        base_uuid=base.uuid if base else None,
        volume_size=h.volume_size,
        used_bytes=table.used_bytes(h.volume_size).total(),
        archive_size=written.archive_size,
        digest=written.digest,
        state_digest=written.state_digest,
        elapsed=time.perf_counter() - t0,
    )
