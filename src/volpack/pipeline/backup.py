"""``backup``: Source → used map → [changes since a base] → AddressTable → [Staging] →
ArchiveWriter → Medium.

A full holds every used block; an incremental (``base``) only the hash blocks that changed since
its base (data, and zero runs for what became empty), found by a checked hint or hash compare.
The archive is committed only after the source proved unchanged; any failure aborts the medium
(a file medium keeps an older archive at the same name). Library code: no printing.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from volpack import __version__
from volpack.compact.table import AddressTable
from volpack.detect import Detection, plan_used
from volpack.detect.zeros import scan_used
from volpack.errors import ChainError, SourceError, UsageError, VolpackError
from volpack.extents import Extents
from volpack.format import records as R
from volpack.format.description import (
    ArchiveDescription,
    ChangesDescription,
    DetectionDescription,
    OptionsDescription,
    RegionDescription,
    SourceDescription,
)
from volpack.format.hashtable import HashBuilder
from volpack.format.pmap import encode_pmap
from volpack.identity import Role, check_distinct
from volpack.pipeline.changes import Changes, Fine
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

# Entries a new chain's hash table stays under (``hash_block_for``): 24 MiB of table
HASH_ENTRIES = 1 << 20

if TYPE_CHECKING:
    from volpack.crypto import EncryptKeys
    from volpack.detect import Plan
    from volpack.format.keyring import Keyring
    from volpack.format.random_access import Archive
    from volpack.format.sealing import Sealing
    from volpack.format.writer import WriteResult
    from volpack.media.base import MediumWriter
    from volpack.pipeline.onepass import OnePass


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
    # the chain: its id and this archive's place in it; an incremental's base and its changes
    chain_id: str = ""
    chain_seq: int = 0
    state_digest: str = ""
    base_uuid: str | None = None
    zero_blocks: int = 0
    changes: dict[str, Any] = field(default_factory=dict)
    base_digest: str = ""  # the base link's digest and state digest (hex), for the catalog
    base_state_digest: str = ""
    format_version: str = f"{R.MAJOR}.{R.MINOR}"
    # sealed (format 1.3 ENCRYPTED): the fingerprint of each key slot (public, never a key)
    encrypted: bool = False
    key_slots: tuple[str, ...] = ()


def backup(
    source: str,
    archive_url: str,
    *,
    block_size: int | None = None,
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
    base: str | None = None,
    bitmap: str | None = None,
    catalog: str | None = None,
    hints: bool = True,
    encrypt: EncryptKeys | None = None,
    keyring: Keyring | None = None,
    opened: Source | None = None,
    hash_block: int | None = None,
) -> BackupResult:
    """Back up the used blocks of ``source`` to a new archive at ``archive_url``. A new archive
    file gets permission bits ``mode`` (default 0600); one replaced with ``force`` keeps its own.

    With ``base`` (an archive URL, or ``latest``: the newest archive of this source in
    ``catalog``) the archive is an incremental holding what changed since that base; ``bitmap``
    names a dirty bitmap of the source to use as a hint (checked; hash compare otherwise); an
    LVM thin source's mappings are a hint unless ``hints`` is False (hash compare always).
    ``block_size`` defaults to 4 KiB, or the base's for an incremental. ``opened`` is
    ``source`` already opened (a disk of a libvirt job shared by several archives).
    ``hash_block``: the hash block size of a new chain (default `hash_block_for` the used
    bytes); an incremental keeps its base's.

    ``encrypt`` seals the archive to its recipients, passphrases and key files (format 1.3
    ENCRYPTED). An incremental is sealed exactly when its base is; an encrypted base is opened
    with ``keyring``, by default the passphrases and key files of ``encrypt``."""
    # Imported here, not at the top: ``import volpack.pipeline`` (every verb) stays fast for the
    # CLI, which loads only the stages the verb it runs needs.
    from volpack.compact.dense import DenseReader
    from volpack.compact.staging import Staging, one_pass_fits, room
    from volpack.format.writer import ArchiveWriter
    from volpack.media import open_writer

    if bitmap is not None and base is None:
        raise UsageError(
            f"--bitmap {bitmap}: a dirty bitmap is a hint for an incremental; give --base too"
        )
    if bitmap is not None and not hints:
        raise UsageError(
            f"--bitmap {bitmap} and --no-hints contradict each other; give one of them"
        )
    codec, level = parse_compress(compress)
    t0 = time.perf_counter()
    if not allow_mounted:
        _check_not_in_use(source, pvs)
    if keyring is None and encrypt is not None:
        from volpack.crypto import DecryptKeys
        from volpack.format.keyring import Keyring

        keyring = Keyring.of(
            DecryptKeys(passphrases=encrypt.passphrases, key_files=encrypt.key_files)
        )
    catalogued = source.split(",")[0] if source.startswith("libvirt:") else source
    base_archive = _open_base(base, catalogued, catalog, keyring) if base is not None else None
    if base_archive is not None:
        _check_sealed_like(base_archive, encrypt)
        if block_size not in (None, base_archive.block_size):
            base_archive.close()
            raise UsageError(
                f"--block-size {block_size}: the base {base_archive.url} has block size "
                f"{base_archive.block_size} and an incremental keeps its base's; leave out "
                "--block-size"
            )
        block_size = base_archive.block_size
        base_hbs = base_archive.header.hash_block_size
        if hash_block not in (None, base_hbs):
            base_archive.close()
            raise UsageError(
                f"--hash-block {hash_block}: the base {base_archive.url} has hash blocks of "
                f"{base_hbs} B and an incremental keeps its base's; leave out --hash-block"
            )
    block_size = block_size or DEFAULT_BLOCK
    try:
        check_block_size(block_size, frame_size)
        check_hash_block(hash_block, block_size)
    except BaseException:
        if base_archive is not None:
            base_archive.close()
        raise
    src = None
    medium = None
    stage = None
    fine: Fine | str | None = None
    try:
        src = opened or _open(source, source_format, pvs, base_archive)
        check_distinct(
            [
                *_source_roles(source, source_format, pvs, src.info.details),
                *medium_roles(
                    archive_url, "the archive being written", "archive path", "/dev/stdout"
                ),
                *([Role(staging, "the staging area", "staging path")] if staging else []),
                *(
                    medium_roles(base_archive.url, "the base archive", "--base", "/dev/stdin")
                    if base_archive is not None
                    else []
                ),
            ],
            UsageError,
        )
        if base_archive is not None:
            _check_not_base(archive_url, base_archive.url)
        before = src.identity()
        medium = open_writer(archive_url, force=force, mode=mode)
        plan = plan_used(src, block_size, detect)
        if staging is None and base_archive is None and encrypt is None and len(plan.scan):
            # A full with a zero scan to run reads the source once where the medium can take
            # its head last (docs/architecture.md, "One read").
            done = _in_one_read(
                src,
                plan,
                medium,
                detect,
                compress,
                codec,
                level,
                frame_size,
                hash_block,
                threads,
                progress,
            )
            if done is not None:
                desc, one = done
                _check_unchanged(src, before, source)
                medium.commit()
                return _result(
                    one.header,
                    one.table,
                    Extents.empty(),
                    desc,
                    one.written,
                    medium,
                    t0,
                    None,
                    None,
                )
        if staging is not None and base_archive is None and len(plan.scan):
            # Two-phase mode with a zero scan: the scan hands each used block to staging as it
            # reads it, so the source is read once (docs/architecture.md, "Two-phase mode").
            candidates = (plan.known.total() + plan.scan.total()) * block_size
            if one_pass_fits(room(staging), candidates):
                stage = Staging(staging, candidates, force=force, scanning=True)
                fill = (lambda done: progress("stage", done, candidates)) if progress else None
                used = scan_used(src, plan.known, plan.scan, block_size, stage.taker(), fill)
                detection = plan.detection(used)
        if stage is None:
            scan = (lambda done: progress("scan", done, src.size)) if progress else None
            detection = plan.detection(
                scan_used(src, plan.known, plan.scan, block_size, None, scan)
            )
        pmap = src.physical_map()
        created = time.time_ns()
        this = str(uuidlib.uuid4())
        state = None
        changes: Changes | None = None
        if base_archive is None:
            table = AddressTable.from_used(detection.used, block_size)
            zeros = Extents.empty()
            header = _full_header(
                src.size, block_size, frame_size, table.used_blocks, hash_block, codec, level
            )
            header = dataclasses.replace(header, uuid=this, created_ns=created)
        else:
            changes = _changes(src, detection, base_archive, bitmap, hints, threads, progress)
            detection = dataclasses.replace(
                detection, warnings=(*detection.warnings, *changes.warnings)
            )
            hbs = base_archive.header.hash_block_size
            per = hbs // block_size
            vblocks = -(-src.size // block_size)
            covered_blocks = changes.covered.scale_in(per).clip(0, vblocks)
            base_table = base_archive.hash_table
            assert base_table is not None
            covered = changes.covered
            state = lambda own: base_table.apply(covered, own)  # noqa: E731
            fine = _fine(src, detection, base_archive, changes, catalog, keyring, threads)
            features = R.WRITTEN_INCOMPAT | R.FEATURE_INCREMENTAL
            if isinstance(fine, str):
                detection = dataclasses.replace(
                    detection, warnings=(*detection.warnings, f"{src.info.path}: {fine}")
                )
            elif fine is not None:
                covered_blocks = fine.blocks
                nodata, nodata_table = fine.nodata, fine.table
                state = lambda own: base_table.apply(  # noqa: E731
                    covered, own.apply(nodata, nodata_table)
                )
                features |= R.FEATURE_FINE
                changes = dataclasses.replace(
                    changes,
                    read_bytes=changes.read_bytes + fine.read_bytes,
                    sampled=changes.sampled + fine.sampled,
                )
            data = detection.used.intersect(covered_blocks)
            zeros = covered_blocks.subtract(data)
            table = AddressTable.from_used(data, block_size)
            header = R.Header(
                uuid=this,
                block_size=block_size,
                frame_size=frame_size,
                volume_size=src.size,
                used_blocks=table.used_blocks,
                created_ns=created,
                codec=codec,
                codec_level=level,
                incompat_features=features,
                hash_block_size=hbs,
                chain_id=base_archive.header.chain_id,
                chain_seq=base_archive.header.chain_seq + 1,
                base=R.BaseLink(
                    base_archive.uuid,
                    base_archive.trailer.digest,
                    base_archive.trailer.state_digest,
                    base_archive.size,
                ),
            )
        sealing = None
        if encrypt is not None:
            from volpack.format.sealing import Sealing

            header = dataclasses.replace(
                header,
                incompat_features=header.incompat_features | R.FEATURE_ENCRYPTED,
                minor=R.MINOR_ENCRYPTED,
            )
            chain_key = None
            if base_archive is not None and base_archive.unsealer is not None:
                chain_key = base_archive.unsealer.chain_key
            sealing = Sealing(header, encrypt, chain_key)
        desc = _description(src.info, detect, detection, compress, staging is not None)
        if changes is not None:
            desc = dataclasses.replace(
                desc,
                changes=ChangesDescription(
                    changes.method, changes.read_bytes, changes.sampled, changes.warnings
                ),
            )
        head = (
            R.encode_desc(desc.to_json())
            + encode_pmap(pmap)
            + R.encode_atab(table.volume_block, table.count)
            + (R.encode_ztab(zeros) if header.incremental else b"")
        )
        key = sealing.chain_key if sealing is not None else None
        background = fine.fill if isinstance(fine, Fine) else None
        hashes = HashBuilder(table, header.volume_size, header.hash_block_size, key, background)
        writer = ArchiveWriter(
            medium, header, head, threads=threads, hashes=hashes, state=state, sealing=sealing
        )
        total = table.dense_size
        if staging is not None:
            if stage is None:
                stage = Staging(staging, total, force=force)
                fill = (lambda done: progress("stage", done, total)) if progress else None
                stage.fill(src, table, pmap, fill)
            else:
                stage.settle(total)
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
        if src is not None:
            src.close()
        if stage is not None:
            stage.close()
        if isinstance(fine, Fine):
            fine.close()
        if base_archive is not None:
            base_archive.close()
    return _result(header, table, zeros, desc, written, medium, t0, staging, sealing)


def _result(
    header: R.Header,
    table: AddressTable,
    zeros: Extents,
    desc: ArchiveDescription,
    written: WriteResult,
    medium: MediumWriter,
    t0: float,
    staging: str | None,
    sealing: Sealing | None,
) -> BackupResult:
    return BackupResult(
        archive_uuid=header.uuid,
        url=medium.location,
        volume_size=header.volume_size,
        block_size=header.block_size,
        used_blocks=header.used_blocks,
        dense_size=header.dense_size,
        archive_size=written.archive_size,
        stored_bytes=written.stored_bytes,
        frame_count=written.frame_count,
        digest=written.digest,
        elapsed=time.perf_counter() - t0,
        created_ns=header.created_ns,
        source=desc.source.to_json(),
        detection=desc.detection.to_json(),
        staging=staging,
        used_bytes=table.used_bytes(header.volume_size).total(),
        chain_id=header.chain_id,
        chain_seq=header.chain_seq,
        state_digest=written.state_digest,
        base_uuid=header.base.uuid if header.base else None,
        zero_blocks=zeros.total(),
        changes=desc.changes.to_json() if desc.changes else {},
        base_digest=header.base.digest.hex() if header.base else "",
        base_state_digest=header.base.state_digest.hex() if header.base else "",
        format_version=f"{header.major}.{header.minor}",
        encrypted=header.encrypted,
        key_slots=sealing.fingerprints() if sealing is not None else (),
    )


def _full_header(
    volume_size: int,
    block_size: int,
    frame_size: int,
    used_blocks: int,
    hash_block: int | None,
    codec: int,
    level: int,
) -> R.Header:
    """The header of a new full (a new chain, a fresh UUID, created now)."""
    return R.Header(
        uuid=str(uuidlib.uuid4()),
        block_size=block_size,
        hash_block_size=hash_block or hash_block_for(used_blocks * block_size, block_size),
        frame_size=frame_size,
        volume_size=volume_size,
        used_blocks=used_blocks,
        created_ns=time.time_ns(),
        codec=codec,
        codec_level=level,
        chain_id=str(uuidlib.uuid4()),
    )


def _in_one_read(
    src: Source,
    plan: Plan,
    medium: MediumWriter,
    detect: str,
    compress: str,
    codec: int,
    level: int,
    frame_size: int,
    hash_block: int | None,
    threads: int,
    progress: Progress | None,
) -> tuple[ArchiveDescription, OnePass] | None:
    """A full written in one read of the source (``pipeline/onepass.py``) and its DESC, or None
    where the medium or the used map does not allow it (nothing written)."""
    from volpack.pipeline.onepass import write_in_one_read

    bs = plan.block_size
    # An upper bound until the scan is done: every known and candidate block. The hash block
    # size follows it (it only grows past 64 GiB of used bytes, and only for the table's size).
    bound = plan.known.total() + plan.scan.total()
    header = _full_header(src.size, bs, frame_size, bound, hash_block, codec, level)
    desc = _description(src.info, detect, plan.detection(plan.known), compress, False)
    pmap = encode_pmap(src.physical_map())
    done = write_in_one_read(
        medium, src, plan, header, desc.to_json(), pmap, threads=threads, progress=progress
    )
    return None if done is None else (desc, done)


def _open_base(spec: str, source: str, catalog: str | None, keyring: Keyring | None) -> Archive:
    """The base archive ``spec`` names (a URL, or ``latest`` of ``source`` in the catalog),
    opened for random access (with ``keyring`` when encrypted); it must carry a block hash
    table."""
    from volpack.format.random_access import open_archive

    url = spec
    if spec == "latest":
        url = _latest(source, catalog)
    arch = open_archive(url, keyring=keyring)
    if not arch.header.hashed or arch.hash_table is None:
        arch.close()
        raise ChainError(
            f"--base {url}: archive format {arch.header.major}.{arch.header.minor} has no block "
            "hash table to compare with; back up a new full first (volpack 1.2 archives have one)"
        )
    if catalog is not None:
        _check_catalogued_digest(arch, catalog)
    return arch


def _check_not_base(archive_url: str, base_url: str) -> None:
    """Writing an incremental over its own base would leave a link to an archive that is gone
    (media without local files: compared by location)."""
    from volpack import media

    if archive_url != "-" and media.canonical_url(archive_url) == media.canonical_url(base_url):
        raise UsageError(
            f"{archive_url}: is the base archive of this incremental; writing there would "
            "destroy the base the new archive needs; choose another archive path"
        )


def _check_sealed_like(base: Archive, encrypt: EncryptKeys | None) -> None:
    """An incremental is sealed exactly when its base is: its hash table is keyed with the
    base's chain hash key (docs/format.md section 10.7)."""
    if base.header.encrypted and encrypt is None:
        base.close()
        raise UsageError(
            f"--base {base.url}: the base is encrypted, so an incremental on it must be too; add "
            "--recipient, --passphrase-file or --key-file"
        )
    if encrypt is not None and not base.header.encrypted:
        base.close()
        raise UsageError(
            f"--base {base.url}: the base is not encrypted, and a chain is sealed or not as its "
            "full is; back up a new encrypted full, or leave out the key options"
        )


