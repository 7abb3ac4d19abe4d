"""NTFS: used clusters from ``$Bitmap``, located through the MFT records 0, 3 and 6.

The MFT, $MFTMirr and both boot sectors are added explicitly. A failed fixup, a runlist outside
the volume, a bitmap that frees the MFT or any cluster an in-use record maps (ntfs_mft), or a
dirty volume raises FsDamaged. Reads only.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from volpack.detect.fs._common import Area, FsResult, bitmap_runs
from volpack.detect.fs.ntfs_mft import check_mft_references
from volpack.extents import Extents

_FIXUP_STRIDE = 512
_MAX_RUNS = 1 << 20
_VOLUME_DIRTY = 0x0001
_PIECE = 16 << 20  # bytes of $Bitmap turned into runs at a time


def probe(area: Area) -> bool:
    if area.length < 512:
        return False
    boot = area.read(0, 512)
    return boot[3:11] == b"NTFS    " and boot[510:512] == b"\x55\xaa"


class _Geometry:
    __slots__ = ("bps", "cluster", "total_sectors", "clusters", "mft_lcn", "mirr_lcn", "record")

    def __init__(self, area: Area, boot: bytes) -> None:
        bps, spc_raw = struct.unpack_from("<HB", boot, 0x0B)
        total_sectors, mft_lcn, mirr_lcn = struct.unpack_from("<QQQ", boot, 0x28)
        (cpmr,) = struct.unpack_from("<b", boot, 0x40)
        if bps not in (256, 512, 1024, 2048, 4096) or spc_raw == 0:
            raise area.damaged(f"NTFS boot sector: {bps} bytes per sector, {spc_raw} per cluster")
        # Newer formatters store large cluster sizes as a negative power of two.
        spc = 1 << (256 - spc_raw) if spc_raw > 0x80 else spc_raw
        if spc & (spc - 1) or spc * bps > (2 << 20):
            raise area.damaged(f"NTFS boot sector: {spc} sectors per cluster")
        self.bps = bps
        self.cluster = spc * bps
        self.total_sectors = total_sectors
        self.clusters = total_sectors // spc
        if total_sectors * bps > area.length or self.clusters == 0:
            raise area.damaged(
                f"NTFS volume of {total_sectors} sectors does not fit its {area.length}-byte region"
            )
        record = cpmr * self.cluster if cpmr > 0 else (1 << -cpmr if -31 < cpmr < 0 else 0)
        if record < 256 or record > 65536 or record & (record - 1):
            raise area.damaged(f"NTFS MFT record size {record}")
        self.record = record
        for name, lcn in (("MFT", mft_lcn), ("MFT mirror", mirr_lcn)):
            if lcn >= self.clusters:
                raise area.damaged(f"NTFS {name} at cluster {lcn} beyond {self.clusters} clusters")
        self.mft_lcn = mft_lcn
        self.mirr_lcn = mirr_lcn


def _fixup(area: Area, rec: bytearray, where: int) -> None:
    if rec[0:4] != b"FILE":
        raise area.damaged(f"NTFS MFT record at byte {where} has no FILE magic")
    usa_ofs, usa_count = struct.unpack_from("<HH", rec, 4)
    sectors = len(rec) // _FIXUP_STRIDE
    if usa_count != sectors + 1 or usa_ofs + 2 * usa_count > len(rec):
        raise area.damaged(f"NTFS MFT record at byte {where}: update sequence of {usa_count}")
    usn = rec[usa_ofs : usa_ofs + 2]
    for i in range(1, usa_count):
        pos = i * _FIXUP_STRIDE - 2
        if rec[pos : pos + 2] != usn:
            raise area.damaged(f"NTFS MFT record at byte {where}: torn write in sector {i - 1}")
        rec[pos : pos + 2] = rec[usa_ofs + 2 * i : usa_ofs + 2 * i + 2]


def _attributes(area: Area, rec: bytes, where: int) -> list[tuple[int, bytes]]:
    """(type, attribute bytes) of one MFT record, in order."""
    out: list[tuple[int, bytes]] = []
    (pos,) = struct.unpack_from("<H", rec, 0x14)
    (in_use,) = struct.unpack_from("<I", rec, 0x18)
    end = min(in_use, len(rec))
    while pos + 8 <= end:
        atype, length = struct.unpack_from("<II", rec, pos)
        if atype == 0xFFFFFFFF:
            return out
        if length < 16 or pos + length > end or length % 8:
            raise area.damaged(f"NTFS MFT record at byte {where}: attribute of {length} bytes")
        out.append((atype, rec[pos : pos + length]))
        pos += length
    raise area.damaged(f"NTFS MFT record at byte {where}: attribute list not terminated")


def _runlist(area: Area, attr: bytes, geo: _Geometry) -> tuple[int, list[tuple[int, int, int]]]:
    """(data size, [(vcn, length, lcn)]) of a non-resident attribute; lcn -1 for sparse runs."""
    if attr[8] != 1 or len(attr) < 0x40:
        raise area.damaged("NTFS attribute expected non-resident")
    lowest_vcn, _highest, map_ofs = struct.unpack_from("<QQH", attr, 0x10)
    (data_size,) = struct.unpack_from("<q", attr, 0x30)
    if lowest_vcn != 0 or data_size < 0 or map_ofs >= len(attr):
        raise area.damaged(f"NTFS runlist from VCN {lowest_vcn}, data size {data_size}")
    runs: list[tuple[int, int, int]] = []
    pos, vcn, lcn = map_ofs, 0, 0
    while pos < len(attr) and attr[pos]:
        head = attr[pos]
        lsz, osz = head & 0x0F, head >> 4
        if not 1 <= lsz <= 8 or osz > 8 or pos + 1 + lsz + osz > len(attr):
            raise area.damaged(f"NTFS runlist header {head:#04x} at {pos}")
        length = int.from_bytes(attr[pos + 1 : pos + 1 + lsz], "little")
        if osz:
            lcn += int.from_bytes(attr[pos + 1 + lsz : pos + 1 + lsz + osz], "little", signed=True)
            if length <= 0 or lcn < 0 or lcn + length > geo.clusters:
                raise area.damaged(
                    f"NTFS runlist run of {length} clusters at LCN {lcn} outside "
                    f"{geo.clusters} clusters; the runlist is damaged"
                )
            runs.append((vcn, length, lcn))
        else:
            runs.append((vcn, length, -1))
        vcn += length
        pos += 1 + lsz + osz
        if len(runs) > _MAX_RUNS:
            raise area.damaged("NTFS runlist has too many runs")
    if vcn * geo.cluster < data_size:
        raise area.damaged(f"NTFS runlist covers {vcn} clusters, data size is {data_size} bytes")
    return data_size, runs


def _find(attrs: list[tuple[int, bytes]], atype: int) -> bytes | None:
    for t, a in attrs:
        if t == atype and a[9] == 0:  # unnamed
            return a
    return None


def _record(area: Area, geo: _Geometry, mft_runs: list[tuple[int, int, int]], n: int) -> bytes:
    byte = n * geo.record
    vcn, inside = divmod(byte, geo.cluster)
    for rvcn, length, lcn in mft_runs:
        if rvcn <= vcn < rvcn + length and lcn >= 0:
            where = (lcn + vcn - rvcn) * geo.cluster + inside
            rec = bytearray(area.read(where, geo.record))
            _fixup(area, rec, where)
            return bytes(rec)
    raise area.damaged(f"NTFS MFT record {n} is not mapped by the $MFT runlist")


def analyse(area: Area) -> FsResult:
    boot, geo = _read_boot_sector(area)
    mft_size, mft_runs = _mft_runlist(area, geo)
    label = _read_volume_record(area, geo, mft_runs)
    bitmap_data_runs = _bitmap_runlist(area, geo, mft_runs)
    starts, ends = _scan_bitmap(area, geo, bitmap_data_runs)
    marked = Extents.from_arrays(starts, ends)
    _check_bitmap_marks(area, mft_runs, bitmap_data_runs, marked)
    # $Bitmap has no checksum: every cluster an in-use record maps must be set in it.
    checked = check_mft_references(area, geo, mft_runs, mft_size, marked)
    size = _volume_size(area, geo)
    used = _used_extents(area, geo, size, starts, ends, mft_runs)
    return FsResult("ntfs", size, used, _details(boot, geo, label, size, checked))


def _read_boot_sector(area: Area) -> tuple[bytes, _Geometry]:
    boot = area.read(0, 512)
    if boot[3:11] != b"NTFS    ":
        raise area.damaged("NTFS boot sector has no NTFS signature")
    return boot, _Geometry(area, boot)


def _mft_runlist(area: Area, geo: _Geometry) -> tuple[int, list[tuple[int, int, int]]]:
    """(data size, runs) of $MFT itself, from record 0 at the boot sector's MFT cluster."""
    where = geo.mft_lcn * geo.cluster
    rec0 = bytearray(area.read(where, geo.record))
    _fixup(area, rec0, where)
    mft_data = _find(_attributes(area, bytes(rec0), where), 0x80)
    if mft_data is None:
        raise area.damaged("NTFS $MFT record has no $DATA attribute")
    return _runlist(area, mft_data, geo)


