"""NTFS cross-check: every cluster an in-use MFT record's runlists map must be set in $Bitmap.

Reads the whole MFT piece by piece (records as rows of a numpy array), applies the update
sequence fixups, walks the attributes and decodes every non-resident runlist of every in-use
record at once, one attribute or run per numpy step (extension records and non-resident
attribute lists are records and attributes like any other). Raises FsDamaged on the first
mapped cluster that $Bitmap marks free, or on a record or runlist that cannot be read. Reads only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from volpack.detect.fs._common import Area
from volpack.extents import Extents

_PIECE = 16 << 20  # MFT bytes decoded at a time
_STRIDE = 512  # update sequence stride
_END = 0xFFFFFFFF
_PAD = 24  # zero columns after each record: a gather at a record's last bytes stays in the row


class Geometry(Protocol):
    cluster: int
    clusters: int
    record: int


def check_mft_references(
    area: Area,
    geo: Geometry,
    mft_runs: list[tuple[int, int, int]],
    mft_size: int,
    marked: Extents,
) -> int:
    """Raise FsDamaged when an in-use record maps a cluster outside ``marked`` (cluster runs);
    return the number of in-use records walked."""
    walked = 0
    first_record = 0
    count = mft_size // geo.record
    per_piece = max(1, _PIECE // geo.record)
    pending: list[np.ndarray] = []
    numbers: list[np.ndarray] = []
    held = 0
    # Records are gathered across $MFT's runs (a grown MFT has many small ones) and decoded
    # per_piece at a time: the numpy steps are paid per piece, not per run.
    for vcn, length, lcn in mft_runs:
        run_first = max(first_record, vcn * geo.cluster // geo.record)
        run_end = min(count, (vcn + length) * geo.cluster // geo.record)
        if lcn < 0:
            if run_first < run_end:
                raise area.damaged(f"NTFS $MFT is sparse at VCN {vcn}")
            continue
        r0 = run_first
        while r0 < run_end:
            n = min(per_piece - held, run_end - r0)
            at = lcn * geo.cluster + (r0 * geo.record - vcn * geo.cluster)
            pending.append(area.read_array(at, n * geo.record).reshape(n, geo.record))
            numbers.append(np.arange(r0, r0 + n, dtype=np.int64))
            held += n
            r0 += n
            if held >= per_piece:
                walked += _check_records(area, geo, pending, numbers, marked)
                pending, numbers, held = [], [], 0
        first_record = max(first_record, run_end)
    if held:
        walked += _check_records(area, geo, pending, numbers, marked)
    return walked


_FEW = 16
_BYTE = np.arange(8)
_SHIFT = (8 * np.arange(8)).astype(np.uint64)


def _le(data: np.ndarray, rows: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Unsigned little-endian integers of a fixed width at per-row byte positions."""
    out = np.zeros(rows.size, np.int64)
    for k in range(width):
        out |= data[rows, pos + k].astype(np.int64) << (8 * k)
    return out


