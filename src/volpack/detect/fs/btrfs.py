"""btrfs: used bytes from the chunk tree (logical → physical) and the extent tree.

Walks the chunk, root and extent trees (checksums, generations and identities checked) and maps
each allocated extent to this device; the first MiB and superblock mirrors are used, striped
profiles count whole stripes. Raises FsDamaged for anything inconsistent; reads only.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from volpack.detect.fs._common import Area, FsResult, crc32c, crc32c_rows, text, uuid_str
from volpack.extents import Extents

SB_OFFSET = 0x10000
SB_MIRRORS = (0x10000, 0x4000000, 0x4000000000, 0x4000000000000)
MAGIC = b"_BHRfS_M"
_HDR = 101
_ITEM = np.dtype([("oid", "<u8"), ("type", "u1"), ("off", "<u8"), ("doff", "<u4"), ("size", "<u4")])
_KEYPTR = np.dtype([("oid", "<u8"), ("type", "u1"), ("off", "<u8"), ("ptr", "<u8"), ("gen", "<u8")])
CHUNK_ITEM = 228
DEV_ITEM = 216
ROOT_ITEM = 132
EXTENT_ITEM = 168
METADATA_ITEM = 169
EXTENT_TREE = 2
_PROFILE_MASK = 0xFF8  # RAID0/1/DUP/10/5/6/1C3/1C4
_MIRRORED = 0x10 | 0x20 | 0x200 | 0x400  # RAID1, DUP, RAID1C3, RAID1C4
_MAX_NODES = 1 << 22
_INCOMPAT_METADATA_UUID = 0x400
_MAX_ADDR = 1 << 62
CSUM_CRC32C, CSUM_XXHASH, CSUM_SHA256, CSUM_BLAKE2 = 0, 1, 2, 3
_CSUM_BATCH = 1024
_INCOMPAT_EXTENT_TREE_V2 = 0x2000
_RESERVED = 1 << 20


def probe(area: Area) -> bool:
    if area.length < SB_OFFSET + 4096:
        return False
    return area.read(SB_OFFSET + 0x40, 8) == MAGIC


class _Chunks:
    """Logical → (devid, physical) for every chunk; sorted by logical start."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[int, int, list[tuple[int, int]]]] = {}
        self._sorted: list[int] = []

    def add(self, area: Area, logical: int, data: bytes) -> None:
        if len(data) < 48 + 32:
            raise area.damaged(f"btrfs chunk item at logical {logical} is truncated")
        length, _owner, _stripe_len, ctype = struct.unpack_from("<QQQQ", data, 0)
        num_stripes, _sub = struct.unpack_from("<HH", data, 44)
        if num_stripes == 0 or len(data) < 48 + 32 * num_stripes or length == 0:
            raise area.damaged(f"btrfs chunk at logical {logical} has {num_stripes} stripes")
        stripes = [struct.unpack_from("<QQ", data, 48 + 32 * i) for i in range(num_stripes)]
        # Addresses are u64 on disk; real ones stay far below 2^62 (4 EiB), which keeps all the
        # arithmetic below in int64.
        if logical + length >= _MAX_ADDR or any(phys + length >= _MAX_ADDR for _d, phys in stripes):
            raise area.damaged(f"btrfs chunk at logical {logical} has out-of-range addresses")
        self.items[logical] = (length, ctype, stripes)
        self._sorted = []

    def map(self, area: Area, logical: int, devid: int) -> int:
        """Physical offset on this device of a logical address (for reading tree nodes)."""
        if not self._sorted:
            self._sorted = sorted(self.items)
        i = bisect.bisect_right(self._sorted, logical) - 1
        if i >= 0:
            start = self._sorted[i]
            length, ctype, stripes = self.items[start]
            if logical < start + length:
                if ctype & _PROFILE_MASK & ~_MIRRORED:
                    raise area.damaged(f"btrfs striped chunk at {start}: cannot read tree nodes")
                # Mirrored profiles (DUP, RAID1*) hold a full copy in every stripe.
                for dev, phys in stripes:
                    if dev == devid:
                        return phys + logical - start
                raise area.damaged(
                    f"btrfs tree block at logical {logical} is on another device of the "
                    "filesystem; this device alone cannot be parsed"
                )
        raise area.damaged(f"btrfs logical address {logical} is in no chunk")


def _node(
    area: Area, chunks: _Chunks, logical: int, nodesize: int, fsid: bytes, devid: int
) -> bytes:
    phys = chunks.map(area, logical, devid)
    node = area.read(phys, nodesize)
    (bytenr,) = struct.unpack_from("<Q", node, 48)
    if node[32:48] != fsid or bytenr != logical:
        raise area.damaged(f"btrfs tree node at logical {logical} has the wrong identity")
    return node