def _latest(source: str, catalog: str | None) -> str:
    from volpack.catalog.latest import latest_base

    return latest_base(source, catalog)


def _check_catalogued_digest(arch: Archive, catalog: str) -> None:
    """A base whose digest differs from the one catalogued for its UUID was rewritten."""
    import os

    from volpack.catalog.record import catalog_path
    from volpack.catalog.store import Catalog
    from volpack.errors import CatalogError

    path = catalog_path(catalog)
    if not os.path.exists(path):
        return
    try:
        with Catalog.open(path, create=False) as cat:
            entry = cat.get(arch.uuid)
    except CatalogError:
        return
    if entry.digest and entry.digest != arch.digest:
        raise ChainError(
            f"--base {arch.url}: archive {arch.uuid} has digest {arch.digest}, the catalog "
            f"recorded {entry.digest} when it was written; it was rewritten, so it cannot be a "
            "base: back up a new full"
        )


def hash_block_for(used_bytes: int, block_size: int) -> int:
    """The hash block size of a new chain: 64 KiB, the usual granule of qcow2 and NBD dirty
    bitmaps and the smallest chunk of an LVM thin pool, so that an incremental from such a hint
    reads what changed and nothing of its base; larger only where the table would pass
    ``HASH_ENTRIES`` entries (24 B each: a TiB of used data keeps the 1 MiB blocks of format
    1.2), and never smaller than a block."""
    hbs = max(R.MIN_HASH_BLOCK, block_size)
    while hbs < R.MAX_HASH_BLOCK and used_bytes > HASH_ENTRIES * hbs:
        hbs *= 2
    return hbs


