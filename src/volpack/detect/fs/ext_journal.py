"""ext3/4 journal (jbd2) scan: journaled copies of block bitmaps, for a filesystem whose journal
needs recovery (a snapshot of a mounted filesystem, or a crash).

Every transaction is taken, committed or not, and revokes are ignored, so the copies can only
grow the used set. Reads only; raises FsDamaged when the journal cannot be walked.
"""

from __future__ import annotations

import struct

import numpy as np

from volpack.detect.fs._common import Area

JBD2_MAGIC = 0xC03B3998
_DESCRIPTOR, _COMMIT, _SB_V1, _SB_V2, _REVOKE = 1, 2, 3, 4, 5
_INCOMPAT_REVOKE = 0x1
_INCOMPAT_64BIT = 0x2
_INCOMPAT_ASYNC_COMMIT = 0x4
_INCOMPAT_CSUM_V2 = 0x8
_INCOMPAT_CSUM_V3 = 0x10
_INCOMPAT_FAST_COMMIT = 0x20
_KNOWN_INCOMPAT = (
    _INCOMPAT_REVOKE
    | _INCOMPAT_64BIT
    | _INCOMPAT_ASYNC_COMMIT
    | _INCOMPAT_CSUM_V2
    | _INCOMPAT_CSUM_V3
)
_FLAG_ESCAPE, _FLAG_SAME_UUID, _FLAG_LAST = 1, 2, 8
_EXTENTS_FL = 0x80000
_EXT_MAGIC = 0xF30A
_MAX_JOURNAL_BLOCKS = 1 << 24


def journal_block_map(
    area: Area, inode: bytes, block_size: int, fs_blocks: int, length: int
) -> np.ndarray:
    """Physical block of each of the first ``length`` logical blocks of the journal inode."""
    if not 2 <= length <= _MAX_JOURNAL_BLOCKS:
        raise area.damaged(f"ext journal of {length} blocks")
    out = np.full(length, -1, np.int64)
    (flags,) = struct.unpack_from("<I", inode, 0x20)
    iblock = inode[0x28 : 0x28 + 60]
    if flags & _EXTENTS_FL:
        _extent_node(area, iblock, block_size, fs_blocks, out, depth_left=5)
    else:
        ptrs = struct.unpack_from("<15I", iblock)
        per = block_size // 4
        pos = 0
        for p in ptrs[:12]:
            if pos < length:
                out[pos] = p
            pos += 1
        for level, p in enumerate(ptrs[12:], start=1):
            pos = _indirect(area, p, level, block_size, fs_blocks, out, pos, per)
    if (out < 0).any() or (out >= fs_blocks).any() or (out == 0).any():
        raise area.damaged(
            "ext journal inode does not map every journal block inside the filesystem"
        )
    return out


def _extent_node(
    area: Area, node: bytes, block_size: int, fs_blocks: int, out: np.ndarray, depth_left: int
) -> None:
    magic, entries, _max, depth = struct.unpack_from("<HHHH", node, 0)
    if magic != _EXT_MAGIC or depth_left < 0 or 12 + 12 * entries > len(node):
        raise area.damaged("ext journal extent tree is not valid")
    for i in range(entries):
        at = 12 + 12 * i
        if depth == 0:
            lblk, elen, hi, lo = struct.unpack_from("<IHHI", node, at)
            if elen > 32768:
                elen -= 32768  # unwritten extent: still the journal's blocks
            start = (hi << 32) | lo
            end = min(out.size, lblk + elen)
            if lblk < end:
                out[lblk:end] = np.arange(start, start + end - lblk, dtype=np.int64)
        else:
            _lblk, lo, hi = struct.unpack_from("<IIH", node, at)
            child = (hi << 32) | lo
            if not 0 < child < fs_blocks:
                raise area.damaged(f"ext journal extent index points to block {child}")
            _extent_node(
                area,
                area.read(child * block_size, block_size),
                block_size,
                fs_blocks,
                out,
                depth_left - 1,
            )


