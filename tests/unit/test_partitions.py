"""Partition table parsing on hand-built sectors: MBR, EBR chains, GPT headers and checksums."""

from __future__ import annotations

import struct
import uuid
import zlib

from volpack.detect.partitions import guid_str, read_table

MiB = 1 << 20
LINUX = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4").bytes_le


def reader(buf: bytearray):
    def read_at(offset: int, length: int) -> bytes:
        return bytes(buf[offset : offset + length]).ljust(length, b"\0")

    return read_at


def mbr(entries, sig=b"\x55\xaa") -> bytes:
    sector = bytearray(512)
    for i, (status, ptype, lba, count) in enumerate(entries):
        struct.pack_into("<B3xB3xII", sector, 446 + 16 * i, status, ptype, lba, count)
    sector[510:512] = sig
    return bytes(sector)


def gpt_disk(size: int, parts: list[tuple[int, int]], ss: int = 512) -> bytearray:
    """A GPT disk with ``ss``-byte sectors and 128 entries; ``parts`` are (first, last) LBAs."""
    buf = bytearray(size)
    last = size // ss - 1
    entries = bytearray(128 * 128)
    array_lbas = len(entries) // ss
    for i, (first, end) in enumerate(parts):
        e = LINUX + uuid.uuid4().bytes_le + struct.pack("<QQQ", first, end, 0)
        entries[i * 128 : i * 128 + len(e)] = e
    ecrc = zlib.crc32(entries)

    def header(my, alt, entries_lba):
        h = bytearray(92)
        h[:8] = b"EFI PART"
        struct.pack_into("<IIII", h, 8, 0x10000, 92, 0, 0)
        struct.pack_into("<QQQQ", h, 24, my, alt, 2 + array_lbas, last - 1 - array_lbas)
        h[56:72] = uuid.uuid4().bytes_le
        struct.pack_into("<QIII", h, 72, entries_lba, 128, 128, ecrc)
        struct.pack_into("<I", h, 16, zlib.crc32(h))
        return bytes(h)

    buf[0:512] = mbr([(0, 0xEE, 1, min(last, 0xFFFFFFFF))])
    buf[ss : ss + 92] = header(1, last, 2)
    buf[2 * ss : 2 * ss + len(entries)] = entries
    backup_array = (last - array_lbas) * ss
    buf[backup_array : backup_array + len(entries)] = entries
    buf[last * ss : last * ss + 92] = header(last, 1, last - array_lbas)
    return buf


def test_mbr_primary_partitions_are_listed_in_bytes():
    buf = bytearray(16 * MiB)
    buf[:512] = mbr([(0x80, 0x83, 2048, 4096), (0, 0x07, 8192, 2048)])
    warnings: list[str] = []
    table = read_table(reader(buf), len(buf), warnings)
    assert warnings == []
    assert table is not None and table.scheme == "mbr"
    assert table.table_runs == ((0, 512),)
    assert [(p.number, p.start, p.length, p.type) for p in table.partitions] == [
        (1, 2048 * 512, 4096 * 512, "0x83"),
        (2, 8192 * 512, 2048 * 512, "0x07"),
    ]


def test_sector_without_partition_entries_is_not_a_table():
    buf = bytearray(4 * MiB)
    buf[:512] = mbr([])
    assert read_table(reader(buf), len(buf), []) is None


def test_boot_sector_with_bad_status_bytes_is_not_a_table():
    buf = bytearray(4 * MiB)
    buf[:512] = mbr([(0x12, 0x83, 2048, 100)])
    assert read_table(reader(buf), len(buf), []) is None


