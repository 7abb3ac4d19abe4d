"""ext2/3/4 cross-check: every block an in-use inode references must be marked in the bitmaps.

Walks the inodes the inode bitmaps mark in use (extent trees with their index and leaf blocks,
or direct/indirect maps with the indirect blocks themselves, plus xattr blocks) level by level
in numpy, batch by batch, and raises FsDamaged naming the inode of the first referenced block the
block bitmaps mark free. Reads only; it never decides what is used, it only refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from volpack.detect.fs._common import Area
from volpack.extents import Extents, unique

EXTENTS_FL = 0x80000
INLINE_DATA_FL = 0x10000000
EXT_MAGIC = 0xF30A
RESIZE_INO = 7
_S_IFMT, _S_IFREG, _S_IFDIR, _S_IFLNK = 0xF000, 0x8000, 0x4000, 0xA000
_MAX_DEPTH = 5
# Inode-table or tree blocks read at once: bounds memory (16 MiB of 4 KiB blocks).
_BATCH_BLOCKS = 4096
_GROUP_CHUNK = 2048

ReadBitmaps = Callable[[Area, np.ndarray, np.ndarray, int, int], np.ndarray]


@dataclass(frozen=True, slots=True)
class InodeLayout:
    """What the walk needs from the superblock and group descriptors."""

    block_size: int
    blocks: int
    first_data_block: int
    inodes_per_group: int
    inode_size: int
    inode_bitmap: np.ndarray  # per group
    inode_table: np.ndarray  # per group
    inode_uninit: np.ndarray  # per group: bitmap not initialised, no inode in use
    inodes_valid: np.ndarray  # per group: inodes before the unused tail (itable_unused)
    acl_high: bool  # 64bit: the xattr block number has 16 more bits


def check_inode_references(
    area: Area, lay: InodeLayout, marked: Extents, read_bitmaps: ReadBitmaps
) -> int:
    """Raise FsDamaged when an in-use inode references a block outside ``marked`` (block runs)
    or outside the filesystem; return the number of inodes walked."""
    walker = _Walker(area, lay, marked)
    groups = lay.inode_table.size
    walked = 0
    for g0 in range(0, groups, _GROUP_CHUNK):
        g1 = min(groups, g0 + _GROUP_CHUNK)
        maps = read_bitmaps(
            area,
            lay.inode_bitmap[g0:g1],
            lay.inode_uninit[g0:g1],
            lay.block_size,
            lay.inodes_per_group // 8,
        )
        # Only non-zero bytes are expanded to bits: a mostly empty filesystem costs one pass.
        busy = np.flatnonzero(maps.any(axis=1))
        rows, cols = np.nonzero(maps[busy])
        if not rows.size:
            continue
        bits = np.unpackbits(maps[busy[rows], cols][:, None], axis=1, bitorder="little")
        which, bit = np.nonzero(bits)
        group = busy[rows[which]].astype(np.int64) + g0
        idx = cols[which].astype(np.int64) * 8 + bit
        valid = idx < lay.inodes_valid[group]
        group, idx = group[valid], idx[valid]
        offset = lay.inode_table[group] * lay.block_size + idx * lay.inode_size
        ino = group * lay.inodes_per_group + idx + 1
        # The resize inode maps only reserved GDT blocks and their backups, which the caller
        # keeps as metadata whatever the bitmap says; walking it would read up to 1024 blocks.
        keep = ino != RESIZE_INO
        offset, ino = offset[keep], ino[keep]
        walked += walker.inodes(offset, ino)
    return walked


class _Walker:
    __slots__ = ("area", "lay", "marked", "per_block")

    def __init__(self, area: Area, lay: InodeLayout, marked: Extents) -> None:
        self.area = area
        self.lay = lay
        self.marked = marked
        self.per_block = lay.block_size // lay.inode_size

    # -- reading ------------------------------------------------------------------------------
    def _read_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """Rows of ``block_size`` bytes for sorted unique block numbers (contiguous ones in one
        read)."""
        bs = self.lay.block_size
        edges = [0, *(np.flatnonzero(np.diff(blocks) != 1) + 1).tolist(), blocks.size]
        if len(edges) == 2:  # one contiguous run (flex_bg inode tables): no copy
            return self.area.read_array(int(blocks[0]) * bs, blocks.size * bs).reshape(-1, bs)
        out = np.empty((blocks.size, bs), np.uint8)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            data = self.area.read_array(int(blocks[lo]) * bs, (hi - lo) * bs)
            out[lo:hi] = data.reshape(hi - lo, bs)
        return out

    # -- inodes ---------------------------------------------------------------------------------
    def inodes(self, offset: np.ndarray, ino: np.ndarray) -> int:
        bs = self.lay.block_size
        blk = offset // bs
        needed = unique(blk)
        for b0 in range(0, needed.size, _BATCH_BLOCKS):
            chunk = needed[b0 : b0 + _BATCH_BLOCKS]
            lo, hi = np.searchsorted(blk, [chunk[0], chunk[-1] + 1])
            data = self._read_blocks(chunk).reshape(-1, self.lay.inode_size)
            row = (
                np.searchsorted(chunk, blk[lo:hi]) * self.per_block
                + (offset[lo:hi] % bs) // self.lay.inode_size
            )
            self._parse(data[row, :128], ino[lo:hi])
        return int(ino.size)

    def _parse(self, raw: np.ndarray, ino: np.ndarray) -> None:
        def u32(at: int) -> np.ndarray:
            return np.ascontiguousarray(raw[:, at : at + 4]).view("<u4")[:, 0].astype(np.int64)

        def u16(at: int) -> np.ndarray:
            return np.ascontiguousarray(raw[:, at : at + 2]).view("<u2")[:, 0].astype(np.int64)

        mode = u16(0) & _S_IFMT
        flags = u32(0x20)
        size = u32(4) | (u32(0x6C) << 32)
        acl = u32(0x68)
        if self.lay.acl_high:
            acl |= u16(0x76) << 32
        has = acl != 0
        self._refs(acl[has], acl[has] + 1, ino[has], "extended attribute block")
        # Fast symlinks keep the target in i_block; device nodes keep device numbers there.
        fast_link = (mode == _S_IFLNK) & (size > 0) & (size < 60)
        mapped = ((mode == _S_IFREG) | (mode == _S_IFDIR) | (mode == _S_IFLNK)) & ~fast_link
        mapped &= (flags & INLINE_DATA_FL) == 0
        iblock = np.ascontiguousarray(raw[:, 0x28 : 0x28 + 60])
        ext = mapped & ((flags & EXTENTS_FL) != 0)
        self._extent_nodes(iblock[ext], ino[ext], None)
        ind = mapped & ((flags & EXTENTS_FL) == 0)
        self._indirect(iblock[ind].view("<u4").astype(np.int64), ino[ind])

    # -- checks ---------------------------------------------------------------------------------
    def _refs(self, starts: np.ndarray, ends: np.ndarray, ino: np.ndarray, what: str) -> None:
        if not starts.size:
            return
        lay = self.lay
        bad = np.flatnonzero((starts < lay.first_data_block) | (ends > lay.blocks))
        if bad.size:
            i = int(bad[0])
            raise self.area.damaged(
                f"ext inode {int(ino[i])} {what} at blocks [{int(starts[i])}, {int(ends[i])}) "
                f"outside {lay.first_data_block}..{lay.blocks}; the inode is damaged"
            )
        missing = Extents.from_arrays(starts, ends).subtract(self.marked)
        if len(missing):
            b = missing.first
            i = int(np.flatnonzero((starts <= b) & (ends > b))[0])
            raise self.area.damaged(
                f"ext block {b} is used by inode {int(ino[i])} ({what}) but the block bitmap "
                "marks it free; the bitmap is damaged"
            )

    # -- extent trees ---------------------------------------------------------------------------
    def _extent_nodes(self, nodes: np.ndarray, ino: np.ndarray, depth: np.ndarray | None) -> None:
        """Check extent-tree nodes (i_block areas or whole tree blocks), then their children,
        a batch of child blocks at a time (memory stays bounded; depth is at most 5).
        ``depth`` is what the parents say each node's depth must be."""
        if nodes.shape[0]:
            head = np.ascontiguousarray(nodes[:, :12]).view("<u2")
            magic, count, cap, level = (head[:, i].astype(np.int64) for i in range(4))
            fits = (nodes.shape[1] - 12) // 12
            bad = (magic != EXT_MAGIC) | (count > cap) | (cap > fits) | (level > _MAX_DEPTH)
            if depth is not None:
                bad |= level != depth
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise self.area.damaged(
                    f"ext inode {int(ino[i])} extent tree node is not valid (magic "
                    f"{int(magic[i]):#06x}, {int(count[i])} of {int(cap[i])} entries, depth "
                    f"{int(level[i])}); the inode is damaged"
                )
            width = int(count.max()) if count.size else 0
            entries = nodes[:, 12 : 12 + 12 * width].reshape(-1, width, 12)
            live = np.arange(width)[None, :] < count[:, None]
            rows, cols = np.nonzero(live)
            ent = np.ascontiguousarray(entries[rows, cols])  # (k, 12)
            owner = ino[rows]
            leaf = level[rows] == 0
            w32 = ent.view("<u4")  # 3 words per entry
            w16 = ent.view("<u2")  # 6 halves per entry
            # Leaf: ee_block, ee_len, ee_start_hi, ee_start_lo. Uninitialised extents
            # (len > 32768) are allocated all the same.
            length = w16[leaf, 2].astype(np.int64)
            length = np.where(length > 32768, length - 32768, length)
            start = (w16[leaf, 3].astype(np.int64) << 32) | w32[leaf, 2].astype(np.int64)
            self._refs(start, start + length, owner[leaf], "extent")
            # Index: ei_block, ei_leaf_lo, ei_leaf_hi.
            child = (w16[~leaf, 4].astype(np.int64) << 32) | w32[~leaf, 1].astype(np.int64)
            child_owner = owner[~leaf]
            child_depth = level[rows][~leaf] - 1
            self._refs(child, child + 1, child_owner, "extent tree block")
            order = np.argsort(child, kind="stable")
            for b in range(0, order.size, _BATCH_BLOCKS):
                sel = order[b : b + _BATCH_BLOCKS]
                uniq, inverse = np.unique(child[sel], return_inverse=True)
                self._extent_nodes(
                    self._read_blocks(uniq)[inverse], child_owner[sel], child_depth[sel]
                )

    # -- indirect maps --------------------------------------------------------------------------
    def _indirect(self, ptrs: np.ndarray, ino: np.ndarray) -> None:
        """ext2/3 block maps: 12 direct pointers, then single, double and triple indirect."""
        if not ptrs.shape[0]:
            return
        direct = ptrs[:, :12]
        r, c = np.nonzero(direct)
        self._refs(direct[r, c], direct[r, c] + 1, ino[r], "block pointer")
        for level in (1, 2, 3):
            top = ptrs[:, 11 + level]
            has = top != 0
            blocks, owner = top[has], ino[has]
            for lvl in range(level, 0, -1):
                self._refs(blocks, blocks + 1, owner, "indirect block")
                if not blocks.size:
                    break
                blocks, owner = self._indirect_level(blocks, owner, last=lvl == 1)

    def _indirect_level(
        self, blocks: np.ndarray, owner: np.ndarray, last: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pointers held by a set of indirect blocks, batch by batch. For the last level they
        are data blocks and are checked here; otherwise they are returned as the next level."""
        order = np.argsort(blocks, kind="stable")
        blocks, owner = blocks[order], owner[order]
        next_blocks: list[np.ndarray] = []
        next_owner: list[np.ndarray] = []
        for b0 in range(0, blocks.size, _BATCH_BLOCKS):
            chunk = blocks[b0 : b0 + _BATCH_BLOCKS]
            uniq, inverse = np.unique(chunk, return_inverse=True)
            table = self._read_blocks(uniq).view("<u4")[inverse].astype(np.int64)
            r, c = np.nonzero(table)
            ptr = table[r, c]
            who = owner[b0 : b0 + _BATCH_BLOCKS][r]
            if last:
                self._refs(ptr, ptr + 1, who, "block pointer")
            else:
                next_blocks.append(ptr)
                next_owner.append(who)
        if last or not next_blocks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(next_blocks), np.concatenate(next_owner)
