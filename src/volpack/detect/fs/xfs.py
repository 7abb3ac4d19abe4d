"""XFS: used blocks are everything the per-AG free-space B+tree (by block number) does not list.

Reads the primary superblock, each allocation group's AGF and the bno B+tree blocks. AG headers,
the internal log, inode chunks and every B+tree block are not free, so they count as used without
special cases. Bad magic, CRC, levels, owners or free counts that disagree raise FsDamaged.
Reads only; a realtime or external log device is outside this region and not looked at.
"""

from __future__ import annotations

import struct

import numpy as np

from volpack.detect.fs._common import Area, FsResult, crc32c, text, uuid_str
from volpack.extents import Extents

_SB_CRC = 224
_AGF_CRC = 216
_MAX_AGS = 1 << 20
_MAX_LEVELS = 9


def probe(area: Area) -> bool:
    return area.length >= 512 and area.read(0, 4) == b"XFSB"


def _crc_ok(buf: bytes, at: int) -> bool:
    stored = struct.unpack_from("<I", buf, at)[0]
    return crc32c(buf[:at] + b"\0\0\0\0" + buf[at + 4 :]) == stored


def analyse(area: Area) -> FsResult:
    sb = area.read(0, 512)
    if sb[:4] != b"XFSB":
        raise area.damaged("XFS superblock has no XFSB magic")
    block_size, dblocks = struct.unpack_from(">IQ", sb, 4)
    agblocks, agcount = struct.unpack_from(">II", sb, 84)
    version, sectsize = struct.unpack_from(">HH", sb, 100)
    v5 = (version & 0xF) == 5
    if block_size < 512 or block_size > 65536 or block_size & (block_size - 1):
        raise area.damaged(f"XFS block size {block_size}")
    if sectsize < 512 or sectsize > block_size or sectsize & (sectsize - 1):
        raise area.damaged(f"XFS sector size {sectsize}")
    if not 1 <= agcount <= _MAX_AGS or agblocks < 8:
        raise area.damaged(f"XFS {agcount} allocation groups of {agblocks} blocks")
    if not (agcount - 1) * agblocks < dblocks <= agcount * agblocks:
        raise area.damaged(f"XFS {dblocks} blocks do not match {agcount} AGs of {agblocks}")
    size = dblocks * block_size
    if size > area.length:
        raise area.damaged(
            f"XFS filesystem of {size} bytes does not fit its {area.length}-byte region"
        )
    if v5:
        full = area.read(0, sectsize)
        if not _crc_ok(full, _SB_CRC):
            raise area.damaged("XFS superblock CRC mismatch")
    hdr = 56 if v5 else 16
    magic = b"AB3B" if v5 else b"ABTB"
    maxrecs = (block_size - hdr) // 12

    free_starts: list[np.ndarray] = []
    free_lens: list[np.ndarray] = []
    for agno in range(agcount):
        ag_first = agno * agblocks
        ag_len = min(agblocks, dblocks - ag_first)
        agf_at = ag_first * block_size + sectsize
        agf = area.read(agf_at, sectsize)
        seqno, length = struct.unpack_from(">II", agf, 8)
        root = struct.unpack_from(">I", agf, 16)[0]
        levels = struct.unpack_from(">I", agf, 28)[0]
        (freeblks,) = struct.unpack_from(">I", agf, 52)
        if agf[:4] != b"XAGF" or seqno != agno or length != ag_len:
            raise area.damaged(f"XFS AG {agno} header (AGF) is not valid")
        if v5 and not _crc_ok(agf, _AGF_CRC):
            raise area.damaged(f"XFS AG {agno} header (AGF) CRC mismatch")
        if not 1 <= levels <= _MAX_LEVELS or not 0 < root < ag_len:
            raise area.damaged(f"XFS AG {agno} free-space tree root {root}, {levels} levels")
        recs = _walk(area, agno, ag_first, ag_len, root, levels, block_size, hdr, magic, maxrecs)
        total = int(recs[:, 1].sum()) if recs.size else 0
        if total != freeblks:
            raise area.damaged(
                f"XFS AG {agno} free-space tree lists {total} free blocks, AGF says {freeblks}"
            )
        free_starts.append(recs[:, 0] + ag_first)
        free_lens.append(recs[:, 1])
    fs = np.concatenate(free_starts) * block_size
    fl = np.concatenate(free_lens) * block_size
    free = Extents.from_arrays(fs + area.start, fs + fl + area.start)
    used = free.complement(area.start, area.start + size)
    details = {
        "uuid": uuid_str(sb[32:48]),
        "label": text(sb[108:120]),
        "block_size": block_size,
        "ag_count": agcount,
        "size": size,
    }
    return FsResult("xfs", size, used, details)


def _walk(
    area: Area,
    agno: int,
    ag_first: int,
    ag_len: int,
    root: int,
    levels: int,
    block_size: int,
    hdr: int,
    magic: bytes,
    maxrecs: int,
) -> np.ndarray:
    """Leaf records ``(agbno, count)`` of one AG's bno tree, as an (n, 2) int64 array."""
    leaves: list[np.ndarray] = []
    level_blocks = [root]
    for expect in range(levels - 1, -1, -1):
        nxt: list[int] = []
        for agbno in level_blocks:
            where = (ag_first + agbno) * block_size
            block = area.read(where, block_size)
            blevel, numrecs = struct.unpack_from(">HH", block, 4)
            if block[:4] != magic or blevel != expect or numrecs > maxrecs:
                raise area.damaged(f"XFS AG {agno} free-space tree block {agbno} is not valid")
            if hdr == 56:
                (owner,) = struct.unpack_from(">I", block, 48)
                (daddr,) = struct.unpack_from(">Q", block, 16)
                if owner != agno or daddr != where // 512:
                    raise area.damaged(f"XFS AG {agno} tree block {agbno} belongs elsewhere")
            if expect == 0:
                recs = np.frombuffer(block, ">u4", count=2 * numrecs, offset=hdr)
                leaves.append(recs.astype(np.int64).reshape(-1, 2))
            else:
                ptrs = np.frombuffer(block, ">u4", count=numrecs, offset=hdr + 8 * maxrecs)
                nxt.extend(int(p) for p in ptrs)
        if len(nxt) > ag_len:
            raise area.damaged(f"XFS AG {agno} free-space tree has more blocks than its AG")
        bad = [p for p in nxt if not 0 < p < ag_len]
        if bad:
            raise area.damaged(f"XFS AG {agno} free-space tree points to block {bad[0]}")
        level_blocks = nxt
    recs = np.concatenate(leaves) if leaves else np.zeros((0, 2), np.int64)
    if recs.size:
        starts, counts = recs[:, 0], recs[:, 1]
        ends = starts + counts
        if (counts <= 0).any() or (ends > ag_len).any() or (starts[1:] < ends[:-1]).any():
            raise area.damaged(f"XFS AG {agno} free-space records overlap or leave the AG")
    return recs
