"""The tape medium's own record framing: volume header, data, end-of-volume and end-of-archive.

Every tape record is exactly ``record_size`` bytes: a 48-byte record header (magic, kind, set
UUID, volume number, record number, payload length, CRC-32) and a payload padded with zeros. The
archive bytes travel opaque inside DATA payloads; this module never looks into them.
See docs/media.md ("Tape") for the byte tables.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from volpack.errors import CorruptArchive

MAGIC = b"VOLPTAPE"
VERSION = 1

# magic, version, kind, volume number (1-based), record number in the volume (0-based),
# payload length, set UUID, CRC-32 over the header before the CRC and the payload.
RECORD_HEADER = struct.Struct("<8sHHIQI16sI")
HEADER_SIZE = RECORD_HEADER.size  # 48

VOLUME_HEADER = 1
DATA = 2
END_OF_VOLUME = 3
END_OF_ARCHIVE = 4
ABORTED = 5
KIND_NAMES = {
    VOLUME_HEADER: "volume header",
    DATA: "data",
    END_OF_VOLUME: "end of volume",
    END_OF_ARCHIVE: "end of archive",
    ABORTED: "aborted",
}

# First volume-header payload: record size, flags, archive offset where this volume's data
# starts, length of the table copy, creation time (ns since the epoch), volume-header records.
VOLUME_INFO = struct.Struct("<IIQQQI")
FLAG_HEAD_MARKED = 1  # the copy ends exactly where the archive writer said its tables end
# End of volume / end of archive: archive bytes up to here, data records in this volume, and the
# next volume number (END_OF_VOLUME) or the volume count (END_OF_ARCHIVE).
END_INFO = struct.Struct("<QQI")

MIN_RECORD = 4096
MAX_RECORD = 16 << 20  # Linux st's largest variable-length record on common drives
DEFAULT_RECORD = 256 << 10
MAX_HEAD_COPY = 256 << 20  # bound on the table copy a reader accepts before allocating


@dataclass(frozen=True, slots=True)
class RecordHeader:
    kind: int
    volume: int
    record: int
    payload_length: int
    set_uuid: bytes


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    record_size: int
    flags: int
    archive_offset: int
    head_length: int
    created_ns: int
    header_records: int


def check_record_size(record_size: int) -> None:
    from volpack.errors import UsageError

    if not MIN_RECORD <= record_size <= MAX_RECORD or record_size % 512:
        raise UsageError(
            f"tape record size {record_size}: must be a multiple of 512 between "
            f"{MIN_RECORD} and {MAX_RECORD}; the default is {DEFAULT_RECORD}"
        )


def pack_record(
    buf: bytearray, kind: int, set_uuid: bytes, volume: int, record: int, payload_length: int
) -> None:
    """Fill the header of ``buf`` (whose payload is already in place) and zero the padding."""
    end = HEADER_SIZE + payload_length
    if end < len(buf):
        buf[end:] = bytes(len(buf) - end)
    RECORD_HEADER.pack_into(
        buf, 0, MAGIC, VERSION, kind, volume, record, payload_length, set_uuid, 0
    )
    crc = zlib.crc32(memoryview(buf)[: HEADER_SIZE - 4])
    crc = zlib.crc32(memoryview(buf)[HEADER_SIZE:end], crc)
    struct.pack_into("<I", buf, HEADER_SIZE - 4, crc)


def unpack_record(rec: memoryview, where: str) -> RecordHeader:
    """Check magic, version, bounds and CRC of one record read from tape."""
    if len(rec) < HEADER_SIZE:
        raise CorruptArchive(f"{where}: tape record of {len(rec)} bytes is shorter than a header")
    magic, version, kind, volume, record, length, set_uuid, crc = RECORD_HEADER.unpack_from(rec)
    if magic != MAGIC:
        raise CorruptArchive(f"{where}: not a volpack tape record (magic {magic!r})")
    if version != VERSION:
        from volpack.errors import UnsupportedArchive

        raise UnsupportedArchive(
            f"{where}: tape record version {version}, this volpack reads version {VERSION}; "
            "upgrade volpack"
        )
    if kind not in KIND_NAMES:
        raise CorruptArchive(f"{where}: unknown tape record kind {kind}")
    if HEADER_SIZE + length > len(rec):
        raise CorruptArchive(f"{where}: payload length {length} exceeds the {len(rec)}-byte record")
    actual = zlib.crc32(rec[: HEADER_SIZE - 4])
    actual = zlib.crc32(rec[HEADER_SIZE : HEADER_SIZE + length], actual)
    if actual != crc:
        raise CorruptArchive(f"{where}: record CRC-32 {actual:08x}, header says {crc:08x}")
    return RecordHeader(kind, volume, record, length, set_uuid)


def unpack_volume_info(payload: memoryview, where: str) -> VolumeInfo:
    if len(payload) < VOLUME_INFO.size:
        raise CorruptArchive(f"{where}: volume header payload of {len(payload)} bytes is too short")
    info = VolumeInfo(*VOLUME_INFO.unpack_from(payload))
    if info.head_length > MAX_HEAD_COPY:
        raise CorruptArchive(
            f"{where}: table copy of {info.head_length} bytes exceeds the {MAX_HEAD_COPY} limit"
        )
    return info


def unpack_end(payload: memoryview, where: str) -> tuple[int, int, int]:
    if len(payload) < END_INFO.size:
        raise CorruptArchive(f"{where}: end record payload of {len(payload)} bytes is too short")
    return END_INFO.unpack_from(payload)
