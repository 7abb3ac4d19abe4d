"""Persistent dirty bitmaps of a qcow2 image (the bitmaps header extension), decoded to extents.

Only the qcow2 source uses this: it reads the bitmap directory, bitmap tables and bitmap data of
the top image and turns set bits into byte runs of the guest disk. Read-only; it never clears the
in-use flag or otherwise touches the image, and it never trusts a bitmap qemu would not.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from volpack.errors import SourceError
from volpack.exactio import Subject, pread_exact, preadv_exact
from volpack.extents import Extents
from volpack.source.qcow2_format import Header

_ENTRY = struct.Struct(">QIIBBHI")  # 24 bytes, then extra data, name, padding to 8
MAX_BITMAPS = 65535
MAX_DIRECTORY = 64 << 20
FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
TYPE_DIRTY_TRACKING = 1
_OFFSET_MASK = np.uint64(0x00FFFFFFFFFFFE00)
_CHUNK_CLUSTERS = 256  # bitmap data clusters unpacked at once
_DAMAGED = "the image is damaged"


@dataclass(frozen=True, slots=True, eq=False)
class Bitmap:
    name: str
    granularity: int
    auto: bool  # enabled: qemu keeps tracking writes into it
    in_use: bool  # not saved cleanly; contents may be stale
    usable: bool  # safe to base an incremental on
    extents: Extents  # dirty byte runs (empty when not usable)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "granularity": self.granularity,
            "enabled": self.auto,
            "in_use": self.in_use,
            "usable": self.usable,
            "dirty_bytes": self.extents.total() if self.usable else None,
        }


def read_bitmaps(fd: int, hdr: Header, file_size: int) -> list[Bitmap]:
    ext = hdr.bitmaps
    if ext is None:
        return []
    cs = hdr.cluster_size
    if not 1 <= ext.nb_bitmaps <= MAX_BITMAPS or not 0 < ext.directory_size <= MAX_DIRECTORY:
        raise SourceError(
            f"{hdr.path}: qcow2 bitmaps extension lists {ext.nb_bitmaps} bitmaps in a "
            f"{ext.directory_size}-byte directory (limits {MAX_BITMAPS}, {MAX_DIRECTORY}); "
            "the image is damaged"
        )
    if ext.directory_offset % cs or ext.directory_offset + ext.directory_size > file_size:
        raise SourceError(
            f"{hdr.path}: qcow2 bitmap directory at offset {ext.directory_offset} is unaligned "
            f"or past the end of the {file_size}-byte file; the image is damaged"
        )
    where = Subject(f"{hdr.path}: qcow2 bitmap directory", SourceError, at_end=_DAMAGED)
    directory = pread_exact(fd, ext.directory_size, ext.directory_offset, where)
    out: list[Bitmap] = []
    pos = 0
    for _ in range(ext.nb_bitmaps):
        if pos + _ENTRY.size > len(directory):
            raise SourceError(
                f"{hdr.path}: qcow2 bitmap directory ends inside entry {len(out)}; "
                "the image is damaged"
            )
        table_offset, table_size, flags, kind, gran_bits, name_size, extra_size = (
            _ENTRY.unpack_from(directory, pos)
        )
        name_at = pos + _ENTRY.size + extra_size
        if name_size == 0 or name_at + name_size > len(directory):
            raise SourceError(
                f"{hdr.path}: qcow2 bitmap directory entry {len(out)} has a name of "
                f"{name_size} bytes past the directory end; the image is damaged"
            )
        name = directory[name_at : name_at + name_size].decode("utf-8", "replace")
        pos = (name_at + name_size + 7) // 8 * 8
        in_use = bool(flags & FLAG_IN_USE)
        usable = (
            ext.consistent
            and not in_use
            and kind == TYPE_DIRTY_TRACKING
            and gran_bits < 64
            and (extra_size == 0 or bool(flags & FLAG_EXTRA_DATA_COMPATIBLE))
        )
        granularity = 1 << gran_bits if gran_bits < 64 else 0
        extents = Extents.empty()
        if usable:
            extents = _dirty(fd, hdr, file_size, name, table_offset, table_size, gran_bits)
        out.append(Bitmap(name, granularity, bool(flags & FLAG_AUTO), in_use, usable, extents))
    return out


def _dirty(
    fd: int, hdr: Header, file_size: int, name: str, offset: int, count: int, gran_bits: int
) -> Extents:
    cs = hdr.cluster_size
    bits = -(-hdr.size // (1 << gran_bits))
    needed = -(-bits // (8 * cs))
    if count != needed or offset % cs or offset + count * 8 > file_size:
        raise SourceError(
            f"{hdr.path}: qcow2 bitmap '{name}' table at offset {offset} has {count} entries "
            f"(needs {needed}) or lies outside the {file_size}-byte file; the image is damaged"
        )
    if count == 0:
        return Extents.empty()
    where = Subject(f"{hdr.path}: qcow2 bitmap '{name}'", SourceError, at_end=_DAMAGED)
    table = np.frombuffer(pread_exact(fd, count * 8, offset, where), ">u8").astype(np.uint64)
    hosts = (table & _OFFSET_MASK).astype(np.int64)
    bad = np.flatnonzero((hosts % cs != 0) | (hosts > file_size - cs))
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            f"{hdr.path}: qcow2 bitmap '{name}' data cluster {i} at offset {int(hosts[i])} is "
            f"unaligned or past the end of the {file_size}-byte file; the image is damaged"
        )
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for first in range(0, count, _CHUNK_CLUSTERS):
        last = min(first + _CHUNK_CLUSTERS, count)
        data = np.zeros((last - first, cs), np.uint8)
        for row, i in enumerate(range(first, last)):
            if hosts[i]:
                preadv_exact(fd, (memoryview(data[row]),), int(hosts[i]), where)
            elif table[i] & np.uint64(1):
                data[row] = 0xFF
        # Bit n of the bitmap is bit n % 8 (least significant first) of byte n // 8.
        flat = np.unpackbits(data.ravel(), bitorder="little").astype(np.int8)
        base = first * cs * 8
        flat = flat[: max(0, min(flat.size, bits - base))]
        edges = np.diff(np.concatenate([[0], flat, [0]]))
        starts.append(np.flatnonzero(edges == 1) + base)
        ends.append(np.flatnonzero(edges == -1) + base)
    s = np.concatenate(starts).astype(np.int64) << gran_bits
    e = np.minimum(np.concatenate(ends).astype(np.int64) << gran_bits, hdr.size)
    return Extents.from_arrays(s, e)