def _check_records(
    area: Area, geo: Geometry, pieces: list[np.ndarray], numbers: list[np.ndarray], marked: Extents
) -> int:
    size = geo.record
    recs = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    magic = recs[:, :4].copy().view("<u4")[:, 0]
    flags = recs[:, 0x16].astype(np.int64) | (recs[:, 0x17].astype(np.int64) << 8)
    in_use = np.flatnonzero((magic == 0x454C4946) & ((flags & 1) != 0))  # "FILE"
    if not in_use.size:
        return 0
    data = np.zeros((in_use.size, size + _PAD), np.uint8)
    data[:, :size] = recs[in_use]
    number = np.concatenate(numbers)[in_use]
    rows = np.arange(in_use.size)

    # -- update sequence fixups -------------------------------------------------------------------
    sectors = size // _STRIDE
    usa_ofs = _le(data, rows, np.full(rows.size, 4), 2)
    usa_count = _le(data, rows, np.full(rows.size, 6), 2)
    bad = np.flatnonzero((usa_count != sectors + 1) | (usa_ofs + 2 * usa_count > size))
    if bad.size:
        raise area.damaged(
            f"NTFS MFT record {int(number[bad[0]])}: update sequence of "
            f"{int(usa_count[bad[0]])} entries at {int(usa_ofs[bad[0]])}"
        )
    usn = _le(data, rows, usa_ofs, 2)
    for i in range(1, sectors + 1):
        tail = np.full(rows.size, i * _STRIDE - 2)
        torn = np.flatnonzero(_le(data, rows, tail, 2) != usn)
        if torn.size:
            raise area.damaged(
                f"NTFS MFT record {int(number[torn[0]])}: torn write in sector {i - 1}"
            )
        saved = usa_ofs + 2 * i
        data[rows, tail] = data[rows, saved]
        data[rows, tail + 1] = data[rows, saved + 1]

    # -- attributes ---------------------------------------------------------------------------
    pos = _le(data, rows, np.full(rows.size, 0x14), 2)
    end = np.minimum(_le(data, rows, np.full(rows.size, 0x18), 4), size)
    live = rows
    attr_rows: list[np.ndarray] = []
    attr_pos: list[np.ndarray] = []
    attr_len: list[np.ndarray] = []
    for _step in range(size // 16 + 1):
        live = live[pos[live] + 8 <= end[live]]
        if not live.size:
            break
        p = pos[live]
        atype = _le(data, live, p, 4)
        live, p = live[atype != _END], p[atype != _END]
        if not live.size:
            break
        length = _le(data, live, p + 4, 4)
        bad = np.flatnonzero((length < 16) | (length % 8 != 0) | (p + length > end[live]))
        if bad.size:
            raise area.damaged(
                f"NTFS MFT record {int(number[live[bad[0]]])}: attribute of "
                f"{int(length[bad[0]])} bytes at {int(p[bad[0]])}"
            )
        non_resident = (data[live, p + 8] == 1) & (length >= 0x40)
        attr_rows.append(live[non_resident])
        attr_pos.append(p[non_resident])
        attr_len.append(length[non_resident])
        pos[live] = p + length
    else:
        raise area.damaged("NTFS MFT record attributes are not terminated")
    if not attr_rows:
        return int(in_use.size)
    arow = np.concatenate(attr_rows)
    apos = np.concatenate(attr_pos)
    alimit = apos + np.concatenate(attr_len)

    # -- runlists -----------------------------------------------------------------------------
    p = apos + _le(data, arow, apos + 0x20, 2)
    bad = np.flatnonzero(p >= alimit)
    if bad.size:
        raise area.damaged(
            f"NTFS MFT record {int(number[arow[bad[0]]])}: runlist offset beyond its attribute"
        )
    lcn = np.zeros(arow.size, np.int64)
    act = np.arange(arow.size)
    starts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    while act.size:
        act = act[p[act] < alimit[act]]
        if not act.size:
            break
        if act.size <= _FEW:
            # A few long runlists (fragmented files) left: one numpy step per run would cost
            # more than decoding their bytes directly.
            for a in act.tolist():
                row = int(arow[a])
                s_, l_ = _decode_tail(area, data[row], int(p[a]), int(alimit[a]), int(lcn[a]))
                starts.append(s_)
                lengths.append(l_)
                owners.append(np.full(s_.size, number[row], np.int64))
            break
        head = data[arow[act], p[act]].astype(np.int64)
        act = act[head != 0]
        head = head[head != 0]
        if not act.size:
            break
        lsz, osz = head & 0x0F, head >> 4
        r, q = arow[act], p[act]
        bad = np.flatnonzero((lsz < 1) | (lsz > 8) | (osz > 8) | (q + 1 + lsz + osz > alimit[act]))
        if bad.size:
            raise area.damaged(
                f"NTFS MFT record {int(number[r[bad[0]]])}: runlist header {int(head[bad[0]]):#04x}"
            )
        run_len = _var(data, r, q + 1, lsz, signed=False)
        delta = _var(data, r, q + 1 + lsz, osz, signed=True)
        lcn[act] += delta
        real = osz > 0
        starts.append(lcn[act][real])
        lengths.append(run_len[real])
        owners.append(number[r[real]])
        p[act] = q + 1 + lsz + osz
    start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    bad = np.flatnonzero((length <= 0) | (start < 0) | (start + length > geo.clusters))
    if bad.size:
        i = int(bad[0])
        raise area.damaged(
            f"NTFS MFT record {int(owner[i])} maps {int(length[i])} clusters at LCN "
            f"{int(start[i])}, outside {geo.clusters} clusters; the runlist is damaged"
        )
    missing = Extents.from_arrays(start, start + length).subtract(marked)
    if len(missing):
        c = missing.first
        i = int(np.flatnonzero((start <= c) & (start + length > c))[0])
        raise area.damaged(
            f"NTFS cluster {c} is used by MFT record {int(owner[i])} but $Bitmap marks it "
            "free; the bitmap is damaged"
        )
    return int(in_use.size)


def _var(
    data: np.ndarray, rows: np.ndarray, pos: np.ndarray, width: np.ndarray, signed: bool
) -> np.ndarray:
    """Little-endian integers of per-element width 0..8 (runlist fields), optionally signed."""
    raw = data[rows[:, None], pos[:, None] + _BYTE].astype(np.uint64)
    raw[_BYTE[None, :] >= width[:, None]] = 0
    raw = (raw << _SHIFT).sum(axis=1, dtype=np.uint64)  # disjoint bytes: the sum is their OR
    value = raw.view(np.int64).copy()
    if signed:
        short = (width > 0) & (width < 8)
        bits = (8 * width[short]).astype(np.int64)
        v = value[short]
        negative = (v >> (bits - 1)) & 1
        value[short] = v - (negative << bits)
    return value


def _decode_tail(
    area: Area, row: np.ndarray, pos: int, limit: int, lcn: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rest of one runlist from ``pos``: (start LCNs, lengths) of its non-sparse runs."""
    raw = row[:limit].tobytes()
    starts: list[int] = []
    lengths: list[int] = []
    while pos < limit and raw[pos]:
        head = raw[pos]
        lsz, osz = head & 0x0F, head >> 4
        if not 1 <= lsz <= 8 or osz > 8 or pos + 1 + lsz + osz > limit:
            raise area.damaged(f"NTFS runlist header {head:#04x}")
        length = int.from_bytes(raw[pos + 1 : pos + 1 + lsz], "little")
        if osz:
            lcn += int.from_bytes(raw[pos + 1 + lsz : pos + 1 + lsz + osz], "little", signed=True)
            starts.append(lcn)
            lengths.append(length)
        pos += 1 + lsz + osz
    return np.array(starts, np.int64), np.array(lengths, np.int64)
