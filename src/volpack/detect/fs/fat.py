"""FAT12/16/32: used clusters from the file allocation table.

Reserved sectors, every FAT copy and the FAT12/16 root directory are used; a data cluster is used
when its entry is non-zero in any FAT copy. FAT copies that disagree, entries pointing outside the
data area, a chain or directory entry reaching a free cluster (fat_dirs) or a boot sector that
does not describe the region raise FsDamaged. Reads only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from volpack.detect.fs._common import Area, FsResult, bit_runs, text
from volpack.detect.fs.fat_dirs import FatLayout, check_chains, check_directory_tree
from volpack.extents import Extents

_MAX_FAT_BYTES = 1 << 30  # 2^28 FAT32 entries


def _bpb(boot: bytes) -> tuple[int, int, int, int, int, int, int, int] | None:
    """(bytes/sector, sectors/cluster, reserved, fats, root entries, total sectors, fat sectors,
    media) when ``boot`` is a plausible FAT boot sector, else None."""
    if boot[510:512] != b"\x55\xaa" or boot[0] not in (0xEB, 0xE9):
        return None
    bps, spc, reserved, fats, root_entries, total16, media, fat16 = struct.unpack_from(
        "<HBHBHHBH", boot, 11
    )
    (total32,) = struct.unpack_from("<I", boot, 32)
    (fat32,) = struct.unpack_from("<I", boot, 36)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
        return None
    if reserved == 0 or fats not in (1, 2) or media < 0xF0 and media != 0:
        return None
    total = total16 or total32
    fat_sectors = fat16 or fat32
    if total == 0 or fat_sectors == 0:
        return None
    return bps, spc, reserved, fats, root_entries, total, fat_sectors, media


def probe(area: Area) -> bool:
    if area.length < 512:
        return False
    boot = area.read(0, 512)
    return boot[3:11] != b"NTFS    " and _bpb(boot) is not None


def analyse(area: Area) -> FsResult:
    fs = _read_boot_sector(area)
    first_table, used = _read_tables(area, fs)
    _check_clean(area, fs, first_table)
    # The FAT has no checksum: a zeroed entry (with one copy, or the same in every copy) would
    # drop a live cluster. Chains must not link to free clusters, and every file's and
    # directory's first cluster must be allocated.
    check_chains(area, first_table)
    checked = check_directory_tree(area, _dir_layout(area, fs), first_table)
    return FsResult(fs.kind, fs.size, _used_extents(area, fs, used), _details(fs, checked))


@dataclass(frozen=True, slots=True)
class _Fat:
    """The boot sector and the geometry derived from it, checked against the region."""

    boot: bytes  # one whole sector
    bps: int
    spc: int
    reserved: int
    fats: int
    fat_sectors: int
    root_sectors: int
    data_start: int  # first data sector
    size: int
    clusters: int
    kind: str
    bits: int
    entries: int  # clusters + the two reserved entries
    need: int  # bytes of one table holding ``entries``
    mask: int
    first_reserved: int  # entries from here on are reserved, bad or end of chain

    @property
    def cluster_bytes(self) -> int:
        return self.spc * self.bps


def _read_boot_sector(area: Area) -> _Fat:
    boot = area.read(0, 512)
    bpb = _bpb(boot)
    if bpb is None:
        raise area.damaged("FAT boot sector is not valid")
    bps, spc, reserved, fats, root_entries, total, fat_sectors, _media = bpb
    if bps != 512:
        boot = area.read(0, bps)
    root_sectors = -(-(root_entries * 32) // bps)
    data_start = reserved + fats * fat_sectors + root_sectors
    if data_start >= total:
        raise area.damaged(f"FAT metadata ({data_start} sectors) fills all {total} sectors")
    size = total * bps
    if size > area.length:
        raise area.damaged(
            f"FAT filesystem of {size} bytes does not fit its {area.length}-byte region"
        )
    clusters = (total - data_start) // spc
    if clusters < 4085:
        kind, bits = "fat12", 12
    elif clusters < 65525:
        kind, bits = "fat16", 16
    else:
        kind, bits = "fat32", 32
    if (kind == "fat32") != (root_entries == 0):
        raise area.damaged(f"{kind} with {root_entries} root directory entries")
    entries = clusters + 2
    need = -(-(entries * bits) // 8)
    fat_bytes = fat_sectors * bps
    if need > fat_bytes or fat_bytes > _MAX_FAT_BYTES:
        raise area.damaged(f"{kind} table of {fat_bytes} bytes for {clusters} clusters")
    if kind == "fat32":
        mask, first_reserved = 0x0FFFFFFF, 0x0FFFFFF0
    else:
        mask, first_reserved = (1 << bits) - 1, (1 << bits) - 16
    return _Fat(
        boot=boot,
        bps=bps,
        spc=spc,
        reserved=reserved,
        fats=fats,
        fat_sectors=fat_sectors,
        root_sectors=root_sectors,
        data_start=data_start,
        size=size,
        clusters=clusters,
        kind=kind,
        bits=bits,
        entries=entries,
        need=need,
        mask=mask,
        first_reserved=first_reserved,
    )


def _read_tables(area: Area, fs: _Fat) -> tuple[np.ndarray, np.ndarray]:
    """(the first FAT copy's entries, per entry: non-zero in any copy); every copy is checked
    for pointers outside the data area and against the first."""
    # One copy at a time, as uint32: a FAT32 of 2^28 entries stays at two tables in memory.
    first_table = None
    used = np.zeros(fs.entries, bool)
    for i in range(fs.fats):
        table = _read_table(area, fs, i)
        if first_table is None:
            first_table = table
        elif not np.array_equal(table[2:], first_table[2:]):
            diff = int(np.flatnonzero(table[2:] != first_table[2:])[0]) + 2
            raise area.damaged(
                f"{fs.kind} FAT copies differ at cluster {diff}; the tables are damaged"
            )
        used |= table != 0
    if first_table is None:
        raise area.damaged(f"{fs.kind} has no FAT")
    return first_table, used


def _read_table(area: Area, fs: _Fat, i: int) -> np.ndarray:
    """FAT copy ``i`` as uint32 entries, each pointing inside the data area or reserved."""
    raw = area.read_array((fs.reserved + i * fs.fat_sectors) * fs.bps, fs.need)
    table = _entries(raw, fs.bits, fs.entries) & np.uint32(fs.mask)
    nxt = table[2:]
    bad = np.flatnonzero((nxt == 1) | ((nxt >= fs.entries) & (nxt < fs.first_reserved)))
    if bad.size:
        c = int(bad[0]) + 2
        raise area.damaged(
            f"{fs.kind} FAT {i + 1} entry {c} points to cluster {int(nxt[bad[0]])}, "
            f"outside 2..{fs.entries - 1}; the table is damaged"
        )
    return table


def _check_clean(area: Area, fs: _Fat, first_table: np.ndarray) -> None:
    """Dirty marks: Linux sets bit 0 of the boot sector's state byte while mounted; Windows
    clears the clean-shutdown bit of FAT entry 1. Directory entries may then point at clusters
    whose FAT entries were not written yet."""
    state = fs.boot[65 if fs.kind == "fat32" else 37]
    clean_bit = {"fat12": 0, "fat16": 0x8000, "fat32": 0x08000000}[fs.kind]
    if state & 1 or (clean_bit and not int(first_table[1]) & clean_bit):
        raise area.damaged(
            f"{fs.kind} volume is marked dirty (not cleanly unmounted); run fsck.vfat"
        )


def _dir_layout(area: Area, fs: _Fat) -> FatLayout:
    """Where the directory tree starts; a FAT32 root cluster must lie in the data area."""
    root_cluster = 0
    if fs.kind == "fat32":
        root_cluster = struct.unpack_from("<I", fs.boot, 44)[0] & 0x0FFFFFFF
        if not 2 <= root_cluster < fs.entries:
            raise area.damaged(
                f"fat32 root directory at cluster {root_cluster}, outside 2..{fs.entries - 1}"
            )
    return FatLayout(
        kind=fs.kind,
        cluster_bytes=fs.cluster_bytes,
        data_start=fs.data_start * fs.bps,
        root_offset=(fs.reserved + fs.fats * fs.fat_sectors) * fs.bps,
        root_bytes=fs.root_sectors * fs.bps,
        root_cluster=root_cluster,
        first_reserved=fs.first_reserved,
    )


def _used_extents(area: Area, fs: _Fat, used: np.ndarray) -> Extents:
    """Absolute byte runs: everything before the data area, then the used clusters."""
    starts, ends = bit_runs(used[2:].astype(np.uint8))
    base = area.start + fs.data_start * fs.bps
    return Extents.from_arrays(
        np.concatenate([[area.start], base + starts * fs.cluster_bytes]),
        np.concatenate([[base], base + ends * fs.cluster_bytes]),
    )


def _details(fs: _Fat, checked: int) -> dict[str, Any]:
    off = 67 if fs.kind == "fat32" else 39
    serial = struct.unpack_from("<I", fs.boot, off)[0] if fs.boot[off - 1] == 0x29 else None
    return {
        "uuid": f"{serial >> 16:04X}-{serial & 0xFFFF:04X}" if serial is not None else "",
        "label": text(fs.boot[off + 4 : off + 15]) if serial is not None else "",
        "block_size": fs.cluster_bytes,
        "clusters": fs.clusters,
        "size": fs.size,
        "entries_checked": checked,
    }


def _entries(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """FAT entries as uint32 (FAT12 packs two 12-bit entries in three bytes)."""
    if bits == 32:
        return data[: count * 4].view("<u4").astype(np.uint32)
    if bits == 16:
        return data[: count * 2].view("<u2").astype(np.uint32)
    pairs = -(-count // 2)
    buf = np.zeros(pairs * 3, np.uint8)
    buf[: min(data.size, pairs * 3)] = data[: pairs * 3]
    trip = buf.reshape(pairs, 3).astype(np.int64)
    even = trip[:, 0] | ((trip[:, 1] & 0x0F) << 8)
    odd = (trip[:, 1] >> 4) | (trip[:, 2] << 4)
    return np.stack([even, odd], axis=1).reshape(-1)[:count].astype(np.uint32)
