"""LVM2 on-disk metadata, read offline from physical volumes: PV label, PV header, metadata area
ring buffer, and the VG text configuration parsed into plain dicts.

This is the byte-level half of the LVM source; it never interprets segments (lvm_vg does) and
never talks to device-mapper or the LVM tools. Every size read from disk is bounded before use.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from volpack.errors import SourceError
from volpack.exactio import Subject, pread_exact

SECTOR = 512
LABEL_SCAN_SECTORS = 4  # the label lives in one of the first four sectors
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512
INITIAL_CRC = 0xF597A6CF
RAW_LOCN_IGNORED = 1
# Real metadata areas are around 1 MiB; anything far larger is damage, not configuration.
MAX_METADATA_TEXT = 64 << 20
MAX_AREAS = 64
MAX_DEPTH = 32

_LABEL = struct.Struct("<8sQII8s")  # id, sector_xl, crc_xl, offset_xl, type
_DISK_LOCN = struct.Struct("<QQ")  # offset, size
_MDA_HEADER = struct.Struct("<I16sIQQ")  # checksum, magic, version, start, size
_RAW_LOCN = struct.Struct("<QQII")  # offset, size, checksum, flags


def lvm_crc(data: bytes | memoryview, initial: int = INITIAL_CRC) -> int:
    """LVM's CRC: reflected CRC-32 (zlib's polynomial) with LVM's seed and no final inversion."""
    return zlib.crc32(data, initial ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def format_uuid(raw: bytes) -> str:
    """32 uuid characters as LVM prints them: 6-4-4-4-4-4-6."""
    text = raw.decode("ascii", "replace")
    parts, pos = [], 0
    for width in (6, 4, 4, 4, 4, 4, 6):
        parts.append(text[pos : pos + width])
        pos += width
    return "-".join(parts)


@dataclass(frozen=True, slots=True)
class PVLabel:
    """What the label sector and PV header of one physical volume say."""

    path: str
    uuid: str  # dashed form, as in the VG text
    device_size: int  # bytes, as recorded by pvcreate
    data_areas: tuple[tuple[int, int], ...]  # (offset, size) bytes; size 0 = to the end
    metadata_areas: tuple[tuple[int, int], ...]  # (offset, size) bytes


def read_pv_label(fd: int, path: str) -> PVLabel:
    """Find ``LABELONE`` in sectors 0..3 and decode the PV header after it."""
    head = os.pread(fd, LABEL_SCAN_SECTORS * SECTOR, 0)
    for sector in range(LABEL_SCAN_SECTORS):
        block = head[sector * SECTOR : (sector + 1) * SECTOR]
        if len(block) == SECTOR and block[:8] == LABEL_ID:
            return _decode_label(path, sector, block)
    raise SourceError(
        f"{path}: no LVM2 label (LABELONE) in the first {LABEL_SCAN_SECTORS} sectors; "
        "pass physical volumes of the volume group with --pv"
    )


def _decode_label(path: str, sector: int, block: bytes) -> PVLabel:
    _, sector_xl, crc_xl, offset_xl, ltype = _LABEL.unpack_from(block, 0)
    if sector_xl != sector:
        raise SourceError(f"{path}: LVM label in sector {sector} says it is in sector {sector_xl}")
    actual = lvm_crc(block[20:])
    if actual != crc_xl:
        raise SourceError(
            f"{path}: LVM label checksum {actual:#010x} != recorded {crc_xl:#010x}; "
            "the label is damaged"
        )
    if ltype != LABEL_TYPE:
        raise SourceError(f"{path}: label type {ltype!r} is not {LABEL_TYPE!r}; not an LVM2 PV")
    if not 32 <= offset_xl <= SECTOR - 32 - 2 * _DISK_LOCN.size:
        raise SourceError(f"{path}: PV header offset {offset_xl} lies outside the label sector")
    pos = offset_xl
    uuid = format_uuid(block[pos : pos + 32])
    (device_size,) = struct.unpack_from("<Q", block, pos + 32)
    pos += 40
    lists: list[tuple[tuple[int, int], ...]] = []
    for what in ("data", "metadata"):
        areas: list[tuple[int, int]] = []
        while True:
            if pos + _DISK_LOCN.size > SECTOR or len(areas) > MAX_AREAS:
                raise SourceError(f"{path}: PV header {what} area list does not terminate")
            offset, size = _DISK_LOCN.unpack_from(block, pos)
            pos += _DISK_LOCN.size
            if offset == 0:
                break
            areas.append((offset, size))
        lists.append(tuple(areas))
    return PVLabel(path, uuid, device_size, lists[0], lists[1])


@dataclass(frozen=True, slots=True)
class MetadataCopy:
    """One committed VG text found in a metadata area."""

    path: str
    mda_offset: int
    text: str


def read_metadata(fd: int, label: PVLabel, file_size: int) -> list[MetadataCopy]:
    """The committed VG text of each metadata area of the PV (empty for a PV without a VG)."""
    copies = []
    for mda_offset, mda_size in label.metadata_areas:
        text = _read_mda(fd, label.path, mda_offset, mda_size, file_size)
        if text is not None:
            copies.append(MetadataCopy(label.path, mda_offset, text))
    return copies


def _read_mda(fd: int, path: str, offset: int, size: int, file_size: int) -> str | None:
    where = f"{path}: metadata area at {offset}"
    if size < 2 * MDA_HEADER_SIZE or offset + size > file_size:
        raise SourceError(
            f"{where}: size {size} does not fit a device of {file_size} bytes; the PV header is "
            "damaged or the image is truncated"
        )
    pv = Subject(path, SourceError, at_end="the physical volume is truncated")
    header = pread_exact(fd, MDA_HEADER_SIZE, offset, pv)
    checksum, magic, version, start, mda_size = _MDA_HEADER.unpack_from(header, 0)
    if magic != MDA_MAGIC:
        raise SourceError(f"{where}: bad magic {magic!r}; the metadata area is damaged")
    actual = lvm_crc(header[4:])
    if actual != checksum:
        raise SourceError(
            f"{where}: header checksum {actual:#010x} != recorded {checksum:#010x}; damaged"
        )
    if version != 1:
        raise SourceError(f"{where}: metadata area version {version} is not supported (only 1)")
    if start != offset or mda_size != size:
        raise SourceError(
            f"{where}: header says start {start} size {mda_size}, PV header says {offset} {size}"
        )
    text_offset, text_size, text_crc, flags = _RAW_LOCN.unpack_from(header, _MDA_HEADER.size)
    if text_size == 0 or flags & RAW_LOCN_IGNORED:
        return None
    ring = size - MDA_HEADER_SIZE
    if not MDA_HEADER_SIZE <= text_offset < size or text_size > min(ring, MAX_METADATA_TEXT):
        raise SourceError(
            f"{where}: metadata text at {text_offset} of {text_size} bytes is outside the "
            f"{size}-byte area; damaged"
        )
    # The text is a ring buffer after the header: it may wrap back to just past the header.
    first = min(text_size, size - text_offset)
    data = pread_exact(fd, first, offset + text_offset, pv)
    if first < text_size:
        data += pread_exact(fd, text_size - first, offset + MDA_HEADER_SIZE, pv)
    actual = lvm_crc(data)
    if actual != text_crc:
        raise SourceError(
            f"{where}: metadata text checksum {actual:#010x} != recorded {text_crc:#010x}; "
            "the metadata is damaged or was being rewritten"
        )
    return data.rstrip(b"\0").decode("utf-8", "replace")


# -- the LVM text configuration format ---------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\]|\\.)*")|(?P<punct>[{}\[\]=,])"""
    r"""|(?P<word>[^\s{}\[\]=,"\#]+)""",
    re.DOTALL,
)
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?\d+\.\d*$")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_config(text: str, where: str = "metadata") -> dict[str, Any]:
    """Parse LVM's text format (``key = value``, ``name { … }``, ``[a, b]``) into nested dicts."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SourceError(f"{where}: unreadable text configuration at character {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            tokens.append((kind, m.group()))
    parser = _Parser(tokens, where)
    result = parser.section(0)
    if parser.pos != len(tokens):
        raise SourceError(f"{where}: unexpected '{tokens[parser.pos][1]}' in text configuration")
    return result


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], where: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.where = where

    def _fail(self, what: str) -> SourceError:
        near = self.tokens[self.pos][1] if self.pos < len(self.tokens) else "end of text"
        return SourceError(f"{self.where}: text configuration: {what} near '{near}'")

    def _next(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise self._fail("unexpected end")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def section(self, depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise self._fail(f"sections nested deeper than {MAX_DEPTH}")
        out: dict[str, Any] = {}
        while self.pos < len(self.tokens) and self.tokens[self.pos] != ("punct", "}"):
            kind, name = self._next()
            if kind not in ("word", "string"):
                raise self._fail("expected a name")
            name = _unquote(name) if kind == "string" else name
            if name in out:
                raise self._fail(f"'{name}' defined twice")
            _, op = self._next()
            if op == "{":
                out[name] = self.section(depth + 1)
                if self._next() != ("punct", "}"):
                    raise self._fail("expected '}'")
            elif op == "=":
                out[name] = self.value()
            else:
                raise self._fail("expected '=' or '{'")
        return out

    def value(self) -> Any:
        kind, text = self._next()
        if (kind, text) == ("punct", "["):
            items: list[Any] = []
            while True:
                if self.pos < len(self.tokens) and self.tokens[self.pos] == ("punct", "]"):
                    self.pos += 1
                    return items
                items.append(self.value())
                if self.pos < len(self.tokens) and self.tokens[self.pos] == ("punct", ","):
                    self.pos += 1
        if kind == "string":
            return _unquote(text)
        if kind == "word" and _INT.match(text):
            return int(text)
        if kind == "word" and _FLOAT.match(text):
            return float(text)
        self.pos -= 1
        raise self._fail("expected a value")


def _unquote(token: str) -> str:
    return _ESCAPE.sub(r"\1", token[1:-1])