def test_extended_partition_chain_gives_logical_partitions_numbered_from_five():
    buf = bytearray(32 * MiB)
    ext = 4096
    buf[:512] = mbr([(0, 0x83, 2048, 2048), (0, 0x0F, ext, 40000)])
    # EBR 1: logical at +2048; next EBR at ext + 10000.
    buf[ext * 512 : ext * 512 + 512] = mbr([(0, 0x83, 2048, 4000), (0, 0x05, 10000, 8000)])
    e2 = ext + 10000
    buf[e2 * 512 : e2 * 512 + 512] = mbr([(0, 0x82, 2048, 2000)])
    warnings: list[str] = []
    table = read_table(reader(buf), len(buf), warnings)
    assert warnings == []
    assert [(p.number, p.start // 512, p.type) for p in table.partitions] == [
        (1, 2048, "0x83"),
        (5, ext + 2048, "0x83"),
        (6, e2 + 2048, "0x82"),
    ]
    assert table.table_runs == ((0, 512), (ext * 512, ext * 512 + 512), (e2 * 512, e2 * 512 + 512))


def test_looping_ebr_chain_stops_with_a_warning():
    buf = bytearray(32 * MiB)
    ext = 4096
    buf[:512] = mbr([(0, 0x05, ext, 40000)])
    # The second EBR's "next" points back to itself.
    e2 = ext + 5000
    buf[ext * 512 : ext * 512 + 512] = mbr([(0, 0x83, 2048, 100), (0, 0x05, 5000, 100)])
    buf[e2 * 512 : e2 * 512 + 512] = mbr([(0, 0x83, 20, 10), (0, 0x05, 5000, 100)])
    warnings: list[str] = []
    table = read_table(reader(buf), len(buf), warnings)
    assert any("loops" in w for w in warnings)
    assert len(table.partitions) == 2


def test_mbr_partition_beyond_the_volume_is_dropped_with_a_warning():
    buf = bytearray(4 * MiB)
    buf[:512] = mbr([(0, 0x83, 2048, 10**7)])
    warnings: list[str] = []
    table = read_table(reader(buf), len(buf), warnings)
    assert table.partitions == () and len(warnings) == 1 and "outside" in warnings[0]


def test_gpt_partitions_and_both_tables_are_found():
    size = 64 * MiB
    buf = gpt_disk(size, [(2048, 4095), (4096, 20479)])
    warnings: list[str] = []
    table = read_table(reader(buf), size, warnings)
    assert warnings == []
    assert table.scheme == "gpt" and table.details["backup_ok"] is True
    assert [(p.start, p.length) for p in table.partitions] == [
        (2048 * 512, 2048 * 512),
        (4096 * 512, 16384 * 512),
    ]
    assert table.partitions[0].type == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    assert table.table_runs == ((0, 34 * 512), (size - 33 * 512, size))


def test_gpt_with_corrupt_primary_header_is_read_from_the_backup():
    size = 64 * MiB
    buf = gpt_disk(size, [(2048, 4095)])
    buf[512 + 40] ^= 0xFF
    warnings: list[str] = []
    table = read_table(reader(buf), size, warnings)
    assert [p.start for p in table.partitions] == [2048 * 512]
    assert any("primary GPT header is damaged" in w for w in warnings)


def test_gpt_with_corrupt_entries_everywhere_lists_no_partitions():
    size = 64 * MiB
    buf = gpt_disk(size, [(2048, 4095)])
    buf[1024 + 40] ^= 0xFF
    buf[size - 33 * 512 + 40] ^= 0xFF
    warnings: list[str] = []
    table = read_table(reader(buf), size, warnings)
    assert table.scheme == "gpt" and table.partitions == ()
    assert sum("checksum" in w for w in warnings) == 2


def test_guid_text_uses_mixed_endian_fields():
    raw = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").bytes_le
    assert guid_str(raw) == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def test_gpt_with_4096_byte_sectors_is_found_at_lba_1_of_4096():
    size = 64 * MiB
    buf = gpt_disk(size, [(256, 511)], ss=4096)
    warnings: list[str] = []
    table = read_table(reader(buf), size, warnings)
    assert warnings == []
    assert table.sector_size == 4096
    assert [(p.start, p.length) for p in table.partitions] == [(256 * 4096, 256 * 4096)]
    # MBR + header + 4 LBAs of entries; backup entries + header at the end.
    assert table.table_runs == ((0, 6 * 4096), (size - 5 * 4096, size))


def test_overlapping_partitions_give_one_warning_and_regions_that_still_tile():
    from volpack.detect.layout import analyse

    buf = bytearray(16 * MiB)
    buf[:512] = mbr([(0, 0x83, 2048, 8192), (0, 0x83, 6144, 8192)])
    regions, warnings = analyse(reader(buf), len(buf))
    assert len(warnings) == 1 and "overlaps" in warnings[0]
    assert regions[0].start == 0 and regions[-1].end == len(buf)
    assert all(a.end == b.start for a, b in zip(regions, regions[1:], strict=False))
    assert [r.detector for r in regions] == ["mbr", "gap", "unknown", "overlap", "gap"]
    assert all(r.used is None for r in regions[1:])
