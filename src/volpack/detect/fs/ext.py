"""ext2/3/4: used blocks from the superblock, group descriptors and block bitmaps.

BLOCK_UNINIT groups count only their metadata; all metadata is added explicitly so a stale bit
never drops it; a journal needing recovery adds its bitmap copies (ext_journal). Checksums, free
counts and pointers are checked: any inconsistency raises FsDamaged. Reads only.
"""

from __future__ import annotations

import struct

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


def _super_groups(
    groups: int, compat: int, ro_compat: int, backup_bgs: tuple[int, int]
) -> set[int]:
    """Groups holding a superblock copy: all, sparse_super (0, 1, powers of 3, 5, 7) or
    sparse_super2 (0 and the two listed groups). O(log groups) unless sparse_super is off."""
    if compat & COMPAT_SPARSE_SUPER2:
        return {0} | {g for g in backup_bgs if 0 < g < groups}
    if not ro_compat & RO_SPARSE_SUPER:
        return set(range(groups))
    out = {0, 1} if groups > 1 else {0}
    for base in (3, 5, 7):
        n = base
        while n < groups:
            out.add(n)
            n *= base
    return out


def analyse(area: Area) -> FsResult:
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
    label = text(sb[0x78:0x88])
    (reserved_gdt,) = struct.unpack_from("<H", sb, 0xCE)
    (desc_size_raw,) = struct.unpack_from("<H", sb, 0xFE)
    (first_meta_bg,) = struct.unpack_from("<I", sb, 0x104)
    (blocks_hi,) = struct.unpack_from("<I", sb, 0x150)
    backup_bgs = struct.unpack_from("<II", sb, 0x24C)
    (checksum_seed,) = struct.unpack_from("<I", sb, 0x270)
    (sb_checksum,) = struct.unpack_from("<I", sb, 0x3FC)

    (group_nr,) = struct.unpack_from("<H", sb, 0x5A)
    if group_nr != 0:
        # A backup superblock where a primary should be: the region does not start the filesystem.
        raise area.damaged(f"ext superblock of group {group_nr} where the primary should be")
    if incompat & INCOMPAT_JOURNAL_DEV:
        raise area.damaged("is an external ext journal device, not a filesystem")
    if ro_compat & RO_METADATA_CSUM and crc32c_raw(sb[:0x3FC]) != sb_checksum:
        raise area.damaged(f"ext superblock checksum mismatch (stored {sb_checksum:#010x})")
    (state,) = struct.unpack_from("<H", sb, 0x3A)
    if not state & STATE_VALID or state & STATE_ERROR:
        # Without a journal, a mounted or crashed ext2 has VALID cleared; ERROR means the kernel
        # found an inconsistency. Either way the bitmaps are not to be trusted.
        what = "has errors recorded" if state & STATE_ERROR else "was not cleanly unmounted"
        raise area.damaged(f"ext filesystem {what} (state {state:#x}); run e2fsck first")
    needs_recovery = bool(incompat & INCOMPAT_RECOVER)
    if needs_recovery and not compat & COMPAT_HAS_JOURNAL:
        raise area.damaged("ext journal needs recovery but there is no internal journal")
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
    per_block = block_size // desc_size
    gdt_blocks = -(-groups // per_block)
    meta_bg = bool(incompat & INCOMPAT_META_BG)
    if meta_bg and first_meta_bg > gdt_blocks:
        raise area.damaged(f"ext first meta_bg {first_meta_bg} beyond {gdt_blocks} GDT blocks")

    def group_first(g: int) -> int:
        return first_data_block + g * blocks_per_group

    super_groups = _super_groups(groups, compat, ro_compat, backup_bgs)

    def has_super(g: int) -> bool:
        return g in super_groups

    # -- group descriptor table ------------------------------------------------------------
    meta_blocks: list[tuple[int, int]] = [(0, first_data_block + 1)]  # boot block + superblock
    gdt_parts: list[np.ndarray] = []
    # Outside meta_bg the GDT follows the superblock; meta groups keep their own blocks.
    plain = first_meta_bg if meta_bg else gdt_blocks
    gdt_start = first_data_block + 1
    if plain:
        gdt_parts.append(area.read_array(gdt_start * block_size, plain * block_size))
    for b in range(plain, gdt_blocks):
        g = b * per_block
        loc = group_first(g) + (1 if has_super(g) else 0)
        gdt_parts.append(area.read_array(loc * block_size, block_size))
        # Each meta group keeps its descriptor block in its first, second and last group.
        last = g + per_block - 1  # only when the meta group is full (mke2fs, the kernel)
        for copy in {g, g + 1, last}:
            if copy < groups:
                c = group_first(copy) + (1 if has_super(copy) else 0)
                meta_blocks.append((c, c + 1))
    gdt = np.concatenate(gdt_parts)[: groups * desc_size].reshape(groups, desc_size)

    # Superblock backups, and (outside meta_bg) GDT + reserved GDT copies.
    reserved = reserved_gdt if compat & COMPAT_RESIZE_INODE else 0
    for g in sorted(super_groups):
        first = group_first(g)
        meta_blocks.append((first, first + 1 + plain + reserved))

    desc = gdt.view(np.uint8)
    words = np.ascontiguousarray(desc[:, :32]).view("<u4")  # 8 little-endian u32 per row
    block_bitmap = words[:, 0].astype(np.int64)
    inode_bitmap = words[:, 1].astype(np.int64)
    inode_table = words[:, 2].astype(np.int64)
    halves = np.ascontiguousarray(desc[:, 12:20]).view("<u2")
    free_blocks = halves[:, 0].astype(np.int64)
    flags = halves[:, 3].astype(np.int64)
    stored_csum = np.ascontiguousarray(desc[:, 0x1E:0x20]).view("<u2")[:, 0].astype(np.int64)
    if desc_size >= 64:
        hi = np.ascontiguousarray(desc[:, 32:48]).view("<u4")
        block_bitmap |= hi[:, 0].astype(np.int64) << 32
        inode_bitmap |= hi[:, 1].astype(np.int64) << 32
        inode_table |= hi[:, 2].astype(np.int64) << 32
        free_blocks |= (
            np.ascontiguousarray(desc[:, 44:46]).view("<u2")[:, 0].astype(np.int64)
        ) << 16

    csum_seed = checksum_seed if incompat & INCOMPAT_CSUM_SEED else crc32c_raw(uuid)
    if ro_compat & (RO_GDT_CSUM | RO_METADATA_CSUM):
        _check_gdt_csums(area, desc, stored_csum, uuid, ro_compat, csum_seed)
    bitmap_csum: np.ndarray | None = None
    if ro_compat & RO_METADATA_CSUM:
        bitmap_csum = np.ascontiguousarray(desc[:, 0x18:0x1A]).view("<u2")[:, 0].astype(np.int64)
        if desc_size >= 64:
            hi = np.ascontiguousarray(desc[:, 0x38:0x3A]).view("<u2")[:, 0].astype(np.int64)
            bitmap_csum |= hi << 16

    itable_blocks = -(-(inodes_per_group * inode_size) // block_size)
    for name, arr, span in (
        ("block bitmap", block_bitmap, 1),
        ("inode bitmap", inode_bitmap, 1),
        ("inode table", inode_table, itable_blocks),
    ):
        bad = np.flatnonzero((arr < first_data_block) | (arr + span > blocks))
        if bad.size:
            g = int(bad[0])
            raise area.damaged(
                f"ext group {g} {name} at block {int(arr[g])} outside 0..{blocks}; "
                "group descriptors are damaged"
            )

    # -- bitmaps ---------------------------------------------------------------------------
    starts_all: list[np.ndarray] = []
    ends_all: list[np.ndarray] = []
    total_units = -(-(blocks - first_data_block) // ratio)
    bytes_per_map = clusters_per_group // 8
    uninit = (flags & BG_BLOCK_UNINIT).astype(bool)
    if not ro_compat & (RO_GDT_CSUM | RO_METADATA_CSUM):
        uninit[:] = False  # the flag means nothing without group checksums
    # A journal that needs recovery holds newer copies of some bitmaps: OR every copy in (the
    # used set only grows) and skip the count and checksum checks of those groups, whose
    # descriptors are just as stale.
    journaled: dict[int, list[bytes]] = {}
    if needs_recovery:
        journaled = _journal_bitmaps(
            area, sb, block_bitmap, inode_table, inodes_per_group, inode_size, block_size, blocks
        )
    in_journal = np.isin(block_bitmap, np.fromiter(journaled, np.int64, len(journaled)))
    for g0 in range(0, groups, _GROUP_CHUNK):
        g1 = min(groups, g0 + _GROUP_CHUNK)
        maps = _read_bitmaps(area, block_bitmap[g0:g1], uninit[g0:g1], block_size, bytes_per_map)
        for i in np.flatnonzero(in_journal[g0:g1]).tolist():
            for image in journaled[int(block_bitmap[g0 + i])]:
                maps[i] |= np.frombuffer(image, np.uint8)[:bytes_per_map]
        valid = min(total_units - g0 * clusters_per_group, (g1 - g0) * clusters_per_group)
        # The descriptor counts free clusters among the group's real clusters (bits past the
        # last cluster are padding).
        used_bits = popcount_rows(maps)
        free = clusters_per_group - used_bits
        last = (valid - 1) // clusters_per_group
        tail = valid - last * clusters_per_group
        if tail < clusters_per_group:
            row = maps[last].copy()
            row[-(-tail // 8) :] = 0
            if tail % 8:
                row[tail // 8] &= (1 << (tail % 8)) - 1
            free[last] = tail - int(popcount_rows(row[None, :])[0])
        check = ~uninit[g0:g1] & ~in_journal[g0:g1]
        if bitmap_csum is not None:
            _check_bitmap_csums(area, maps, check, bitmap_csum[g0:g1], csum_seed, desc_size, g0)
        mismatch = np.flatnonzero(check & (free != free_blocks[g0:g1]))
        if mismatch.size:
            g = g0 + int(mismatch[0])
            raise area.damaged(
                f"ext group {g} free count {int(free_blocks[g])} disagrees with its bitmap "
                f"({int(free[g - g0])} free); bitmaps or descriptors are damaged"
            )
        s, e = bitmap_runs(maps.reshape(-1), valid)
        starts_all.append(s + g0 * clusters_per_group)
        ends_all.append(e + g0 * clusters_per_group)

    base = first_data_block * block_size
    unit_starts = np.concatenate(starts_all)
    unit_ends = np.concatenate(ends_all)
    starts = unit_starts * unit + base
    ends = unit_ends * unit + base
    meta = np.array(meta_blocks, np.int64).reshape(-1, 2)
    tables = np.stack(
        [
            np.concatenate([block_bitmap, inode_bitmap, inode_table]),
            np.concatenate([block_bitmap + 1, inode_bitmap + 1, inode_table + itable_blocks]),
        ],
        axis=1,
    )
    meta = np.concatenate([meta, tables])

    # -- cross-check: what the metadata references must be marked ---------------------------
    # Without metadata_csum nothing else protects the bitmaps, and even with it a consistent
    # but wrong bitmap (checksum and free count rewritten) passes; so always check.
    marked = Extents.from_arrays(
        np.minimum(unit_starts * ratio + first_data_block, blocks),
        np.minimum(unit_ends * ratio + first_data_block, blocks),
    )
    implicit = Extents.from_arrays(  # BLOCK_UNINIT groups: the bitmap is computed, not stored
        group_first(0) + np.flatnonzero(uninit) * blocks_per_group,
        group_first(0) + (np.flatnonzero(uninit) + 1) * blocks_per_group,
    )
    missing = (
        Extents.from_arrays(
            np.maximum(meta[:, 0], first_data_block), np.minimum(meta[:, 1], blocks)
        )
        .subtract(implicit)
        .subtract(marked)
    )
    if len(missing):
        raise area.damaged(
            f"ext block {missing.first} holds filesystem metadata (superblock, descriptors, "
            "bitmaps or inode table) but the block bitmap marks it free; the bitmap is damaged"
        )
    csum = bool(ro_compat & (RO_GDT_CSUM | RO_METADATA_CSUM))
    itable_unused = np.ascontiguousarray(desc[:, 0x1C:0x1E]).view("<u2")[:, 0].astype(np.int64)
    if desc_size >= 64:
        hi16 = np.ascontiguousarray(desc[:, 0x32:0x34]).view("<u2")[:, 0].astype(np.int64)
        itable_unused |= hi16 << 16
    layout = InodeLayout(
        block_size=block_size,
        blocks=blocks,
        first_data_block=first_data_block,
        inodes_per_group=inodes_per_group,
        inode_size=inode_size,
        inode_bitmap=inode_bitmap,
        inode_table=inode_table,
        inode_uninit=(flags & BG_INODE_UNINIT).astype(bool) & csum,
        inodes_valid=(
            np.maximum(inodes_per_group - itable_unused, 0)
            if csum
            else np.full(groups, inodes_per_group, np.int64)
        ),
        acl_high=bool(incompat & INCOMPAT_64BIT),
    )
    # Inodes may reference metadata kept anyway (the resize inode maps the reserved GDT blocks
    # of BLOCK_UNINIT groups); what matters is that every referenced block is kept.
    kept = marked.union(Extents.from_arrays(meta[:, 0], np.minimum(meta[:, 1], blocks)))
    walked = check_inode_references(area, layout, kept, _read_bitmaps)

    meta = meta * block_size
    used = Extents.from_arrays(
        np.concatenate([starts, meta[:, 0]]) + area.start,
        np.minimum(np.concatenate([ends, meta[:, 1]]), size) + area.start,
    )
    kind = "ext4" if incompat & ~0x16 or ro_compat & ~0x7 else ("ext3" if compat & 0x4 else "ext2")
    details = {
        "uuid": uuid_str(uuid),
        "label": label,
        "block_size": block_size,
        "groups": groups,
        "size": size,
        "inodes_checked": walked,
    }
    if bigalloc:
        details["cluster_size"] = unit
    if needs_recovery:
        details["journal_bitmaps"] = int(sum(len(v) for v in journaled.values()))
    return FsResult(kind, size, used, details)


def _journal_bitmaps(
    area: Area,
    sb: bytes,
    block_bitmap: np.ndarray,
    inode_table: np.ndarray,
    inodes_per_group: int,
    inode_size: int,
    block_size: int,
    blocks: int,
) -> dict[int, list[bytes]]:
    """Journaled images of block bitmaps, from the internal journal inode."""
    (ino,) = struct.unpack_from("<I", sb, 0xE0)
    if ino == 0 or (ino - 1) // inodes_per_group >= inode_table.size:
        raise area.damaged(f"ext journal inode {ino} does not exist")
    group, index = divmod(ino - 1, inodes_per_group)
    inode = area.read(int(inode_table[group]) * block_size + index * inode_size, 128)
    size = struct.unpack_from("<I", inode, 4)[0] | (struct.unpack_from("<I", inode, 0x6C)[0] << 32)
    jmap = journal_block_map(area, inode, block_size, blocks, size // block_size)
    return journaled_blocks(area, jmap, block_size, set(block_bitmap.tolist()))


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