def _read_volume_record(area: Area, geo: _Geometry, mft_runs: list[tuple[int, int, int]]) -> str:
    """The volume label from $Volume (record 3); a volume marked dirty raises."""
    vattrs = _attributes(area, _record(area, geo, mft_runs, 3), 3)
    info = _find(vattrs, 0x70)
    label = ""
    name = _find(vattrs, 0x60)
    # A resident attribute's value length and offset sit at 0x10..0x16; a damaged record may
    # hold a shorter attribute, which is damage, never a struct.error.
    for attr in (name, info):
        if attr is not None and attr[8] == 0 and len(attr) < 0x16:
            raise area.damaged(f"NTFS $Volume attribute of {len(attr)} bytes is too short")
    if name is not None and name[8] == 0:
        vlen, voff = struct.unpack_from("<IH", name, 0x10)
        label = name[voff : voff + vlen].decode("utf-16-le", "replace")
    if info is not None and info[8] == 0:
        vlen, voff = struct.unpack_from("<IH", info, 0x10)
        if vlen >= 12 and voff + 12 <= len(info):
            (vflags,) = struct.unpack_from("<H", info, voff + 10)
            if vflags & _VOLUME_DIRTY:
                raise area.damaged("NTFS volume is marked dirty; run chkdsk or ntfsfix first")
    return label


