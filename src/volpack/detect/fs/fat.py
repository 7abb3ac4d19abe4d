"""FAT12/16/32: used clusters from the file allocation table.

Reserved sectors, every FAT copy and the FAT12/16 root directory are used; a data cluster is used
when its entry is non-zero in any FAT copy. FAT copies that disagree, entries pointing outside the
data area, a chain or directory entry reaching a free cluster (fat_dirs) or a boot sector that
does not describe the region raise FsDamaged. Reads only.
"""

from __future__ import annotations

import struct

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
    # One copy at a time, as uint32: a FAT32 of 2^28 entries stays at two tables in memory.
    first_table = None
    used = np.zeros(entries, bool)
    for i in range(fats):
        raw = area.read_array((reserved + i * fat_sectors) * bps, need)
        table = _entries(raw, bits, entries) & np.uint32(mask)
        nxt = table[2:]
        bad = np.flatnonzero((nxt == 1) | ((nxt >= entries) & (nxt < first_reserved)))
        if bad.size:
            c = int(bad[0]) + 2
            raise area.damaged(
                f"{kind} FAT {i + 1} entry {c} points to cluster {int(nxt[bad[0]])}, "
                f"outside 2..{entries - 1}; the table is damaged"
            )
        if first_table is None:
            first_table = table
        elif not np.array_equal(table[2:], first_table[2:]):
            diff = int(np.flatnonzero(table[2:] != first_table[2:])[0]) + 2
            raise area.damaged(
                f"{kind} FAT copies differ at cluster {diff}; the tables are damaged"
            )
        used |= table != 0
    if first_table is None:
        raise area.damaged(f"{kind} has no FAT")
    # Dirty marks: Linux sets bit 0 of the boot sector's state byte while mounted; Windows clears
    # the clean-shutdown bit of FAT entry 1. Directory entries may then point at clusters whose
    # FAT entries were not written yet.
    state = boot[65 if kind == "fat32" else 37]
    clean_bit = {"fat12": 0, "fat16": 0x8000, "fat32": 0x08000000}[kind]
    if state & 1 or (clean_bit and not int(first_table[1]) & clean_bit):
        raise area.damaged(f"{kind} volume is marked dirty (not cleanly unmounted); run fsck.vfat")
    # The FAT has no checksum: a zeroed entry (with one copy, or the same in every copy) would
    # drop a live cluster. Chains must not link to free clusters, and every file's and
    # directory's first cluster must be allocated.
    check_chains(area, first_table)
    root_cluster = struct.unpack_from("<I", boot, 44)[0] & 0x0FFFFFFF if kind == "fat32" else 0
    if kind == "fat32" and not 2 <= root_cluster < entries:
        raise area.damaged(
            f"fat32 root directory at cluster {root_cluster}, outside 2..{entries - 1}"
        )
    checked = check_directory_tree(
        area,
        FatLayout(
            kind=kind,
            cluster_bytes=spc * bps,
            data_start=data_start * bps,
            root_offset=(reserved + fats * fat_sectors) * bps,
            root_bytes=root_sectors * bps,
            root_cluster=root_cluster,
            first_reserved=first_reserved,
        ),
        first_table,
    )
    used[:2] = False
    starts, ends = bit_runs(used[2:].astype(np.uint8))
    cluster_bytes = spc * bps
    base = area.start + data_start * bps
    meta_end = area.start + data_start * bps
    used_runs = Extents.from_arrays(
        np.concatenate([[area.start], base + starts * cluster_bytes]),
        np.concatenate([[meta_end], base + ends * cluster_bytes]),
    )
    off = 67 if kind == "fat32" else 39
    serial = struct.unpack_from("<I", boot, off)[0] if boot[off - 1] == 0x29 else None
    details = {
        "uuid": f"{serial >> 16:04X}-{serial & 0xFFFF:04X}" if serial is not None else "",
        "label": text(boot[off + 4 : off + 15]) if serial is not None else "",
        "block_size": cluster_bytes,
        "clusters": clusters,
        "size": size,
        "entries_checked": checked,
    }
    return FsResult(kind, size, used_runs, details)


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