def check_hash_block(hash_block: int | None, block_size: int) -> None:
    if hash_block is None:
        return
    lo, hi = max(R.MIN_HASH_BLOCK, block_size), R.MAX_HASH_BLOCK
    if hash_block & (hash_block - 1) or not lo <= hash_block <= hi:
        raise UsageError(
            f"--hash-block {hash_block}: must be a power of two from {lo} to {hi} (64 KiB to "
            "64 MiB, and at least --block-size)"
        )


def _fine(
    src: Source,
    detection: Detection,
    base: Archive,
    changes: Changes,
    catalog: str | None,
    keyring: Keyring | None,
    threads: int,
) -> Fine | str | None:
    """Block coverage for a checked hint (format FINE), or None to cover whole hash blocks:
    needs the base's state (its chain, for which blocks it holds and a sample of its bytes), so
    a base whose chain cannot be reached here gets whole hash blocks. A string: the hint was
    wrong inside a hash block it marks (a warning; whole hash blocks are right anyway)."""
    from volpack.pipeline import changes as C
    from volpack.pipeline.chain import ChainView, Places, resolve_chain

    if changes.dirty is None or base.hash_table is None:
        return None
    try:
        chain = resolve_chain(base, Places(catalog=catalog, keyring=keyring))
    except VolpackError:
        return None

    def close() -> None:
        for link in chain[1:]:
            link.close()

    try:
        view = ChainView(chain)
        fine = C.refine(
            src,
            detection.used,
            base.block_size,
            changes,
            base.hash_table,
            view.used,
            view.read,
            threads,
        )
    except BaseException:
        close()
        raise
    if fine is None or isinstance(fine, str):
        close()
        return fine
    # The writer's hash table reads the base's bytes through the chain: closed after it.
    return dataclasses.replace(fine, close=close)