def _walk(
    area: Area,
    chunks: _Chunks,
    root: tuple[int, int, int],
    nodesize: int,
    fsid: bytes,
    devid: int,
    nodes: list[bytes],
) -> list[tuple[bytes, np.ndarray]]:
    """All leaves of a tree given (root logical address, level, generation). Every node read is
    appended to ``nodes``; the caller verifies their checksums before trusting the result."""
    out: list[tuple[bytes, np.ndarray]] = []
    todo = [root]
    seen = 0
    while todo:
        logical, want, generation = todo.pop()
        seen += 1
        if seen > _MAX_NODES:
            raise area.damaged("btrfs tree has too many nodes")
        node = _node(area, chunks, logical, nodesize, fsid, devid)
        nodes.append(node)
        (nritems,) = struct.unpack_from("<I", node, 96)
        lvl = node[100]
        (node_gen,) = struct.unpack_from("<Q", node, 80)
        if lvl != want or node_gen != generation:
            # The parent records each child's level and generation: a stale, misdirected or
            # foreign node shows here.
            raise area.damaged(
                f"btrfs tree node at {logical} has level {lvl} generation {node_gen}, "
                f"expected {want} and {generation}"
            )
        if lvl == 0:
            if _HDR + nritems * _ITEM.itemsize > nodesize:
                raise area.damaged(f"btrfs leaf at {logical} holds {nritems} items")
            items = np.frombuffer(node, _ITEM, count=nritems, offset=_HDR)
            if ((items["doff"].astype(np.int64) + items["size"]) > nodesize - _HDR).any():
                raise area.damaged(f"btrfs leaf at {logical} has an item outside the leaf")
            out.append((node, items))
        else:
            if _HDR + nritems * _KEYPTR.itemsize > nodesize:
                raise area.damaged(f"btrfs node at {logical} holds {nritems} pointers")
            ptrs = np.frombuffer(node, _KEYPTR, count=nritems, offset=_HDR)
            todo.extend(
                (int(p), lvl - 1, int(g))
                for p, g in zip(ptrs["ptr"][::-1], ptrs["gen"][::-1], strict=True)
            )
    return out


def _csum_ok(block: bytes, csum_type: int) -> bool:
    """One block's checksum (superblock or tree node): bytes 32.. hashed into bytes 0..31."""
    body = block[32:]
    if csum_type == CSUM_CRC32C:
        return struct.unpack_from("<I", block, 0)[0] == crc32c(body)
    if csum_type == CSUM_XXHASH:
        return struct.unpack_from("<Q", block, 0)[0] == xxhash.xxh64_intdigest(body)
    import hashlib  # here: importing it starts OpenSSL (3.5 MiB) in every backup otherwise

    if csum_type == CSUM_SHA256:
        return block[:32] == hashlib.sha256(body).digest()
    return block[:32] == hashlib.blake2b(body, digest_size=32).digest()


def _verify_csums(area: Area, nodes: list[bytes], csum_type: int) -> None:
    if csum_type != CSUM_CRC32C:
        for node in nodes:
            if not _csum_ok(node, csum_type):
                logical = struct.unpack_from("<Q", node, 48)[0]
                raise area.damaged(f"btrfs tree node at logical {logical} fails its checksum")
        return
    # CRC32C of many nodes at once, four bytes per numpy step over all of them.
    for i in range(0, len(nodes), _CSUM_BATCH):
        batch = nodes[i : i + _CSUM_BATCH]
        rows = np.frombuffer(b"".join(batch), np.uint8).reshape(len(batch), -1)
        crc = crc32c_rows(rows[:, 32:], 0xFFFFFFFF) ^ np.uint32(0xFFFFFFFF)
        stored = np.ascontiguousarray(rows[:, :4]).view("<u4")[:, 0]
        bad = np.flatnonzero(crc != stored)
        if bad.size:
            logical = struct.unpack_from("<Q", batch[int(bad[0])], 48)[0]
            raise area.damaged(f"btrfs tree node at logical {logical} fails its checksum")


def analyse(area: Area) -> FsResult:
    sb = _read_superblock(area)
    nodes: list[bytes] = []  # every tree node read, checksummed in one pass before use
    chunks = _system_chunks(area, sb)
    _read_chunk_tree(area, sb, chunks, nodes)
    extent_root = _find_extent_root(area, sb, chunks, nodes)
    logical_used = _logical_extents(area, sb, chunks, extent_root, nodes)
    _verify_csums(area, nodes, sb.csum_type)
    used = _map_to_device(area, sb, chunks, logical_used)
    return FsResult("btrfs", sb.dev_total, used, _details(sb, chunks))


