"""XFS: used blocks are everything the per-AG free-space B+trees do not list.

AG headers, the internal log, inode chunks and tree blocks are simply not free. CRCs, the two
trees' agreement, free counts and a clean log are checked: else FsDamaged. Reads only; realtime
and external log devices are other devices and not looked at.
"""

from __future__ import annotations

import struct

import numpy as np

from volpack.detect.fs._common import Area, FsResult, crc32c, crc32c_rows, text, uuid_str
from volpack.extents import Extents

_SB_CRC = 224
_AGF_CRC = 216
_BTREE_CRC = 52
_MAX_AGS = 1 << 20
_MAX_LEVELS = 9
_LOG_MAGIC = 0xFEEDBABE
_BB = 512
# In-core logs may reach the disk out of order: 8 iclogs of up to 256 KiB around the head.
_LOG_WINDOW = (8 * 256 * 1024) // _BB
_UNMOUNT_TRANS = 0x20
_CLIENT_LOG = 0xAA


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
    _check_log_clean(area, sb, block_size, agblocks, dblocks)
    hdr = 56 if v5 else 16
    magic = b"AB3B" if v5 else b"ABTB"
    cnt_magic = b"AB3C" if v5 else b"ABTC"
    maxrecs = (block_size - hdr) // 12

    free_starts: list[np.ndarray] = []
    free_lens: list[np.ndarray] = []
    blocks: list[bytes] = []  # every B+tree block read, for the batched CRC check (v5)
    for agno in range(agcount):
        ag_first = agno * agblocks
        ag_len = min(agblocks, dblocks - ag_first)
        agf_at = ag_first * block_size + sectsize
        agf = area.read(agf_at, sectsize)
        seqno, length = struct.unpack_from(">II", agf, 8)
        root, cnt_root = struct.unpack_from(">II", agf, 16)
        levels, cnt_levels = struct.unpack_from(">II", agf, 28)
        (freeblks,) = struct.unpack_from(">I", agf, 52)
        if agf[:4] != b"XAGF" or seqno != agno or length != ag_len:
            raise area.damaged(f"XFS AG {agno} header (AGF) is not valid")
        if v5 and not _crc_ok(agf, _AGF_CRC):
            raise area.damaged(f"XFS AG {agno} header (AGF) CRC mismatch")
        for r, lv in ((root, levels), (cnt_root, cnt_levels)):
            if not 1 <= lv <= _MAX_LEVELS or not 0 < r < ag_len:
                raise area.damaged(f"XFS AG {agno} free-space tree root {r}, {lv} levels")
        recs = _walk(
            area, agno, ag_first, ag_len, root, levels, block_size, hdr, magic, maxrecs, blocks
        )
        # The by-size tree lists the same extents: a flipped record in either one shows here.
        by_size = _walk(
            area,
            agno,
            ag_first,
            ag_len,
            cnt_root,
            cnt_levels,
            block_size,
            hdr,
            cnt_magic,
            maxrecs,
            blocks,
            sorted_by_start=False,
        )
        by_size = by_size[np.lexsort((by_size[:, 1], by_size[:, 0]))]
        if not np.array_equal(recs, by_size):
            raise area.damaged(f"XFS AG {agno} free-space trees by block and by size disagree")
        total = int(recs[:, 1].sum()) if recs.size else 0
        if total != freeblks:
            raise area.damaged(
                f"XFS AG {agno} free-space tree lists {total} free blocks, AGF says {freeblks}"
            )
        free_starts.append(recs[:, 0] + ag_first)
        free_lens.append(recs[:, 1])
    if v5:
        _check_block_crcs(area, blocks)
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
    blocks: list[bytes],
    sorted_by_start: bool = True,
) -> np.ndarray:
    """Leaf records ``(agbno, count)`` of one AG's bno tree, as an (n, 2) int64 array."""
    leaves: list[np.ndarray] = []
    level_blocks = [root]
    for expect in range(levels - 1, -1, -1):
        nxt: list[int] = []
        for agbno in level_blocks:
            where = (ag_first + agbno) * block_size
            block = area.read(where, block_size)
            blocks.append(block)
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
        overlap = sorted_by_start and bool((starts[1:] < ends[:-1]).any())
        if (counts <= 0).any() or (ends > ag_len).any() or overlap:
            raise area.damaged(f"XFS AG {agno} free-space records overlap or leave the AG")
    return recs