def _changes(
    src: Source,
    detection: Detection,
    base: Archive,
    bitmap: str | None,
    hints: bool,
    threads: int,
    progress: Progress | None,
) -> Changes:
    """What changed since ``base``: a checked hint (the dirty bitmap named; else the source's own
    record — a running QEMU's rotated bitmaps, a libvirt checkpoint, LVM thin mappings), else hash
    compare."""
    from volpack.pipeline import changes as C

    table = base.hash_table
    assert table is not None
    used = detection.used.scale_in(base.block_size).clip(0, src.size)
    warnings: list[str] = []
    if bitmap is not None:
        dirty = C.dirty_hint(src, bitmap)
        if isinstance(dirty, str):
            warnings.append(f"{src.info.path}: {dirty}")
        else:
            hinted = C.check_hint(src, used, table, dirty, bitmap, threads)
            if not isinstance(hinted, str):
                return hinted
            warnings.append(f"{src.info.path}: {hinted}")
    elif hints and (since := _since_hint(src, used, base, threads)) is not None:
        if not isinstance(since, str):
            return since
        warnings.append(f"{src.info.path}: {since}")
    elif hints and (cp := _checkpoint_hint(src, used, table, threads)) is not None:
        if not isinstance(cp, str):
            return cp
        warnings.append(f"{src.info.path}: {cp}")
    elif hints and (thin := _thin_hint(src, used, base, threads)) is not None:
        if not isinstance(thin, str):
            return thin
        warnings.append(f"{src.info.path}: {thin}")
    report = (lambda done, total: progress("compare", done, total)) if progress else None
    found = C.hash_compare(src, used, table, threads, report)
    return dataclasses.replace(found, warnings=tuple(warnings))


