"""The tape medium's reader: records of one or more tape volumes → the archive bytes, in one pass.

It checks every record (magic, CRC, set UUID, volume and record numbers) and every volume (first
volume first, no foreign set, no duplicate, no gap in archive offsets) before handing bytes on,
and it ends the archive only at the end-of-archive record: a filemark, blank tape or EIO is never
taken for the end. It never parses the archive bytes and offers no random access.
"""

from __future__ import annotations

import errno
import logging
import uuid

from volpack.errors import CorruptArchive, IncompleteArchive, MediumError
from volpack.media.base import MediumReader
from volpack.media.tape.device import TapeDevice
from volpack.media.tape.records import (
    ABORTED,
    DATA,
    END_OF_ARCHIVE,
    END_OF_VOLUME,
    HEADER_SIZE,
    KIND_NAMES,
    MIN_RECORD,
    VOLUME_HEADER,
    VOLUME_INFO,
    RecordHeader,
    unpack_end,
    unpack_record,
    unpack_volume_info,
)
from volpack.media.tape.volumes import TapeURL, VolumeChanger, medium_error

log = logging.getLogger("volpack")


class TapeReader(MediumReader):
    """``MediumReader`` for ``tape:``: sequential only (``read_at`` raises MediumError)."""

    def __init__(self, parsed: TapeURL) -> None:
        self.url = parsed.url
        self._name = parsed.display
        self._changer = VolumeChanger(parsed, write=False, force=False)
        # A variable-length read needs a buffer at least as large as the record. The URL's record
        # size bounds it (st drivers refuse much larger requests); smaller records are accepted.
        self._buf = bytearray(parsed.record_size)
        self._rs = 0
        self._set: bytes | None = None
        self._volume = 0
        self._record = 0  # next record number expected in the current volume
        self._consumed = 0  # archive bytes handed out or buffered so far
        self._vol_data_records = 0
        self._pos = self._avail = 0  # window of the current data payload in _buf
        self._done = False
        self._kind = 0  # kind of the record _next_record returned last
        self.head_copy = b""
        self._dev: TapeDevice | None = self._changer.first()
        try:
            self._open_volume(1)
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int | None:
        return None

    @property
    def set_uuid(self) -> str:
        return str(uuid.UUID(bytes=self._set)) if self._set else ""

    @property
    def volumes_read(self) -> int:
        return self._volume

    def read_at(self, offset: int, length: int) -> bytes:
        raise MediumError(
            f"{self._name}: tape is sequential and has no random access (offset {offset}); read it "
            "in one pass (restore, verify) or copy the archive to a file first"
        )

    def readinto(self, buf: memoryview) -> int:
        out = memoryview(buf).cast("B")
        total, want = 0, len(out)
        while total < want:
            if self._avail == 0:
                if self._done:
                    break
                self._advance()
                continue
            n = min(self._avail, want - total)
            out[total : total + n] = self._buf[self._pos : self._pos + n]
            self._pos += n
            self._avail -= n
            total += n
        return total

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            dev.close()

    # --- internals ---------------------------------------------------------------------------

    def _where(self) -> str:
        name = self._dev.name if self._dev else self._name
        return f"{name}: volume {self._volume} record {self._record}"

    def _read(self) -> int:
        dev = self._dev
        if dev is None:
            raise MediumError(f"{self._name}: no tape drive open")
        try:
            n = dev.read_record(memoryview(self._buf))
        except OSError as exc:
            if exc.errno == errno.ENOMEM:
                raise MediumError(
                    f"{self._where()}: the tape record is larger than {len(self._buf)} bytes; "
                    "give the record size it was written with (--tape-record-size)"
                ) from exc
            raise medium_error(
                dev.name, exc, f"reading volume {self._volume} record {self._record}"
            ) from exc
        return n

    def _open_volume(self, expected: int) -> None:
        name = self._dev.name if self._dev else self._name
        self._volume, self._record = expected, 0
        n = self._read()
        if n == 0:
            raise MediumError(
                f"{name}: no volpack tape volume here (filemark or blank tape); expected "
                f"volume {expected}{self._of_set()}"
                + ("; choose the tape file with #N or rewind the tape" if expected == 1 else "")
            )
        if n < MIN_RECORD:
            raise CorruptArchive(f"{name}: first record of {n} bytes is not volpack's")
        rec = memoryview(self._buf)[:n]
        hdr = unpack_record(rec, f"{name}: first record")
        if hdr.kind != VOLUME_HEADER or hdr.record != 0:
            raise MediumError(
                f"{name}: record {hdr.record} ({KIND_NAMES[hdr.kind]}) is not the start of "
                f"a volume; expected volume {expected}{self._of_set()} at the start of a tape file"
            )
        self._check_identity(name, hdr, expected)
        self._record = 1
        info = unpack_volume_info(rec[HEADER_SIZE:], name)
        if info.record_size != n:
            raise CorruptArchive(
                f"{name}: volume header says {info.record_size}-byte records, read {n}"
            )
        if info.archive_offset != self._consumed:
            raise CorruptArchive(
                f"{name}: volume {expected} starts at archive byte {info.archive_offset}, "
                f"but the previous volume ended at {self._consumed}; a volume is missing or torn"
            )
        self._rs = n
        self._read_head_copy(rec, hdr, info.head_length, info.header_records, name)
        self._vol_data_records = 0
        log.info("tape: reading volume %d of set %s on %s", expected, self.set_uuid, name)

    def _of_set(self) -> str:
        return f" of tape set {self.set_uuid}" if self._set else ""

    def _check_identity(self, dev: str, hdr: RecordHeader, expected: int) -> None:
        if self._set is None:
            if hdr.volume != 1:
                raise MediumError(
                    f"{dev}: this is volume {hdr.volume} of tape set "
                    f"{uuid.UUID(bytes=hdr.set_uuid)}; load volume 1 first"
                )
            self._set = hdr.set_uuid
            return
        if hdr.set_uuid != self._set:
            raise MediumError(
                f"{dev}: foreign volume (volume {hdr.volume} of tape set "
                f"{uuid.UUID(bytes=hdr.set_uuid)}); load volume {expected}{self._of_set()}"
            )
        if hdr.volume < expected:
            raise MediumError(
                f"{dev}: duplicate: volume {hdr.volume}{self._of_set()} was already read; load "
                f"volume {expected}"
            )
        if hdr.volume > expected:
            raise MediumError(
                f"{dev}: out of order: this is volume {hdr.volume}{self._of_set()}; load volume "
                f"{expected} first"
            )

    def _read_head_copy(
        self, rec: memoryview, hdr: RecordHeader, length: int, records: int, dev: str
    ) -> None:
        first = rec[HEADER_SIZE + VOLUME_INFO.size : HEADER_SIZE + hdr.payload_length]
        expected_records = 1 + max(0, -(-(length - len(first)) // (self._rs - HEADER_SIZE)))
        if records != expected_records or len(first) > length:
            raise CorruptArchive(
                f"{dev}: volume header of {records} records for a {length}-byte table copy"
            )
        copy = bytearray(length) if self._volume == 1 else None
        pos = 0
        chunk: memoryview = first
        for i in range(records):
            if i:
                chunk = self._next_record(VOLUME_HEADER)
            if pos + len(chunk) > length:
                raise CorruptArchive(f"{dev}: table copy longer than the {length} bytes announced")
            if copy is not None:
                copy[pos : pos + len(chunk)] = chunk
            elif self.head_copy[pos : pos + len(chunk)] != chunk:
                raise CorruptArchive(
                    f"{dev}: volume {self._volume}'s table copy differs from volume 1's at byte "
                    f"{pos}; the volumes do not belong together"
                )
            pos += len(chunk)
        if pos != length:
            raise CorruptArchive(f"{dev}: table copy of {pos} bytes, header says {length}")
        if copy is not None:
            self.head_copy = bytes(copy)
        elif len(self.head_copy) != length:
            raise CorruptArchive(
                f"{dev}: volume {self._volume}'s table copy is {length} bytes, volume 1's "
                f"{len(self.head_copy)}"
            )

    def _next_record(self, *kinds: int) -> memoryview:
        """The payload of the next record of the current volume (one of ``kinds``)."""
        where = self._where()
        n = self._read()
        if n == 0:
            raise _VolumeEnded(where)
        if n != self._rs:
            raise CorruptArchive(f"{where}: record of {n} bytes in a {self._rs}-byte volume")
        rec = memoryview(self._buf)[:n]
        hdr = unpack_record(rec, where)
        if hdr.set_uuid != self._set or hdr.volume != self._volume or hdr.record != self._record:
            raise CorruptArchive(
                f"{where}: found record {hdr.record} of volume {hdr.volume} of set "
                f"{uuid.UUID(bytes=hdr.set_uuid)}; records are missing or out of sequence"
            )
        self._record += 1
        if hdr.kind == ABORTED:
            raise IncompleteArchive(
                f"{where}: the writer aborted this archive after {self._consumed} bytes; it is "
                "incomplete and cannot be restored"
            )
        if hdr.kind not in kinds:
            raise CorruptArchive(f"{where}: unexpected {KIND_NAMES[hdr.kind]} record")
        self._kind = hdr.kind
        return rec[HEADER_SIZE : HEADER_SIZE + hdr.payload_length]

    def _advance(self) -> None:
        """Load the next data payload into the window, switching volumes; or set ``_done``."""
        try:
            payload = self._next_record(DATA, END_OF_VOLUME, END_OF_ARCHIVE)
        except _VolumeEnded as ended:
            self._switch(f"{ended}: the volume ends without an end record")
            return
        if self._kind == DATA:
            self._vol_data_records += 1
            self._pos = HEADER_SIZE
            self._avail = len(payload)
            self._consumed += len(payload)
            return
        where = self._where()
        offset, records, number = unpack_end(payload, where)
        if offset != self._consumed or records != self._vol_data_records:
            raise CorruptArchive(
                f"{where}: end record counts {offset} bytes in {records} records, read "
                f"{self._consumed} bytes in {self._vol_data_records}"
            )
        if self._kind == END_OF_VOLUME:
            if number != self._volume + 1:
                raise CorruptArchive(f"{where}: end of volume names volume {number} as the next")
            self._switch("")
            return
        if number != self._volume:
            raise CorruptArchive(
                f"{where}: end of archive counts {number} volumes, read this many: {self._volume}"
            )
        self._done = True
        # Step over the filemark so a later reader of this drive starts at the next file.
        try:
            self._read()
        except MediumError as exc:
            log.debug("tape: after the end of the archive: %s", exc)

    def _switch(self, implied: str) -> None:
        expected = self._volume + 1
        if implied:
            if not self._changer.can_continue():
                raise IncompleteArchive(
                    f"{implied} after {self._consumed} archive bytes and no next volume is "
                    "configured; the archive is incomplete, or give volume "
                    f"{expected} with a device list or --tape-next"
                )
            log.warning("%s; continuing on volume %d", implied, expected)
        self.close()
        self._dev = self._changer.next(expected, self.set_uuid)
        self._open_volume(expected)


class _VolumeEnded(Exception):
    """A filemark or the end of data where a record of the volume was expected."""