def _bitmap_runlist(
    area: Area, geo: _Geometry, mft_runs: list[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    """The runs of $Bitmap's data (record 6), which must hold a bit for every cluster."""
    bitmap_rec = _record(area, geo, mft_runs, 6)
    bitmap_attr = _find(_attributes(area, bitmap_rec, 6 * geo.record), 0x80)
    if bitmap_attr is None:
        raise area.damaged("NTFS $Bitmap record has no $DATA attribute")
    data_size, runs = _runlist(area, bitmap_attr, geo)
    need = -(-geo.clusters // 8)
    if data_size < need:
        raise area.damaged(f"NTFS $Bitmap holds {data_size} bytes for {geo.clusters} clusters")
    return runs


def _scan_bitmap(
    area: Area, geo: _Geometry, runs: list[tuple[int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Used cluster runs ``[starts, ends)`` from $Bitmap, which must cover every cluster."""
    need = -(-geo.clusters // 8)
    # The bitmap is consumed piece by piece so a multi-TiB volume never holds it all at once.
    starts_l: list[np.ndarray] = []
    ends_l: list[np.ndarray] = []
    covered = 0
    for vcn, length, lcn in runs:
        lo = vcn * geo.cluster
        if lo >= need:
            break
        if lcn < 0:
            raise area.damaged(f"NTFS $Bitmap is sparse at VCN {vcn}")
        n = min(length * geo.cluster, need - lo)
        for pos in range(0, n, _PIECE):
            piece = area.read_array(lcn * geo.cluster + pos, min(_PIECE, n - pos))
            first_bit = (lo + pos) * 8
            s, e = bitmap_runs(piece, min(piece.size * 8, geo.clusters - first_bit))
            starts_l.append(s + first_bit)
            ends_l.append(e + first_bit)
        covered = max(covered, lo + n)
    if covered < need:
        raise area.damaged(f"NTFS $Bitmap runs cover {covered} of {need} bytes")
    starts = np.concatenate(starts_l) if starts_l else np.zeros(0, np.int64)
    ends = np.concatenate(ends_l) if ends_l else np.zeros(0, np.int64)
    return starts, ends


def _check_bitmap_marks(
    area: Area,
    mft_runs: list[tuple[int, int, int]],
    bitmap_data_runs: list[tuple[int, int, int]],
    marked: Extents,
) -> None:
    """The bitmap must at least mark the clusters of $MFT and of its own data, and the boot
    sector's cluster: a bitmap that does not is damaged (NTFS has no checksum for it)."""
    must = [(lcn, lcn + n) for _v, n, lcn in (*mft_runs, *bitmap_data_runs) if lcn >= 0] + [(0, 1)]
    missing = Extents.from_pairs(must).subtract(marked)
    if missing.total():
        raise area.damaged(
            f"NTFS $Bitmap marks {missing.first} free although $MFT, $Bitmap or the boot "
            "sector uses it; the bitmap is damaged"
        )


def _volume_size(area: Area, geo: _Geometry) -> int:
    """The volume's bytes: through the backup boot sector after the last sector, when the
    region holds it."""
    backup_boot = geo.total_sectors * geo.bps
    return backup_boot + geo.bps if backup_boot + geo.bps <= area.length else backup_boot


def _used_extents(
    area: Area,
    geo: _Geometry,
    size: int,
    starts: np.ndarray,
    ends: np.ndarray,
    mft_runs: list[tuple[int, int, int]],
) -> Extents:
    """Absolute byte runs: the marked clusters plus both boot sectors, $MFT and $MFTMirr."""
    extra = [(0, geo.bps)]
    backup_boot = geo.total_sectors * geo.bps
    if size > backup_boot:
        extra.append((backup_boot, size))
    for _vcn, length, lcn in mft_runs:
        if lcn >= 0:
            extra.append((lcn * geo.cluster, (lcn + length) * geo.cluster))
    mirr = geo.mirr_lcn * geo.cluster
    extra.append((mirr, mirr + max(4 * geo.record, geo.cluster)))
    ex = np.array(extra, np.int64)
    return Extents.from_arrays(
        area.start + np.concatenate([starts * geo.cluster, ex[:, 0]]),
        area.start + np.minimum(np.concatenate([ends * geo.cluster, ex[:, 1]]), size),
    )


def _details(boot: bytes, geo: _Geometry, label: str, size: int, checked: int) -> dict[str, Any]:
    (serial,) = struct.unpack_from("<Q", boot, 0x48)
    return {
        "uuid": f"{serial:016X}",
        "label": label,
        "block_size": geo.cluster,
        "clusters": geo.clusters,
        "size": size,
        "records_checked": checked,
    }