def _indirect(
    area: Area,
    ptr: int,
    level: int,
    block_size: int,
    fs_blocks: int,
    out: np.ndarray,
    pos: int,
    per: int,
) -> int:
    span = per**level
    if pos >= out.size:
        return pos
    if ptr == 0 or ptr >= fs_blocks:
        return pos + span
    ptrs = np.frombuffer(area.read(ptr * block_size, block_size), "<u4").astype(np.int64)
    if level == 1:
        n = min(per, out.size - pos)
        out[pos : pos + n] = ptrs[:n]
        return pos + per
    for p in ptrs.tolist():
        pos = _indirect(area, p, level - 1, block_size, fs_blocks, out, pos, per)
        if pos >= out.size:
            break
    return pos


def journaled_blocks(
    area: Area, jmap: np.ndarray, block_size: int, wanted: set[int]
) -> dict[int, list[bytes]]:
    """Every image of a block in ``wanted`` found in the live part of the journal."""

    def jread(n: int) -> bytes:
        if not 0 <= n < jmap.size:
            raise area.damaged(f"ext journal block {n} beyond the journal's {jmap.size} blocks")
        return area.read(int(jmap[n]) * block_size, block_size)

    sb = jread(0)
    magic, btype = struct.unpack_from(">II", sb, 0)
    if magic != JBD2_MAGIC or btype not in (_SB_V1, _SB_V2):
        raise area.damaged("ext journal superblock is not valid")
    jbs, maxlen, first, sequence, start = struct.unpack_from(">IIIII", sb, 0x0C)
    incompat = struct.unpack_from(">I", sb, 0x28)[0] if btype == _SB_V2 else 0
    if jbs != block_size or maxlen > jmap.size or not 0 < first < maxlen:
        raise area.damaged(f"ext journal geometry: {jbs}-byte blocks, {maxlen} blocks")
    if incompat & ~_KNOWN_INCOMPAT:
        # Fast commits replay allocations that no journaled bitmap shows.
        raise area.damaged(f"ext journal features {incompat:#x} (fast commit) are not supported")
    found: dict[int, list[bytes]] = {}
    if start == 0:
        return found
    if incompat & _INCOMPAT_CSUM_V3:
        tag_size = 16
    else:
        tag_size = 12 + (2 if incompat & _INCOMPAT_CSUM_V2 else 0)
        tag_size -= 0 if incompat & _INCOMPAT_64BIT else 4
    tail = 4 if incompat & (_INCOMPAT_CSUM_V2 | _INCOMPAT_CSUM_V3) else 0
    pos = start
    steps = 0

    def advance(p: int) -> int:
        p += 1
        return first if p >= maxlen else p

    while steps < maxlen:
        if not first <= pos < maxlen:
            raise area.damaged(f"ext journal position {pos} outside {first}..{maxlen}")
        block = jread(pos)
        magic, btype, seq = struct.unpack_from(">III", block, 0)
        if magic != JBD2_MAGIC or seq != sequence:
            break  # the end of the live log
        steps += 1
        pos = advance(pos)
        if btype == _DESCRIPTOR:
            off = 12
            while off + tag_size <= block_size - tail:
                (target,) = struct.unpack_from(">I", block, off)
                if incompat & _INCOMPAT_CSUM_V3:
                    (flags,) = struct.unpack_from(">I", block, off + 4)
                    hi = (
                        struct.unpack_from(">I", block, off + 8)[0]
                        if incompat & _INCOMPAT_64BIT
                        else 0
                    )
                else:
                    (flags,) = struct.unpack_from(">H", block, off + 6)
                    hi = (
                        struct.unpack_from(">I", block, off + 8)[0]
                        if incompat & _INCOMPAT_64BIT
                        else 0
                    )
                target |= hi << 32
                off += tag_size + (0 if flags & _FLAG_SAME_UUID else 16)
                data_at = pos
                pos = advance(pos)
                steps += 1
                if target in wanted:
                    data = bytearray(jread(data_at))
                    if flags & _FLAG_ESCAPE:
                        data[0:4] = struct.pack(">I", JBD2_MAGIC)
                    found.setdefault(target, []).append(bytes(data))
                if flags & _FLAG_LAST:
                    break
        elif btype == _COMMIT:
            sequence = (sequence + 1) & 0xFFFFFFFF
        elif btype != _REVOKE:
            break
    return found
