"""Partition tables: MBR (with extended/logical partitions) and GPT (primary and backup).

``read_table`` says where the table's own sectors are and where each partition lies; it does not
look inside partitions (that is the filesystem detectors' job, wired in ``layout``). A damaged
table yields warnings and as little as can be trusted; nothing here raises for bad content.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from volpack.detect.base import ReadAt

EXTENDED_TYPES = (0x05, 0x0F, 0x85)
GPT_PROTECTIVE = 0xEE
_MAX_LOGICAL = 1024
_MAX_GPT_ENTRIES = 65536
_MAX_ENTRY_ARRAY = 16 << 20


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition: bytes ``[start, start + length)`` of the volume."""

    number: int  # 1-based; MBR logical partitions start at 5, like Linux
    start: int
    length: int
    type: str  # MBR type byte as "0x83", or the GPT type GUID
    name: str = ""
    uuid: str = ""


@dataclass(frozen=True, slots=True)
class Table:
    """A partition table: its own byte runs (always used) and its partitions."""

    scheme: str  # "mbr" or "gpt"
    sector_size: int
    table_runs: tuple[tuple[int, int], ...]
    partitions: tuple[Partition, ...]
    details: dict[str, object] = field(default_factory=dict)


def guid_str(raw: bytes) -> str:
    """A GPT GUID (first three fields little-endian) as upper-case text."""
    a, b, c = struct.unpack_from("<IHH", raw, 0)
    rest = raw[8:16].hex().upper()
    return f"{a:08X}-{b:04X}-{c:04X}-{rest[:4]}-{rest[4:]}"


def read_table(read_at: ReadAt, size: int, warnings: list[str]) -> Table | None:
    """The volume's partition table, or None when it has none (or none that can be trusted)."""
    if size < 1024:
        return None
    gpt = _gpt(read_at, size, warnings)
    if gpt is not None:
        return gpt
    return _mbr(read_at, size, warnings)


# -- MBR -------------------------------------------------------------------------------------


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]] | None:
    """(status, type, first LBA, sectors) × 4, or None when the sector is no partition table."""
    if sector[510:512] != b"\x55\xaa":
        return None
    out = []
    for i in range(4):
        status, ptype, lba, count = struct.unpack_from("<B3xB3xII", sector, 446 + 16 * i)
        if status not in (0x00, 0x80):
            return None
        out.append((status, ptype, lba, count))
    return out


def looks_like_mbr(sector: bytes) -> bool:
    entries = _mbr_entries(sector)
    return bool(entries) and any(t and n for _s, t, _l, n in entries or [])


def _mbr(read_at: ReadAt, size: int, warnings: list[str]) -> Table | None:
    sector = read_at(0, 512)
    entries = _mbr_entries(sector)
    if not entries or not any(t and n for _s, t, _l, n in entries):
        return None
    sectors = size // 512
    runs: list[tuple[int, int]] = [(0, 512)]
    parts: list[Partition] = []
    for i, (_status, ptype, lba, count) in enumerate(entries):
        if not ptype or not count:
            continue
        if ptype == GPT_PROTECTIVE:
            warnings.append(
                "volume: protective MBR but no valid GPT header; partitions are left to holes "
                "and zero scan"
            )
            return Table("mbr", 512, tuple(runs), (), {"protective": True})
        if lba == 0 or lba + count > sectors:
            warnings.append(
                f"volume: MBR partition {i + 1} at sector {lba} of {count} sectors lies outside "
                f"the {sectors}-sector volume; ignored (holes and zero scan cover it)"
            )
            continue
        if ptype in EXTENDED_TYPES:
            _logical(read_at, lba, count, runs, parts, warnings)
            continue
        parts.append(Partition(i + 1, lba * 512, count * 512, f"0x{ptype:02x}"))
    (disk_id,) = struct.unpack_from("<I", sector, 440)
    return Table("mbr", 512, tuple(runs), tuple(parts), {"disk_id": f"{disk_id:08x}"})


def _logical(
    read_at: ReadAt,
    ext_lba: int,
    ext_count: int,
    runs: list[tuple[int, int]],
    parts: list[Partition],
    warnings: list[str],
) -> None:
    """Follow the EBR chain of an extended partition."""
    ebr = ext_lba
    seen: set[int] = set()
    number = 5
    while len(seen) < _MAX_LOGICAL:
        if ebr in seen or not ext_lba <= ebr < ext_lba + ext_count:
            warnings.append(f"volume: extended partition chain loops or leaves it at sector {ebr}")
            return
        seen.add(ebr)
        sector = read_at(ebr * 512, 512)
        entries = _mbr_entries(sector)
        if entries is None:
            warnings.append(
                f"volume: extended boot record at sector {ebr} is not valid; chain ends"
            )
            return
        runs.append((ebr * 512, ebr * 512 + 512))
        _s, ptype, rel, count = entries[0]
        if ptype and count:
            first = ebr + rel
            if rel == 0 or first + count > ext_lba + ext_count:
                warnings.append(
                    f"volume: logical partition {number} at sector {first} leaves its extended "
                    "partition; ignored"
                )
            else:
                parts.append(Partition(number, first * 512, count * 512, f"0x{ptype:02x}"))
            number += 1
        _s, ntype, nrel, _n = entries[1]
        if ntype not in EXTENDED_TYPES or nrel == 0:
            return
        ebr = ext_lba + nrel
    warnings.append(f"volume: more than {_MAX_LOGICAL} logical partitions; chain cut")