def _since_hint(src: Source, used: Extents, base: Archive, threads: int) -> Changes | str | None:
    """A live source's own record of the writes since ``base`` (a running QEMU's rotated dirty
    bitmaps), checked by the sample; None when the source keeps none for that base."""
    from volpack.pipeline import changes as C

    since = getattr(src, "since", None)
    table = base.hash_table
    if since is None or table is None:
        return None
    found = since(base.desc.source.details)
    if found is None or isinstance(found, str):
        return found
    dirty, first = found
    return C.check_hint(src, used, table, dirty, first, threads)


def _open(source: str, source_format: str, pvs: tuple[str, ...], base: Archive | None) -> Source:
    """The source; a libvirt disk's backup job starts from the checkpoint its base recorded."""
    if source.startswith("libvirt:"):
        from volpack.source.libvirt import open_libvirt

        return open_libvirt(source, base.desc.source.details if base is not None else None)
    return open_source(source, source_format, pvs=pvs)


def _checkpoint_hint(src: Source, used: Extents, table: Any, threads: int) -> Changes | str | None:
    """A libvirt disk's writes since its base's checkpoint, checked by the sample; None for
    other sources, the reason when there is no usable checkpoint or the hint failed its check."""
    from volpack.pipeline import changes as C

    checkpoint_hint = getattr(src, "checkpoint_hint", None)
    if checkpoint_hint is None:
        return None
    found = checkpoint_hint()
    if isinstance(found, str):
        return f"{found}; every block is compared instead"
    dirty, name = found
    what = f"the writes since libvirt checkpoint {name!r}"
    return C.check_hint(
        src, used, table, dirty, name, threads, method=f"checkpoint:{name}", what=what
    )