@dataclass(frozen=True, slots=True)
class _Super:
    """The superblock fields the tree walks need, checked against each other and the region."""

    raw: bytes
    csum_type: int
    fsid: bytes  # what tree blocks carry: the fsid, or the metadata_uuid when that is set
    generation: int
    root: int
    root_level: int
    chunk_root: int
    chunk_level: int
    chunk_gen: int
    log_root: int
    num_devices: int
    sectorsize: int
    nodesize: int
    sys_size: int
    devid: int
    dev_total: int


def _read_superblock(area: Area) -> _Super:
    sb = area.read(SB_OFFSET, 4096)
    if sb[0x40:0x48] != MAGIC:
        raise area.damaged("btrfs superblock has no magic")
    (csum_type,) = struct.unpack_from("<H", sb, 0xC4)
    if csum_type not in (CSUM_CRC32C, CSUM_XXHASH, CSUM_SHA256, CSUM_BLAKE2):
        raise area.damaged(f"btrfs checksum type {csum_type} is unknown")
    if not _csum_ok(sb, csum_type):
        raise area.damaged("btrfs superblock checksum mismatch")
    fsid = sb[0x20:0x30]
    (generation,) = struct.unpack_from("<Q", sb, 0x48)
    root, chunk_root, log_root, _total_bytes = struct.unpack_from("<QQQQ", sb, 0x50)
    (chunk_gen,) = struct.unpack_from("<Q", sb, 0xA4)
    (num_devices,) = struct.unpack_from("<Q", sb, 0x88)
    sectorsize, nodesize = struct.unpack_from("<II", sb, 0x90)
    (sys_size,) = struct.unpack_from("<I", sb, 0xA0)
    devid, dev_total = struct.unpack_from("<QQ", sb, 0xC9)
    (incompat,) = struct.unpack_from("<Q", sb, 0xBC)
    if incompat & _INCOMPAT_METADATA_UUID:  # tree blocks carry metadata_uuid, not fsid
        fsid = sb[0x23B:0x24B]
    if incompat & _INCOMPAT_EXTENT_TREE_V2:
        raise area.damaged("btrfs extent tree v2 is not supported; using the conservative map")
    if nodesize < 4096 or nodesize > 65536 or nodesize & (nodesize - 1) or sys_size > 2048:
        raise area.damaged(f"btrfs node size {nodesize}, system chunk array {sys_size} bytes")
    if sectorsize < 4096 or sectorsize & (sectorsize - 1):
        raise area.damaged(f"btrfs sector size {sectorsize}")
    if dev_total > area.length or dev_total < _RESERVED:
        raise area.damaged(
            f"btrfs device of {dev_total} bytes does not fit its {area.length}-byte region"
        )
    return _Super(
        raw=sb,
        csum_type=csum_type,
        fsid=fsid,
        generation=generation,
        root=root,
        root_level=sb[0xC6],
        chunk_root=chunk_root,
        chunk_level=sb[0xC7],
        chunk_gen=chunk_gen,
        log_root=log_root,
        num_devices=num_devices,
        sectorsize=sectorsize,
        nodesize=nodesize,
        sys_size=sys_size,
        devid=devid,
        dev_total=dev_total,
    )


def _leaves(
    area: Area, sb: _Super, chunks: _Chunks, root: tuple[int, int, int], nodes: list[bytes]
) -> list[tuple[bytes, np.ndarray]]:
    return _walk(area, chunks, root, sb.nodesize, sb.fsid, sb.devid, nodes)


def _system_chunks(area: Area, sb: _Super) -> _Chunks:
    """The chunks in the superblock's system chunk array: enough to read the chunk tree."""
    chunks = _Chunks()
    arr = sb.raw[0x32B : 0x32B + sb.sys_size]
    pos = 0
    while pos + 17 <= len(arr):
        _oid, ktype, logical = struct.unpack_from("<QBQ", arr, pos)
        pos += 17
        if ktype != CHUNK_ITEM or pos + 48 > len(arr):
            raise area.damaged("btrfs system chunk array is not valid")
        (nstripes,) = struct.unpack_from("<H", arr, pos + 44)
        end = pos + 48 + 32 * nstripes
        chunks.add(area, logical, arr[pos:end])
        pos = end
    return chunks


def _read_chunk_tree(area: Area, sb: _Super, chunks: _Chunks, nodes: list[bytes]) -> None:
    """Add every chunk of the chunk tree to ``chunks``."""
    root = (sb.chunk_root, sb.chunk_level, sb.chunk_gen)
    for leaf, items in _leaves(area, sb, chunks, root, nodes):
        for i in np.flatnonzero(items["type"] == CHUNK_ITEM):
            at = _HDR + int(items["doff"][i])
            chunks.add(area, int(items["off"][i]), leaf[at : at + int(items["size"][i])])


