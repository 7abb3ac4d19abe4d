"""Shared pieces of the filesystem detectors: bounded reads, bitmap → runs, small checksums.

A filesystem parser sees its region through ``Area``, which refuses any read outside the region
(a pointer past the end is damage, not an I/O error). Parsers raise ``FsDamaged`` for anything
inconsistent; the caller turns that into one warning and a conservative region. No writes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from volpack.detect.base import ReadAt
from volpack.errors import SourceError
from volpack.extents import Extents

# Upper bound for one metadata read; bitmaps and tables are read in pieces no larger than this.
MAX_READ = 64 << 20
# Upper bound for one whole table (a FAT copy, an NTFS $Bitmap run, a run of ext bitmaps).
MAX_TABLE = 1 << 30


class FsDamaged(SourceError):
    """Filesystem metadata is inconsistent; the region falls back to the conservative detectors."""


@dataclass(frozen=True, slots=True, eq=False)
class FsResult:
    """What a filesystem parser found: its size in bytes and the absolute byte runs it uses."""

    detector: str
    size: int
    used: Extents
    details: dict[str, Any] = field(default_factory=dict)


class Area:
    """``[start, start + length)`` of the volume, read with offsets relative to ``start``."""

    __slots__ = ("read_at", "start", "length", "name")

    def __init__(self, read_at: ReadAt, start: int, length: int, name: str = "filesystem") -> None:
        self.read_at = read_at
        self.start = start
        self.length = length
        self.name = name

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.length:
            raise FsDamaged(
                f"{self.name} at byte {self.start}: metadata read [{offset}, {offset + length}) "
                f"lies outside the {self.length}-byte region; metadata is damaged"
            )
        if length > MAX_READ:
            raise FsDamaged(
                f"{self.name} at byte {self.start}: metadata read of {length} bytes at {offset} "
                f"exceeds the {MAX_READ}-byte bound; metadata is damaged"
            )
        data = self.read_at(self.start + offset, length)
        if len(data) != length:
            raise SourceError(
                f"volume: read of {length} bytes at {self.start + offset} returned {len(data)}"
            )
        return data

    def read_array(self, offset: int, length: int) -> np.ndarray:
        """A large table as a uint8 array, read in pieces of at most MAX_READ bytes."""
        if length > MAX_TABLE:
            raise FsDamaged(
                f"{self.name} at byte {self.start}: table of {length} bytes at {offset} exceeds "
                f"the {MAX_TABLE}-byte bound; metadata is damaged"
            )
        if length <= MAX_READ:
            return np.frombuffer(self.read(offset, length), np.uint8)
        out = np.empty(length, np.uint8)
        for pos in range(0, length, MAX_READ):
            n = min(MAX_READ, length - pos)
            out[pos : pos + n] = np.frombuffer(self.read(offset + pos, n), np.uint8)
        return out

    def damaged(self, problem: str) -> FsDamaged:
        return FsDamaged(f"{self.name} at byte {self.start}: {problem}")


def bit_runs(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of set bits in a 0/1 uint8 array: (starts, ends) as int64 indices."""
    if bits.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    edges = np.diff(bits.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1).astype(np.int64)
    ends = np.flatnonzero(edges == -1).astype(np.int64)
    return starts, ends


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount_rows(bitmaps: np.ndarray) -> np.ndarray:
    """Set bits per row of a 2-D uint8 array."""
    return _POPCOUNT[bitmaps].sum(axis=1, dtype=np.int64)


def bitmap_runs(bitmap: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of set bits among the first ``nbits`` of a little-endian (LSB first) byte bitmap.

    Whole 0x00/0xFF bytes are handled at byte level; only mixed bytes are expanded to bits, so
    the cost is one pass over the bytes plus work proportional to fragmentation.
    """
    nbytes = -(-nbits // 8)
    data = np.asarray(bitmap, np.uint8)[:nbytes]
    if nbits % 8 and data.size == nbytes:
        data = data.copy()
        data[-1] &= (1 << (nbits % 8)) - 1
    full = data == 0xFF
    mixed = np.flatnonzero(~full & (data != 0))
    fs, fe = bit_runs(full.view(np.uint8))
    bits = np.unpackbits(data[mixed][:, None], axis=1, bitorder="little")
    edges = np.diff(bits.astype(np.int8), axis=1, prepend=np.int8(0), append=np.int8(0))
    rs, cs = np.nonzero(edges == 1)
    re, ce = np.nonzero(edges == -1)
    base = mixed.astype(np.int64) * 8
    starts = np.concatenate([fs * 8, base[rs] + cs])
    ends = np.concatenate([fe * 8, base[re] + ce])
    merged = Extents.from_arrays(starts, ends)
    return merged.starts, merged.ends


def byte_runs(starts: np.ndarray, ends: np.ndarray, unit: int, base: int) -> Extents:
    """Unit-indexed runs → absolute byte runs starting at ``base``."""
    return Extents.from_arrays(base + starts * unit, base + ends * unit)


def _table(poly: int) -> np.ndarray:
    table = np.zeros(256, np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table[i] = crc
    return table


_CRC32C = _table(0x82F63B78).tolist()
_CRC16 = _table(0xA001).tolist()


def _slice_tables(table: list[int]) -> list[np.ndarray]:
    t0 = np.array(table, np.uint32)
    out = [t0]
    for _ in range(3):
        prev = out[-1]
        out.append((prev >> np.uint32(8)) ^ t0[prev & np.uint32(0xFF)])
    return out


_CRC32C_SLICE = _slice_tables(_CRC32C)


def crc32c_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """CRC-32C (no final inversion) of every row of a 2-D uint8 array, four bytes per step.

    One numpy step per 4 columns for all rows at once: checksumming thousands of 4 KiB bitmaps
    costs about as much as one.
    """
    t0, t1, t2, t3 = _CRC32C_SLICE
    count, width = rows.shape
    crc = np.full(count, seed, np.uint32)
    words = width // 4
    if words:
        packed = np.ascontiguousarray(rows[:, : words * 4]).view("<u4")
        m = np.uint32(0xFF)
        for col in range(words):
            x = crc ^ packed[:, col]
            crc = (
                t3[x & m]
                ^ t2[(x >> np.uint32(8)) & m]
                ^ t1[(x >> np.uint32(16)) & m]
                ^ t0[x >> np.uint32(24)]
            )
    for col in range(words * 4, width):
        crc = t0[(crc ^ rows[:, col]) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return crc


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32C without the final inversion (the kernel's ``crc32c_le`` with a seed)."""
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: bytes) -> int:
    """Standard CRC-32C (iSCSI, btrfs, XFS)."""
    return crc32c_raw(data) ^ 0xFFFFFFFF


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """The kernel's crc16 (poly 0x8005 reflected), used by ext4 ``gdt_csum``."""
    table = _CRC16
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc_columns(rows: np.ndarray, seed: np.ndarray, poly: str = "crc32c") -> np.ndarray:
    """The same table CRC over many equal-length rows at once (one numpy step per column)."""
    table = np.array(_CRC32C if poly == "crc32c" else _CRC16, dtype=np.uint32)
    crc = seed.astype(np.uint32).copy()
    for col in range(rows.shape[1]):
        crc = table[(crc ^ rows[:, col]) & 0xFF] ^ (crc >> np.uint32(8))
    return crc


def text(raw: bytes) -> str:
    """A NUL-padded label as text (undecodable bytes replaced)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def uuid_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