def _thin_hint(src: Source, used: Extents, base: Archive, threads: int) -> Changes | str | None:
    """An LVM thin source's mapping difference from a device that still maps what ``base`` read,
    checked by the sample; None when there is no such device (hash compare, no warning), the
    reason when the hint failed its check."""
    from volpack.pipeline import changes as C

    thin_delta = getattr(src, "thin_delta", None)
    table = base.hash_table
    if thin_delta is None or table is None:
        return None
    found = thin_delta(base.desc.source.details)
    if isinstance(found, str):
        return None
    dirty, dev_id = found
    what = f"the thin mapping difference from thin device {dev_id}"
    return C.check_hint(
        src, used, table, dirty, str(dev_id), threads, method="thin-delta", what=what
    )


def _check_not_in_use(source: str, pvs: tuple[str, ...]) -> None:
    from volpack.detect.mounted import check_not_mounted

    if source.startswith(("nbd://", "nbd+unix://", "qmp:", "libvirt:")):
        # a live export: its server, not this host's mounts, says whether it is in use; a
        # running VM's disk (qmp:) is in use by design, and fleecing makes it point-in-time
        return
    # An LVM volume is in use when one of its PVs is (an active VG on a loop device).
    for path in pvs if source.startswith("lvm:") else (source,):
        check_not_mounted(path)


def _description(
    info: SourceInfo, detect: str, detection: Detection, compress: str, staged: bool
) -> ArchiveDescription:
    """The archive's DESC: this tool and host, the source, how its used map was made, options."""
    return ArchiveDescription(
        tool=f"volpack {__version__}",
        host=os.uname().nodename,  # gethostname() without importing socket
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
    if source.startswith(("nbd://", "nbd+unix://", "libvirt:")):
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
