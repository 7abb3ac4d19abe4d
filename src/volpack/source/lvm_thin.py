"""Thin-provisioning metadata (dm-thin's on-disk format), read offline from the bytes of a pool's
metadata device: superblock, space-map roots, the two-level data-mapping B-tree, device details.

It yields each thin device's mapped blocks as runs (thin block → data block) for the LVM source.
It only reads, never repairs, and refuses any node whose checksum, magic or bounds do not check.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from volpack.errors import SourceError

META_BLOCK = 4096
SUPERBLOCK_MAGIC = 27022010
SUPERBLOCK_CSUM_XOR = 160774
BTREE_CSUM_XOR = 121107
INTERNAL_NODE = 1
LEAF_NODE = 2
NODE_HEADER = struct.Struct("<IIQIIII")  # csum, flags, blocknr, nr_entries, max_entries, vsize, pad
DETAILS = np.dtype([("mapped", "<u8"), ("trans", "<u8"), ("ctime", "<u4"), ("stime", "<u4")])
MAX_TREE_DEPTH = 16  # 64-bit keys with >= 2 entries per node cannot need more

# Superblock fields used here (offsets from the dm-thin on-disk layout).
_SB = struct.Struct("<IIQ16sQIIQQ")  # csum flags blocknr uuid magic version time trans_id held_root
_SM_ROOT = struct.Struct("<QQQQ")  # nr_blocks nr_allocated bitmap_root ref_count_root
_SB_TAIL = struct.Struct("<QQIIQIII")  # mapping_root details_root data_bs meta_bs meta_nr flags×3

ReadAt = Callable[[int, int], bytes]


# -- crc32c -------------------------------------------------------------------------------------
# The checksum covers a fixed 4092 bytes per block, so it is linear in the block's bytes: the XOR
# of one precomputed word per (position, byte value), plus the contribution of the ~0 seed. That
# is one numpy gather and reduce per block (a 4 MiB table, built once).


@lru_cache(maxsize=1)
def _crc_tables() -> tuple[np.ndarray, int]:
    poly = 0x82F63B78
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    length = META_BLOCK - 4
    # contrib[p][b]: crc (seed 0) of a message with only bit b (LSB-first) of byte p set.
    contrib = np.zeros((length, 8), np.uint32)
    last = [table[1 << b] for b in range(8)]
    for p in range(length - 1, -1, -1):
        contrib[p] = last
        last = [(c >> 8) ^ table[c & 0xFF] for c in last]
    seed = 0xFFFFFFFF
    for _ in range(length):
        seed = (seed >> 8) ^ table[seed & 0xFF]
    by_value = np.zeros((length, 256), np.uint32)
    values = np.arange(256)
    for b in range(8):
        has_bit = ((values >> b) & 1).astype(bool)
        by_value[:, has_bit] ^= contrib[:, b : b + 1]
    return by_value, seed


def block_checksum(block: bytes, xor: int) -> int:
    """dm-persistent-data's checksum of bytes 4..4096: crc32c seeded ~0, not inverted, ^ xor."""
    table, seed = _crc_tables()
    data = np.frombuffer(block, np.uint8, META_BLOCK - 4, 4)
    return int(np.bitwise_xor.reduce(table[_POSITIONS, data])) ^ seed ^ xor


_POSITIONS = np.arange(META_BLOCK - 4)


# -- the metadata --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThinDevice:
    dev_id: int
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int


@dataclass(frozen=True, slots=True, eq=False)
class ThinMap:
    """A thin device's mapped blocks as runs: ``virt[i] .. +length[i]`` → ``data[i] ..``."""

    virt: np.ndarray
    data: np.ndarray
    length: np.ndarray

    def total(self) -> int:
        return int(self.length.sum())


