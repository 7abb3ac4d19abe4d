"""ext2/3/4: used blocks from the superblock, group descriptors and block bitmaps.

BLOCK_UNINIT groups count only their metadata; all metadata is added explicitly so a stale bit
never drops it; a journal needing recovery adds its bitmap copies (ext_journal). Checksums, free
counts and pointers are checked: any inconsistency raises FsDamaged. Reads only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from volpack.detect.fs._common import (
    Area,
    FsResult,
    bitmap_runs,
    crc16,
    crc32c_raw,
    crc32c_rows,
    crc_columns,
    popcount_rows,
    text,
    uuid_str,
)
from volpack.detect.fs.ext_inodes import InodeLayout, check_inode_references
from volpack.detect.fs.ext_journal import journal_block_map, journaled_blocks
from volpack.extents import Extents

MAGIC = 0xEF53
SB_OFFSET = 1024

COMPAT_HAS_JOURNAL = 0x4
COMPAT_RESIZE_INODE = 0x10
COMPAT_SPARSE_SUPER2 = 0x200
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
INCOMPAT_CSUM_SEED = 0x2000
RO_SPARSE_SUPER = 0x1
RO_GDT_CSUM = 0x10
RO_BIGALLOC = 0x200
RO_METADATA_CSUM = 0x400
BG_INODE_UNINIT = 0x1
BG_BLOCK_UNINIT = 0x2
STATE_VALID = 0x1
STATE_ERROR = 0x2

# Groups whose bitmaps are expanded at once; bounds memory on multi-TiB filesystems.
_GROUP_CHUNK = 2048
_MAX_GROUPS = 1 << 24


def probe(area: Area) -> bool:
    if area.length < SB_OFFSET + 1024:
        return False
    sb = area.read(SB_OFFSET, 1024)
    return struct.unpack_from("<H", sb, 0x38)[0] == MAGIC


def analyse(area: Area) -> FsResult:
    sb = _read_superblock(area)
    gd = _parse_descriptors(sb, _read_descriptor_table(area, sb))
    _check_descriptors(area, sb, gd)
    # A journal that needs recovery holds newer copies of some bitmaps (see _scan_block_bitmaps).
    journaled = _journal_bitmaps(area, sb, gd) if sb.needs_recovery else {}
    unit_starts, unit_ends = _scan_block_bitmaps(area, sb, gd, journaled)
    meta = _metadata_blocks(sb, gd)
    marked = _marked_blocks(sb, unit_starts, unit_ends)
    _check_metadata_marked(area, sb, gd, marked, meta)
    # Inodes may reference metadata kept anyway (the resize inode maps the reserved GDT blocks
    # of BLOCK_UNINIT groups); what matters is that every referenced block is kept.
    kept = marked.union(Extents.from_arrays(meta[:, 0], np.minimum(meta[:, 1], sb.blocks)))
    walked = check_inode_references(area, _inode_layout(sb, gd), kept, _read_bitmaps)
    used = _used_extents(area, sb, unit_starts, unit_ends, meta)
    return FsResult(sb.kind, sb.size, used, _details(sb, walked, journaled))


@dataclass(frozen=True, slots=True)
class _Super:
    """The superblock fields the rest of the analysis needs, checked against each other and
    the region."""

    raw: bytes
    uuid: bytes
    label: str
    compat: int
    incompat: int
    ro_compat: int
    block_size: int
    unit: int  # allocation unit (cluster) in bytes; the block size without bigalloc
    ratio: int  # blocks per unit
    blocks: int
    first_data_block: int
    blocks_per_group: int
    clusters_per_group: int
    inodes_per_group: int
    inode_size: int
    groups: int
    size: int
    desc_size: int
    gdt_blocks: int
    plain_gdt_blocks: int  # GDT blocks right after the superblock (all of them outside meta_bg)
    reserved_gdt: int
    super_groups: frozenset[int]
    csum_seed: int
    needs_recovery: bool

    @property
    def bigalloc(self) -> bool:
        return bool(self.ro_compat & RO_BIGALLOC)

    @property
    def group_csums(self) -> bool:
        """Descriptors carry checksums (gdt_csum or metadata_csum); the UNINIT flags count."""
        return bool(self.ro_compat & (RO_GDT_CSUM | RO_METADATA_CSUM))

    @property
    def metadata_csum(self) -> bool:
        return bool(self.ro_compat & RO_METADATA_CSUM)

    @property
    def kind(self) -> str:
        if self.incompat & ~0x16 or self.ro_compat & ~0x7:
            return "ext4"
        return "ext3" if self.compat & 0x4 else "ext2"

    def group_first(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def descriptor_block(self, g: int) -> int:
        """meta_bg: where group ``g`` keeps a descriptor block, after its superblock copy."""
        return self.group_first(g) + (1 if g in self.super_groups else 0)


def _read_superblock(area: Area) -> _Super:
    sb = area.read(SB_OFFSET, 1024)
    (magic,) = struct.unpack_from("<H", sb, 0x38)
    if magic != MAGIC:
        raise area.damaged(f"ext superblock magic {magic:#x}, expected {MAGIC:#x}")
    (blocks_lo,) = struct.unpack_from("<I", sb, 4)
    first_data_block, log_block, log_cluster = struct.unpack_from("<III", sb, 0x14)
    blocks_per_group, clusters_per_group, inodes_per_group = struct.unpack_from("<III", sb, 0x20)
    (inodes_count,) = struct.unpack_from("<I", sb, 0)
    (rev_level,) = struct.unpack_from("<I", sb, 0x4C)
    inode_size = struct.unpack_from("<H", sb, 0x58)[0] if rev_level >= 1 else 128
    if inode_size < 128 or inode_size > 1024 << min(log_block, 6) or inode_size & (inode_size - 1):
        raise area.damaged(f"ext inode size {inode_size}")
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    uuid = sb[0x68:0x78]
    (reserved_gdt,) = struct.unpack_from("<H", sb, 0xCE)
    (desc_size_raw,) = struct.unpack_from("<H", sb, 0xFE)
    (first_meta_bg,) = struct.unpack_from("<I", sb, 0x104)
    (blocks_hi,) = struct.unpack_from("<I", sb, 0x150)
    backup_bgs = struct.unpack_from("<II", sb, 0x24C)
    (checksum_seed,) = struct.unpack_from("<I", sb, 0x270)
    _check_superblock_state(area, sb, compat, incompat, ro_compat)
    if log_block > 6 or log_cluster < log_block or log_cluster > log_block + 16:
        raise area.damaged(f"ext block size log {log_block}, cluster size log {log_cluster}")
    block_size = 1024 << log_block
    bigalloc = bool(ro_compat & RO_BIGALLOC)
    if not bigalloc:
        clusters_per_group = blocks_per_group
        log_cluster = log_block
    unit = 1024 << log_cluster
    ratio = unit // block_size
    blocks = blocks_lo | (blocks_hi << 32 if incompat & INCOMPAT_64BIT else 0)
    if first_data_block > 1 or (block_size > 1024 and first_data_block != 0):
        raise area.damaged(f"ext first data block {first_data_block} with {block_size}-byte blocks")
    if bigalloc and first_data_block:
        raise area.damaged("ext bigalloc filesystem with first data block 1")
    if not (8 <= clusters_per_group <= 8 * block_size) or clusters_per_group % 8:
        raise area.damaged(f"ext {clusters_per_group} clusters per group")
    if blocks_per_group != clusters_per_group * ratio or blocks <= first_data_block:
        raise area.damaged(f"ext {blocks_per_group} blocks per group, {blocks} blocks")
    size = blocks * block_size
    if size > area.length:
        raise area.damaged(
            f"ext filesystem of {size} bytes does not fit its {area.length}-byte region"
        )
    groups = -(-(blocks - first_data_block) // blocks_per_group)
    if groups > _MAX_GROUPS or inodes_per_group == 0 or inodes_count != inodes_per_group * groups:
        raise area.damaged(f"ext {groups} groups, {inodes_per_group} inodes per group")

    desc_size = 32
    if incompat & INCOMPAT_64BIT:
        desc_size = desc_size_raw
        if desc_size < 64 or desc_size > 1024 or desc_size & (desc_size - 1):
            raise area.damaged(f"ext group descriptor size {desc_size}")
    gdt_blocks = -(-groups // (block_size // desc_size))
    meta_bg = bool(incompat & INCOMPAT_META_BG)
    if meta_bg and first_meta_bg > gdt_blocks:
        raise area.damaged(f"ext first meta_bg {first_meta_bg} beyond {gdt_blocks} GDT blocks")
    return _Super(
        raw=sb,
        uuid=uuid,
        label=text(sb[0x78:0x88]),
        compat=compat,
        incompat=incompat,
        ro_compat=ro_compat,
        block_size=block_size,
        unit=unit,
        ratio=ratio,
        blocks=blocks,
        first_data_block=first_data_block,
        blocks_per_group=blocks_per_group,
        clusters_per_group=clusters_per_group,
        inodes_per_group=inodes_per_group,
        inode_size=inode_size,
        groups=groups,
        size=size,
        desc_size=desc_size,
        gdt_blocks=gdt_blocks,
        # Outside meta_bg the GDT follows the superblock; meta groups keep their own blocks.
        plain_gdt_blocks=first_meta_bg if meta_bg else gdt_blocks,
        reserved_gdt=reserved_gdt if compat & COMPAT_RESIZE_INODE else 0,
        super_groups=_super_groups(groups, compat, ro_compat, backup_bgs),
        csum_seed=checksum_seed if incompat & INCOMPAT_CSUM_SEED else crc32c_raw(uuid),
        needs_recovery=bool(incompat & INCOMPAT_RECOVER),
    )


def _check_superblock_state(
    area: Area, sb: bytes, compat: int, incompat: int, ro_compat: int
) -> None:
    """The primary superblock of a filesystem, intact, cleanly unmounted and with any journal
    to recover inside it: otherwise nothing it describes is to be trusted."""
    (group_nr,) = struct.unpack_from("<H", sb, 0x5A)
    if group_nr != 0:
        # A backup superblock where a primary should be: the region does not start the filesystem.
        raise area.damaged(f"ext superblock of group {group_nr} where the primary should be")
    if incompat & INCOMPAT_JOURNAL_DEV:
        raise area.damaged("is an external ext journal device, not a filesystem")
    (sb_checksum,) = struct.unpack_from("<I", sb, 0x3FC)
    if ro_compat & RO_METADATA_CSUM and crc32c_raw(sb[:0x3FC]) != sb_checksum:
        raise area.damaged(f"ext superblock checksum mismatch (stored {sb_checksum:#010x})")
    (state,) = struct.unpack_from("<H", sb, 0x3A)
    if not state & STATE_VALID or state & STATE_ERROR:
        # Without a journal, a mounted or crashed ext2 has VALID cleared; ERROR means the kernel
        # found an inconsistency. Either way the bitmaps are not to be trusted.
        what = "has errors recorded" if state & STATE_ERROR else "was not cleanly unmounted"
        raise area.damaged(f"ext filesystem {what} (state {state:#x}); run e2fsck first")
    if incompat & INCOMPAT_RECOVER and not compat & COMPAT_HAS_JOURNAL:
        raise area.damaged("ext journal needs recovery but there is no internal journal")


def _super_groups(
    groups: int, compat: int, ro_compat: int, backup_bgs: tuple[int, int]
) -> frozenset[int]:
    """Groups holding a superblock copy: all, sparse_super (0, 1, powers of 3, 5, 7) or
    sparse_super2 (0 and the two listed groups). O(log groups) unless sparse_super is off."""
    if compat & COMPAT_SPARSE_SUPER2:
        return frozenset({0} | {g for g in backup_bgs if 0 < g < groups})
    if not ro_compat & RO_SPARSE_SUPER:
        return frozenset(range(groups))
    out = {0, 1} if groups > 1 else {0}
    for base in (3, 5, 7):
        n = base
        while n < groups:
            out.add(n)
            n *= base
    return frozenset(out)


def _read_descriptor_table(area: Area, sb: _Super) -> np.ndarray:
    """The group descriptors, one row of ``desc_size`` bytes per group."""
    parts: list[np.ndarray] = []
    plain = sb.plain_gdt_blocks
    if plain:
        parts.append(
            area.read_array((sb.first_data_block + 1) * sb.block_size, plain * sb.block_size)
        )
    per_block = sb.block_size // sb.desc_size
    for b in range(plain, sb.gdt_blocks):
        loc = sb.descriptor_block(b * per_block)
        parts.append(area.read_array(loc * sb.block_size, sb.block_size))
    rows = np.concatenate(parts)[: sb.groups * sb.desc_size]
    return rows.reshape(sb.groups, sb.desc_size).view(np.uint8)


@dataclass(frozen=True, slots=True)
class _Groups:
    """Per-group descriptor fields as int64 arrays (one entry per group)."""

    desc: np.ndarray  # the raw descriptor rows
    block_bitmap: np.ndarray
    inode_bitmap: np.ndarray
    inode_table: np.ndarray
    itable_blocks: int  # blocks of each inode table
    free_blocks: np.ndarray  # free clusters, as the descriptor counts them
    flags: np.ndarray
    stored_csum: np.ndarray
    bitmap_csum: np.ndarray | None  # metadata_csum only
    itable_unused: np.ndarray
    block_uninit: np.ndarray  # bool: the block bitmap is computed, not stored


def _parse_descriptors(sb: _Super, desc: np.ndarray) -> _Groups:
    """Descriptor fields, vectorised over all groups (64-bit halves joined when present)."""
    wide = sb.desc_size >= 64
    words = np.ascontiguousarray(desc[:, :32]).view("<u4")  # 8 little-endian u32 per row
    block_bitmap = words[:, 0].astype(np.int64)
    inode_bitmap = words[:, 1].astype(np.int64)
    inode_table = words[:, 2].astype(np.int64)
    halves = np.ascontiguousarray(desc[:, 12:20]).view("<u2")
    free_blocks = halves[:, 0].astype(np.int64)
    flags = halves[:, 3].astype(np.int64)
    stored_csum = _u16(desc, 0x1E)
    itable_unused = _u16(desc, 0x1C)
    if wide:
        hi = np.ascontiguousarray(desc[:, 32:48]).view("<u4")
        block_bitmap |= hi[:, 0].astype(np.int64) << 32
        inode_bitmap |= hi[:, 1].astype(np.int64) << 32
        inode_table |= hi[:, 2].astype(np.int64) << 32
        free_blocks |= _u16(desc, 44) << 16
        itable_unused |= _u16(desc, 0x32) << 16
    bitmap_csum: np.ndarray | None = None
    if sb.metadata_csum:
        bitmap_csum = _u16(desc, 0x18)
        if wide:
            bitmap_csum |= _u16(desc, 0x38) << 16
    block_uninit = (flags & BG_BLOCK_UNINIT).astype(bool)
    if not sb.group_csums:
        block_uninit[:] = False  # the flag means nothing without group checksums
    return _Groups(
        desc=desc,
        block_bitmap=block_bitmap,
        inode_bitmap=inode_bitmap,
        inode_table=inode_table,
        itable_blocks=-(-(sb.inodes_per_group * sb.inode_size) // sb.block_size),
        free_blocks=free_blocks,
        flags=flags,
        stored_csum=stored_csum,
        bitmap_csum=bitmap_csum,
        itable_unused=itable_unused,
        block_uninit=block_uninit,
    )


def _u16(desc: np.ndarray, at: int) -> np.ndarray:
    """The little-endian u16 at byte ``at`` of every descriptor row, as int64."""
    return np.ascontiguousarray(desc[:, at : at + 2]).view("<u2")[:, 0].astype(np.int64)


def _check_descriptors(area: Area, sb: _Super, gd: _Groups) -> None:
    """Descriptor checksums, then every bitmap and inode table inside the filesystem."""
    if sb.group_csums:
        _check_gdt_csums(area, gd.desc, gd.stored_csum, sb.uuid, sb.ro_compat, sb.csum_seed)
    for name, arr, span in (
        ("block bitmap", gd.block_bitmap, 1),
        ("inode bitmap", gd.inode_bitmap, 1),
        ("inode table", gd.inode_table, gd.itable_blocks),
    ):
        bad = np.flatnonzero((arr < sb.first_data_block) | (arr + span > sb.blocks))
        if bad.size:
            g = int(bad[0])
            raise area.damaged(
                f"ext group {g} {name} at block {int(arr[g])} outside 0..{sb.blocks}; "
                "group descriptors are damaged"
            )


def _scan_block_bitmaps(
    area: Area, sb: _Super, gd: _Groups, journaled: dict[int, list[bytes]]
) -> tuple[np.ndarray, np.ndarray]:
    """Used unit (cluster) runs ``[starts, ends)`` from the block bitmaps, counted from the first
    data block; each group's free count and bitmap checksum are checked on the way.

    Journaled bitmap copies are ORed in (the used set only grows), and the count and checksum
    checks of those groups are skipped: their descriptors are just as stale."""
    cpg = sb.clusters_per_group
    starts_all: list[np.ndarray] = []
    ends_all: list[np.ndarray] = []
    total_units = -(-(sb.blocks - sb.first_data_block) // sb.ratio)
    bytes_per_map = cpg // 8
    in_journal = np.isin(gd.block_bitmap, np.fromiter(journaled, np.int64, len(journaled)))
    for g0 in range(0, sb.groups, _GROUP_CHUNK):
        g1 = min(sb.groups, g0 + _GROUP_CHUNK)
        maps = _read_bitmaps(
            area, gd.block_bitmap[g0:g1], gd.block_uninit[g0:g1], sb.block_size, bytes_per_map
        )
        for i in np.flatnonzero(in_journal[g0:g1]).tolist():
            for image in journaled[int(gd.block_bitmap[g0 + i])]:
                maps[i] |= np.frombuffer(image, np.uint8)[:bytes_per_map]
        valid = min(total_units - g0 * cpg, (g1 - g0) * cpg)
        check = ~gd.block_uninit[g0:g1] & ~in_journal[g0:g1]
        if gd.bitmap_csum is not None:
            _check_bitmap_csums(
                area, maps, check, gd.bitmap_csum[g0:g1], sb.csum_seed, sb.desc_size, g0
            )
        free = _free_counts(maps, valid, cpg)
        mismatch = np.flatnonzero(check & (free != gd.free_blocks[g0:g1]))
        if mismatch.size:
            g = g0 + int(mismatch[0])
            raise area.damaged(
                f"ext group {g} free count {int(gd.free_blocks[g])} disagrees with its bitmap "
                f"({int(free[g - g0])} free); bitmaps or descriptors are damaged"
            )
        s, e = bitmap_runs(maps.reshape(-1), valid)
        starts_all.append(s + g0 * cpg)
        ends_all.append(e + g0 * cpg)
    return np.concatenate(starts_all), np.concatenate(ends_all)


def _free_counts(maps: np.ndarray, valid: int, per_group: int) -> np.ndarray:
    """Free clusters per bitmap row, as the descriptor counts them: among the group's real
    clusters (bits past the last of the ``valid`` clusters are padding)."""
    free = per_group - popcount_rows(maps)
    last = (valid - 1) // per_group
    tail = valid - last * per_group
    if tail < per_group:
        row = maps[last].copy()
        row[-(-tail // 8) :] = 0
        if tail % 8:
            row[tail // 8] &= (1 << (tail % 8)) - 1
        free[last] = tail - int(popcount_rows(row[None, :])[0])
    return free


def _metadata_blocks(sb: _Super, gd: _Groups) -> np.ndarray:
    """``[start, end)`` block runs (N x 2) of all filesystem metadata: boot block and
    superblock, superblock and GDT backups, meta_bg descriptor copies, bitmaps, inode tables."""
    meta: list[tuple[int, int]] = [(0, sb.first_data_block + 1)]  # boot block + superblock
    per_block = sb.block_size // sb.desc_size
    for b in range(sb.plain_gdt_blocks, sb.gdt_blocks):
        g = b * per_block
        # Each meta group keeps its descriptor block in its first, second and last group.
        last = g + per_block - 1  # only when the meta group is full (mke2fs, the kernel)
        for copy in {g, g + 1, last}:
            if copy < sb.groups:
                c = sb.descriptor_block(copy)
                meta.append((c, c + 1))
    # Superblock backups, and (outside meta_bg) GDT + reserved GDT copies.
    for g in sorted(sb.super_groups):
        first = sb.group_first(g)
        meta.append((first, first + 1 + sb.plain_gdt_blocks + sb.reserved_gdt))
    tables = np.stack(
        [
            np.concatenate([gd.block_bitmap, gd.inode_bitmap, gd.inode_table]),
            np.concatenate(
                [gd.block_bitmap + 1, gd.inode_bitmap + 1, gd.inode_table + gd.itable_blocks]
            ),
        ],
        axis=1,
    )
    return np.concatenate([np.array(meta, np.int64).reshape(-1, 2), tables])


def _marked_blocks(sb: _Super, unit_starts: np.ndarray, unit_ends: np.ndarray) -> Extents:
    """The block runs the bitmaps mark used (units scaled to blocks, clipped to the fs)."""
    return Extents.from_arrays(
        np.minimum(unit_starts * sb.ratio + sb.first_data_block, sb.blocks),
        np.minimum(unit_ends * sb.ratio + sb.first_data_block, sb.blocks),
    )


def _check_metadata_marked(
    area: Area, sb: _Super, gd: _Groups, marked: Extents, meta: np.ndarray
) -> None:
    """Every metadata block must be marked used, except in BLOCK_UNINIT groups.

    Without metadata_csum nothing else protects the bitmaps, and even with it a consistent but
    wrong bitmap (checksum and free count rewritten) passes; so always check."""
    uninit = np.flatnonzero(gd.block_uninit)
    implicit = Extents.from_arrays(  # BLOCK_UNINIT groups: the bitmap is computed, not stored
        sb.group_first(0) + uninit * sb.blocks_per_group,
        sb.group_first(0) + (uninit + 1) * sb.blocks_per_group,
    )
    missing = (
        Extents.from_arrays(
            np.maximum(meta[:, 0], sb.first_data_block), np.minimum(meta[:, 1], sb.blocks)
        )
        .subtract(implicit)
        .subtract(marked)
    )
    if len(missing):
        raise area.damaged(
            f"ext block {missing.first} holds filesystem metadata (superblock, descriptors, "
            "bitmaps or inode table) but the block bitmap marks it free; the bitmap is damaged"
        )


def _inode_layout(sb: _Super, gd: _Groups) -> InodeLayout:
    csum = sb.group_csums
    return InodeLayout(
        block_size=sb.block_size,
        blocks=sb.blocks,
        first_data_block=sb.first_data_block,
        inodes_per_group=sb.inodes_per_group,
        inode_size=sb.inode_size,
        inode_bitmap=gd.inode_bitmap,
        inode_table=gd.inode_table,
        inode_uninit=(gd.flags & BG_INODE_UNINIT).astype(bool) & csum,
        inodes_valid=(
            np.maximum(sb.inodes_per_group - gd.itable_unused, 0)
            if csum
            else np.full(sb.groups, sb.inodes_per_group, np.int64)
        ),
        acl_high=bool(sb.incompat & INCOMPAT_64BIT),
    )


def _used_extents(
    area: Area, sb: _Super, unit_starts: np.ndarray, unit_ends: np.ndarray, meta: np.ndarray
) -> Extents:
    """Absolute byte runs: the marked units plus all metadata, clipped to the filesystem."""
    base = sb.first_data_block * sb.block_size
    meta = meta * sb.block_size
    return Extents.from_arrays(
        np.concatenate([unit_starts * sb.unit + base, meta[:, 0]]) + area.start,
        np.minimum(np.concatenate([unit_ends * sb.unit + base, meta[:, 1]]), sb.size) + area.start,
    )


def _details(sb: _Super, walked: int, journaled: dict[int, list[bytes]]) -> dict[str, Any]:
    details: dict[str, Any] = {
        "uuid": uuid_str(sb.uuid),
        "label": sb.label,
        "block_size": sb.block_size,
        "groups": sb.groups,
        "size": sb.size,
        "inodes_checked": walked,
    }
    if sb.bigalloc:
        details["cluster_size"] = sb.unit
    if sb.needs_recovery:
        details["journal_bitmaps"] = int(sum(len(v) for v in journaled.values()))
    return details


def _journal_bitmaps(area: Area, sb: _Super, gd: _Groups) -> dict[int, list[bytes]]:
    """Journaled images of block bitmaps, from the internal journal inode."""
    (ino,) = struct.unpack_from("<I", sb.raw, 0xE0)
    if ino == 0 or (ino - 1) // sb.inodes_per_group >= gd.inode_table.size:
        raise area.damaged(f"ext journal inode {ino} does not exist")
    group, index = divmod(ino - 1, sb.inodes_per_group)
    inode = area.read(int(gd.inode_table[group]) * sb.block_size + index * sb.inode_size, 128)
    size = struct.unpack_from("<I", inode, 4)[0] | (struct.unpack_from("<I", inode, 0x6C)[0] << 32)
    jmap = journal_block_map(area, inode, sb.block_size, sb.blocks, size // sb.block_size)
    return journaled_blocks(area, jmap, sb.block_size, set(gd.block_bitmap.tolist()))


def _read_bitmaps(
    area: Area, where: np.ndarray, uninit: np.ndarray, block_size: int, nbytes: int
) -> np.ndarray:
    """One row of ``nbytes`` per group; contiguous bitmap blocks (flex_bg) are read at once."""
    out = np.zeros((where.size, nbytes), np.uint8)
    idx = np.flatnonzero(~uninit)
    if not idx.size:
        return out
    order = idx[np.argsort(where[idx], kind="stable")]
    locs = where[order]
    breaks = np.flatnonzero(np.diff(locs) != 1) + 1
    for run in np.split(np.arange(order.size), breaks):
        first = int(locs[run[0]])
        count = run.size
        data = area.read_array(first * block_size, count * block_size)
        out[order[run]] = data.reshape(count, block_size)[:, :nbytes]
    return out


def _check_gdt_csums(
    area: Area, desc: np.ndarray, stored: np.ndarray, uuid: bytes, ro_compat: int, csum_seed: int
) -> None:
    groups, desc_size = desc.shape
    group_le = np.arange(groups, dtype="<u4").view(np.uint8).reshape(groups, 4)
    body = np.concatenate([group_le, desc[:, :0x1E], desc[:, 0x20:]], axis=1)
    if ro_compat & RO_METADATA_CSUM:
        # Zero stands in for the checksum field itself, between the two halves.
        body = np.concatenate(
            [group_le, desc[:, :0x1E], np.zeros((groups, 2), np.uint8), desc[:, 0x20:]], axis=1
        )
        crc = crc_columns(body, np.full(groups, csum_seed, np.uint32)) & 0xFFFF
    else:
        seed = crc16(uuid)
        if desc_size <= 32:
            body = body[:, : 4 + 0x1E]
        crc = crc_columns(body, np.full(groups, seed, np.uint32), "crc16") & 0xFFFF
    bad = np.flatnonzero(crc.astype(np.int64) != stored)
    if bad.size:
        g = int(bad[0])
        raise area.damaged(
            f"ext group descriptor {g} checksum {int(stored[g]):#06x}, computed "
            f"{int(crc[g]):#06x}; group descriptors are damaged"
        )


def _check_bitmap_csums(
    area: Area,
    maps: np.ndarray,
    check: np.ndarray,
    stored: np.ndarray,
    seed: int,
    desc_size: int,
    g0: int,
) -> None:
    """metadata_csum: each initialised block bitmap's CRC32C (16 or 32 bits kept)."""
    idx = np.flatnonzero(check)
    if not idx.size:
        return
    crc = crc32c_rows(maps[idx], seed).astype(np.int64)
    if desc_size < 64:
        crc &= 0xFFFF
    bad = np.flatnonzero(crc != stored[idx])
    if bad.size:
        g = g0 + int(idx[bad[0]])
        raise area.damaged(
            f"ext group {g} block bitmap checksum {int(stored[idx[bad[0]]]):#x}, computed "
            f"{int(crc[bad[0]]):#x}; the bitmap is damaged"
        )