def _find_extent_root(
    area: Area, sb: _Super, chunks: _Chunks, nodes: list[bytes]
) -> tuple[int, int, int]:
    """The extent tree's (root logical address, level, generation), from the root tree."""
    ext_root = ext_level = ext_gen = None
    for leaf, items in _leaves(area, sb, chunks, (sb.root, sb.root_level, sb.generation), nodes):
        hit = np.flatnonzero((items["oid"] == EXTENT_TREE) & (items["type"] == ROOT_ITEM))
        for i in hit:
            at = _HDR + int(items["doff"][i])
            if int(items["size"][i]) < 239:
                raise area.damaged("btrfs extent tree root item is truncated")
            ext_gen, _dirid, ext_root = struct.unpack_from("<QQQ", leaf, at + 160)
            ext_level = leaf[at + 238]
    if ext_root is None or ext_level is None or ext_gen is None:
        raise area.damaged("btrfs root tree has no extent tree")
    return ext_root, ext_level, ext_gen


def _logical_extents(
    area: Area, sb: _Super, chunks: _Chunks, extent_root: tuple[int, int, int], nodes: list[bytes]
) -> Extents:
    """Logical extents: the extent tree's EXTENT_ITEM (data) and METADATA_ITEM (tree blocks)."""
    starts: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    for _leaf, items in _leaves(area, sb, chunks, extent_root, nodes):
        data = items["type"] == EXTENT_ITEM
        meta = items["type"] == METADATA_ITEM
        big = (items["oid"] >= _MAX_ADDR) | (data & (items["off"] >= _MAX_ADDR))
        if big.any():
            raise area.damaged("btrfs extent item with an out-of-range address or length")
        starts.append(items["oid"][data | meta].astype(np.int64))
        lens.append(np.where(data, items["off"], sb.nodesize)[data | meta].astype(np.int64))
    ls = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    le = ls + (np.concatenate(lens) if lens else np.zeros(0, np.int64))
    return Extents.from_arrays(ls, le)


def _map_to_device(area: Area, sb: _Super, chunks: _Chunks, logical_used: Extents) -> Extents:
    """Used bytes of this device: the reserved first MiB, the superblock mirrors and, through the
    chunks, the logical extents; coarse (whole stripe) unless the chunk is single/DUP or a log
    tree is pending (its blocks are not in the extent tree)."""
    dev_total = sb.dev_total
    runs: list[tuple[int, int]] = [(0, _RESERVED)]
    runs += [(m, m + 4096) for m in SB_MIRRORS if m + 4096 <= dev_total]
    mapped_s: list[np.ndarray] = []
    mapped_e: list[np.ndarray] = []
    for logical, (length, ctype, stripes) in sorted(chunks.items.items()):
        # Single and mirrored profiles keep the whole chunk, in order, in each stripe.
        fine = not (ctype & _PROFILE_MASK & ~_MIRRORED) and not sb.log_root
        for phys in [phys for dev, phys in stripes if dev == sb.devid]:
            if phys + length > dev_total and fine:
                raise area.damaged(f"btrfs chunk at logical {logical} ends past the device")
            if not fine:
                # A stripe's on-device length is not the chunk length for striped profiles.
                runs.append((phys, min(dev_total, phys + length)))
                continue
            inside = logical_used.clip(logical, logical + length)
            mapped_s.append(inside.starts + (phys - logical))
            mapped_e.append(inside.ends + (phys - logical))
    arr_runs = np.array(runs, np.int64).reshape(-1, 2)
    return Extents.from_arrays(
        area.start + np.concatenate([arr_runs[:, 0], *mapped_s]),
        area.start + np.concatenate([arr_runs[:, 1], *mapped_e]),
    )


def _details(sb: _Super, chunks: _Chunks) -> dict[str, Any]:
    raw = sb.raw
    details: dict[str, Any] = {
        "uuid": uuid_str(raw[0x20:0x30]),
        "label": text(raw[0x12B:0x22B]),
        "block_size": sb.sectorsize,
        "node_size": sb.nodesize,
        "devid": sb.devid,
        "num_devices": sb.num_devices,
        "size": sb.dev_total,
        "chunks": [
            [logical, length, ctype, [[d, p] for d, p in stripes]]
            for logical, (length, ctype, stripes) in sorted(chunks.items.items())
        ],
    }
    if sb.log_root:
        details["log_tree_pending"] = True
    return details