class ThinPool:
    """The metadata of one thin pool. ``read_at(offset, length)`` reads the metadata device."""

    def __init__(self, read_at: ReadAt, meta_size: int, where: str, *, snapshot: bool = False):
        self._read_at = read_at
        self.where = where
        self.meta_blocks = meta_size // META_BLOCK
        if self.meta_blocks < 1:
            raise SourceError(f"{where}: metadata device of {meta_size} bytes holds no superblock")
        sb = self._superblock(0)
        self.held_root = sb["held_root"]
        if snapshot:
            if not self.held_root:
                raise SourceError(
                    f"{where}: the pool has no metadata snapshot; take one (dmsetup message … "
                    "reserve_metadata_snap) or read an inactive pool without it"
                )
            sb = self._superblock(self.held_root)
        self.snapshot = snapshot
        self.transaction_id: int = sb["trans_id"]
        self.time: int = sb["time"]
        self.data_block_size: int = sb["data_block_size"]
        self.data_blocks: int = sb["data_blocks"]
        self.mapping_root: int = sb["mapping_root"]
        self.details_root: int = sb["details_root"]

    # -- blocks ---------------------------------------------------------------------------------
    def _block(self, blocknr: int, what: str) -> bytes:
        if not 0 <= blocknr < self.meta_blocks:
            raise SourceError(
                f"{self.where}: {what} points at metadata block {blocknr}, past the "
                f"{self.meta_blocks} blocks of the metadata device; the metadata is damaged"
            )
        data = self._read_at(blocknr * META_BLOCK, META_BLOCK)
        if len(data) != META_BLOCK:
            raise SourceError(f"{self.where}: short read of metadata block {blocknr}")
        return data

    def _superblock(self, blocknr: int) -> dict[str, int]:
        w = f"{self.where}: thin superblock at metadata block {blocknr}"
        raw = self._block(blocknr, "the superblock")
        csum, _flags, where_nr, _uuid, magic, version, time, trans_id, held = _SB.unpack_from(raw)
        if magic != SUPERBLOCK_MAGIC:
            raise SourceError(
                f"{w}: bad magic {magic} (expected {SUPERBLOCK_MAGIC}); not thin "
                "metadata, or damaged"
            )
        actual = block_checksum(raw, SUPERBLOCK_CSUM_XOR)
        if actual != csum:
            raise SourceError(f"{w}: checksum {actual:#010x} != recorded {csum:#010x}; damaged")
        if where_nr != blocknr:
            raise SourceError(f"{w}: says it is block {where_nr}")
        if version not in (1, 2):
            raise SourceError(f"{w}: metadata version {version} is not supported (1 and 2 are)")
        data_nr, _, _, _ = _SM_ROOT.unpack_from(raw, 64)
        meta_nr_sm, _, _, _ = _SM_ROOT.unpack_from(raw, 192)
        (mapping_root, details_root, data_bs, meta_bs, meta_nr, _compat, _ro, incompat) = (
            _SB_TAIL.unpack_from(raw, 320)
        )
        if meta_bs != META_BLOCK // 512:
            raise SourceError(f"{w}: metadata block size {meta_bs * 512} is not {META_BLOCK}")
        if not 128 <= data_bs <= 2097152 or data_bs % 128:
            raise SourceError(f"{w}: data block size {data_bs} sectors is out of range")
        if incompat:
            raise SourceError(f"{w}: incompatible feature flags {incompat:#x} are not supported")
        if meta_nr_sm > self.meta_blocks or meta_nr > self.meta_blocks:
            raise SourceError(
                f"{w}: records {max(meta_nr, meta_nr_sm)} metadata blocks but the metadata "
                f"device holds {self.meta_blocks}; it was cut short or the LV is wrong"
            )
        return {
            "trans_id": trans_id,
            "time": time,
            "held_root": held,
            "data_block_size": data_bs * 512,
            "data_blocks": data_nr,
            "mapping_root": mapping_root,
            "details_root": details_root,
        }

    def _walk(self, root: int, value_size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """All (key, value) pairs of a B-tree, keys strictly increasing; values as raw rows."""
        keys: list[np.ndarray] = []
        values: list[np.ndarray] = []
        seen: set[int] = set()
        stack = [(root, 0)]
        last_key = -1
        while stack:
            blocknr, depth = stack.pop()
            if blocknr in seen or depth > MAX_TREE_DEPTH:
                raise SourceError(f"{self.where}: {what} B-tree loops at block {blocknr}; damaged")
            seen.add(blocknr)
            raw = self._block(blocknr, what)
            w = f"{self.where}: {what} B-tree node {blocknr}"
            csum, flags, where_nr, n, max_entries, vsize, _ = NODE_HEADER.unpack_from(raw)
            actual = block_checksum(raw, BTREE_CSUM_XOR)
            if actual != csum:
                raise SourceError(f"{w}: checksum {actual:#010x} != recorded {csum:#010x}; damaged")
            if where_nr != blocknr:
                raise SourceError(f"{w}: says it is block {where_nr}; damaged")
            leaf = bool(flags & LEAF_NODE)
            want = value_size if leaf else 8
            if (
                flags & (INTERNAL_NODE | LEAF_NODE) not in (INTERNAL_NODE, LEAF_NODE)
                or vsize != want
                or n > max_entries
                or NODE_HEADER.size + max_entries * (8 + vsize) > META_BLOCK
                or (n == 0 and not leaf)
            ):
                raise SourceError(
                    f"{w}: flags {flags:#x}, {n}/{max_entries} entries of {vsize} bytes do not "
                    "make a valid node; damaged"
                )
            node_keys = np.frombuffer(raw, "<u8", n, NODE_HEADER.size).astype(np.int64)
            if n and (node_keys.min() < 0 or np.any(np.diff(node_keys) <= 0)):
                raise SourceError(f"{w}: keys are not in increasing order; damaged")
            vals_at = NODE_HEADER.size + 8 * max_entries
            if leaf:
                if n and node_keys[0] <= last_key:
                    raise SourceError(f"{w}: keys overlap the previous leaf; damaged")
                if n:
                    last_key = int(node_keys[-1])
                keys.append(node_keys)
                values.append(np.frombuffer(raw, np.uint8, n * vsize, vals_at).reshape(n, vsize))
            else:
                children = np.frombuffer(raw, "<u8", n, vals_at).tolist()
                # Depth-first, leftmost child popped first, so leaves arrive in key order.
                stack.extend((int(c), depth + 1) for c in reversed(children))
        if not keys:
            return np.zeros(0, np.int64), np.zeros((0, value_size), np.uint8)
        return np.concatenate(keys), np.concatenate(values)

    # -- public ---------------------------------------------------------------------------------
    def devices(self) -> dict[int, ThinDevice]:
        keys, rows = self._walk(self.details_root, DETAILS.itemsize, "device details")
        details = np.ascontiguousarray(rows).view(DETAILS).reshape(-1)
        return {
            int(k): ThinDevice(
                int(k), int(d["mapped"]), int(d["trans"]), int(d["ctime"]), int(d["stime"])
            )
            for k, d in zip(keys.tolist(), details, strict=True)
        }

    def device_map(self, dev_id: int) -> ThinMap:
        """The mapped blocks of thin device ``dev_id``, coalesced into runs."""
        top_keys, top_vals = self._walk(self.mapping_root, 8, "data mapping (top level)")
        hit = np.flatnonzero(top_keys == dev_id)
        if hit.size == 0:
            known = ", ".join(str(k) for k in top_keys.tolist()[:20]) or "none"
            raise SourceError(
                f"{self.where}: thin device {dev_id} has no mapping tree (devices: {known}); the "
                "VG text and the pool metadata disagree"
            )
        root = int(top_vals[hit[0]].view("<u8")[0])
        virt, vals = self._walk(root, 8, f"data mapping of thin device {dev_id}")
        data = (np.ascontiguousarray(vals).view("<u8").reshape(-1) >> np.uint64(24)).astype(
            np.int64
        )
        if data.size and int(data.max()) >= self.data_blocks:
            bad = int(data.max())
            raise SourceError(
                f"{self.where}: thin device {dev_id} maps to data block {bad}, past the "
                f"{self.data_blocks} blocks of the pool; the metadata is damaged"
            )
        if virt.size == 0:
            z = np.zeros(0, np.int64)
            return ThinMap(z, z, z)
        brk = np.ones(virt.size, bool)
        brk[1:] = (np.diff(virt) != 1) | (np.diff(data) != 1)
        first = np.flatnonzero(brk)
        length = np.diff(np.append(first, virt.size))
        return ThinMap(virt[first], data[first], length.astype(np.int64))