def _check_block_crcs(area: Area, blocks: list[bytes]) -> None:
    """v5 short-form B+tree blocks: CRC32C with the CRC field zeroed, all blocks in one pass."""
    for i in range(0, len(blocks), 1024):
        batch = blocks[i : i + 1024]
        rows = np.frombuffer(b"".join(batch), np.uint8).reshape(len(batch), -1).copy()
        stored = np.ascontiguousarray(rows[:, _BTREE_CRC : _BTREE_CRC + 4]).view("<u4")[:, 0]
        rows[:, _BTREE_CRC : _BTREE_CRC + 4] = 0
        crc = crc32c_rows(rows, 0xFFFFFFFF) ^ np.uint32(0xFFFFFFFF)
        bad = np.flatnonzero(crc != stored)
        if bad.size:
            (daddr,) = struct.unpack_from(">Q", batch[int(bad[0])], 16)
            raise area.damaged(f"XFS free-space tree block at sector {daddr} fails its CRC")


def _check_log_clean(area: Area, sb: bytes, block_size: int, agblocks: int, dblocks: int) -> None:
    """Raise FsDamaged unless the internal log ends with an unmount record (a clean unmount).

    A dirty log holds allocations the free-space trees do not show yet (a snapshot of a mounted
    filesystem, a crash): trusting the trees then would drop used blocks.
    """
    (logstart,) = struct.unpack_from(">Q", sb, 48)
    (logblocks,) = struct.unpack_from(">I", sb, 96)
    agblklog = sb[124]
    if logstart == 0:
        raise area.damaged("XFS has an external log that cannot be checked for a clean unmount")
    if agblklog > 31 or logblocks == 0:
        raise area.damaged(f"XFS log of {logblocks} blocks, AG block log {agblklog}")
    agno, agbno = logstart >> agblklog, logstart & ((1 << agblklog) - 1)
    base = (agno * agblocks + agbno) * block_size
    n = logblocks * block_size // _BB
    if base + n * _BB > dblocks * block_size:
        raise area.damaged(f"XFS log at block {logstart} of {logblocks} blocks leaves the device")

    def sectors(first: int, count: int) -> np.ndarray:
        return np.frombuffer(area.read(base + first * _BB, count * _BB), np.uint8).reshape(
            count, _BB
        )

    def cycles(rows: np.ndarray) -> np.ndarray:
        # The first word of every log sector is its cycle, except record headers (magic first).
        w0 = rows[:, 0:4].copy().view(">u4")[:, 0].astype(np.int64)
        w1 = rows[:, 4:8].copy().view(">u4")[:, 0].astype(np.int64)
        return np.where(w0 == _LOG_MAGIC, w1, w0)

    first, last = (int(cycles(sectors(b, 1))[0]) for b in (0, n - 1))
    if first == last:
        head = n  # the log wrapped exactly: the newest record ends at the log's end
    else:
        lo, hi = 0, n - 1  # cycle(lo) == first, cycle(hi) != first
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if int(cycles(sectors(mid, 1))[0]) == first:
                lo = mid
            else:
                hi = mid
        head = hi
        after = min(n - head, _LOG_WINDOW)
        if after and (cycles(sectors(head, after)) == first).any():
            raise area.damaged("XFS log has out-of-order writes past its head; the log is dirty")
    lo = max(0, head - _LOG_WINDOW)
    if head == 0:
        raise area.damaged("XFS log head could not be located")
    rows = sectors(lo, head - lo)
    w0 = rows[:, 0:4].copy().view(">u4")[:, 0]
    found = np.flatnonzero(w0 == _LOG_MAGIC)
    if not found.size:
        raise area.damaged("XFS log has no record header before its head; the log is dirty")
    rec = lo + int(found[-1])
    header = rows[rec - lo].tobytes()
    _cycle, version, length = struct.unpack_from(">III", header, 4)
    (lsn,) = struct.unpack_from(">Q", header, 16)
    (nops,) = struct.unpack_from(">I", header, 40)
    (h_size,) = struct.unpack_from(">I", header, 320)
    extra = max(0, -(-h_size // 32768) - 1) if version == 2 else 0
    data_at = rec + 1 + extra
    clean = (
        nops == 1
        and 0 < length <= _BB
        and (lsn & 0xFFFFFFFF) == rec
        and data_at + 1 <= head
        and data_at < n
    )
    if clean:
        op = sectors(data_at, 1)[0].tobytes()
        clean = op[8] == _CLIENT_LOG and bool(op[9] & _UNMOUNT_TRANS)
    if not clean:
        raise area.damaged(
            "XFS log does not end with an unmount record (dirty log: mounted or crashed); "
            "mount and unmount it, or run xfs_repair"
        )