# -- GPT -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    my_lba: int
    alt_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    count: int
    entry_size: int
    entries_crc: int


def _header(raw: bytes, ss: int, lba: int) -> _Header | None:
    """The GPT header read at ``lba``, or None when it does not check out."""
    if raw[:8] != b"EFI PART":
        return None
    (hsize,) = struct.unpack_from("<I", raw, 12)
    if not 92 <= hsize <= ss:
        return None
    (crc,) = struct.unpack_from("<I", raw, 16)
    if zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:hsize]) != crc:
        return None
    my, alt, first, last = struct.unpack_from("<QQQQ", raw, 24)
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", raw, 72)
    if esize < 128 or esize % 8 or count > _MAX_GPT_ENTRIES or count * esize > _MAX_ENTRY_ARRAY:
        return None
    if my != lba:
        return None  # a header that does not know where it is was not written here
    return _Header(my, alt, first, last, guid_str(raw[56:72]), entries_lba, count, esize, ecrc)


def _entries(read_at: ReadAt, size: int, h: _Header, ss: int) -> bytes | None:
    nbytes = h.count * h.entry_size
    if (h.entries_lba * ss) + nbytes > size:
        return None
    data = read_at(h.entries_lba * ss, nbytes)
    return data if zlib.crc32(data) == h.entries_crc else None


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in runs if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _gpt(read_at: ReadAt, size: int, warnings: list[str]) -> Table | None:
    for ss in (512, 4096):
        if size < 3 * ss:
            continue
        raw = read_at(ss, ss)
        primary = _header(raw, ss, 1)
        last_lba = size // ss - 1
        backup = None
        if primary is not None and primary.alt_lba * ss + ss <= size:
            backup = _header(read_at(primary.alt_lba * ss, ss), ss, primary.alt_lba)
        if backup is None:
            backup = _header(read_at(last_lba * ss, ss), ss, last_lba)
        if primary is None and backup is None:
            if raw[:8] == b"EFI PART":
                warnings.append(
                    f"volume: GPT header at byte {ss} and its backup fail their checks; "
                    "partitions are left to holes and zero scan"
                )
                return Table("gpt", ss, ((0, 2 * ss),), (), {"damaged": True})
            continue
        entries = None
        good = None
        for h, which in ((primary, "primary"), (backup, "backup")):
            if h is None:
                continue
            entries = _entries(read_at, size, h, ss)
            if entries is not None:
                good = h
                break
            warnings.append(
                f"volume: GPT {which} partition entries lie outside the volume or fail their checksum"
            )
        if primary is None:
            warnings.append("volume: primary GPT header is damaged; using the backup header")
        elif backup is None:
            warnings.append("volume: backup GPT header is missing or damaged")
        if good is None or entries is None:
            return Table("gpt", ss, ((0, 2 * ss),), (), {"damaged": True})
        head = primary or good
        # Exactly the headers and entry arrays; the space between them and the partitions
        # (boot loaders live there) is a gap for the conservative detectors.
        runs = [(0, 2 * ss)]
        for h in (primary, backup):
            if h is not None:
                start = h.entries_lba * ss
                runs.append((start, min(size, start + -(-h.count * h.entry_size // ss) * ss)))
                runs.append((h.my_lba * ss, h.my_lba * ss + ss))
        if backup is None:
            # Where the backup should be, keep everything after the last usable LBA.
            alt = head.alt_lba if head.alt_lba * ss + ss <= size else last_lba
            runs.append(((good.last_usable + 1) * ss, (alt + 1) * ss))
        runs = _merge([(min(a, size), min(b, size)) for a, b in runs])
        parts = []
        for i in range(good.count):
            e = entries[i * good.entry_size : (i + 1) * good.entry_size]
            if e[:16] == bytes(16):
                continue
            first, last = struct.unpack_from("<QQ", e, 32)
            if first > last or first < 1 or (last + 1) * ss > size:
                warnings.append(
                    f"volume: GPT partition {i + 1} [{first}, {last}] lies outside the volume; "
                    "ignored (holes and zero scan cover it)"
                )
                continue
            name = e[56:128]
            parts.append(
                Partition(
                    i + 1,
                    first * ss,
                    (last - first + 1) * ss,
                    guid_str(e[:16]),
                    name.decode("utf-16-le", "replace").split("\0", 1)[0],
                    guid_str(e[16:32]),
                )
            )
        details = {"disk_guid": good.disk_guid, "backup_ok": backup is not None}
        return Table("gpt", ss, tuple(runs), tuple(parts), details)
    return None
