"""The tape medium's writer: archive bytes → fixed-size records on one or more tape volumes.

Each volume is one tape file: volume-header records (set UUID, volume number, record size, a copy
of the archive's head = header and tables), data records, then an end-of-volume or end-of-archive
record and a filemark. On ENOSPC (early warning) or when ``volume-size`` is used up it closes the
volume and continues on the next. It never parses archive bytes and never seeks within a file.
"""

from __future__ import annotations

import errno
import logging
import time
import uuid

from volpack.errors import MediumError, MediumFull
from volpack.media.base import Buffer, MediumWriter
from volpack.media.tape.device import TapeDevice
from volpack.media.tape.records import (
    ABORTED,
    DATA,
    END_INFO,
    END_OF_ARCHIVE,
    END_OF_VOLUME,
    FLAG_HEAD_MARKED,
    HEADER_SIZE,
    VOLUME_HEADER,
    VOLUME_INFO,
    pack_record,
)
from volpack.media.tape.volumes import TapeURL, VolumeChanger, medium_error

log = logging.getLogger("volpack")

# Without a mark from the archive writer, the table copy is this many leading archive bytes (a
# quarter of --volume-size at most), enough for the tables of all but very fragmented volumes.
UNMARKED_HEAD_COPY = 1 << 20
# Volume 1 waits for the mark while the archive writer is still writing its head; beyond this many
# bytes it starts with the unmarked copy (memory stays bounded if no mark ever comes).
MAX_PENDING = 32 << 20


class TapeWriter(MediumWriter):
    """``MediumWriter`` for ``tape:``; commit writes the end-of-archive record and a filemark."""

    def __init__(self, parsed: TapeURL, *, force: bool) -> None:
        self.url = parsed.url
        self._name = parsed.display
        self._parsed = parsed
        self._set = uuid.uuid4()
        self._rs = parsed.record_size
        self._payload_max = self._rs - HEADER_SIZE
        self._rec = bytearray(self._rs)  # the data record being filled
        self._ctl = bytearray(self._rs)  # control records, so a pending data record survives
        self._fill = 0
        self._pending: bytearray | None = bytearray()  # archive bytes before volume 1 starts
        self._head = b""
        self._head_marked = False
        self._written = 0  # archive bytes in data records on tape
        self._volume = 0
        self._vol_records = 0
        self._vol_data_records = 0
        self._state = "open"
        self._unmarked_copy = UNMARKED_HEAD_COPY
        if parsed.volume_size is not None:
            self._unmarked_copy = min(UNMARKED_HEAD_COPY, parsed.volume_size // 4)
        self._changer = VolumeChanger(parsed, write=True, force=force)
        self._dev: TapeDevice | None = self._changer.first()
        # The tape file this archive starts at (0-based), so that it can be found again without
        # knowing where the tape stood; None when the drive cannot tell.
        try:
            self._first_file = self._dev.status().file_number
        except OSError:
            self._first_file = None

    @property
    def set_uuid(self) -> str:
        return str(self._set)

    @property
    def volumes(self) -> int:
        return self._volume

    # --- MediumWriter ------------------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        self._check_open()
        mv = memoryview(data).cast("B")
        try:
            if self._pending is not None:
                self._pending += mv
                if len(self._pending) >= MAX_PENDING:
                    self._start(self._unmarked_copy)
                return
            self._feed(mv)
        except BaseException:
            self._state = "failed"
            raise

    @property
    def location(self) -> str:
        """``url`` naming the tape file written (``#N``, 1-based), when the drive tells."""
        if self._first_file is None:
            return self.url
        return f"{self.url.partition('#')[0]}#{self._first_file + 1}"

    def mark_head_end(self) -> None:
        """The bytes written so far are the archive's head (header and tables).

        Optional hint from the archive writer: each volume header then carries exactly this copy.
        Without it the copy is the first MiB of the archive (or all of a smaller one).
        """
        self._check_open()
        if self._pending is not None:
            self._head_marked = True
            self._start(len(self._pending))

    def commit(self) -> None:
        self._check_open()
        try:
            if self._pending is not None:
                self._start(min(len(self._pending), self._unmarked_copy))
            if self._fill:
                self._emit(DATA, self._fill)
                self._fill = 0
            total = self._written
            self._emit(END_OF_ARCHIVE, END_INFO.size)
            self._filemark()
            self._close_device()
        except BaseException:
            self._state = "failed"
            raise
        self._state = "committed"
        log.info(
            "tape: archive of %d bytes on %d volume(s) of set %s", total, self._volume, self._set
        )

    def abort(self) -> None:
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        dev = self._dev
        if dev is None:
            return
        try:
            # Before volume 1 started nothing reached the tape, so nothing needs marking.
            if self._volume:
                # A tape cannot take bytes back: mark the file so readers refuse it by name.
                END_INFO.pack_into(self._ctl, HEADER_SIZE, self._written, self._vol_data_records, 0)
                pack_record(
                    self._ctl,
                    ABORTED,
                    self._set.bytes,
                    self._volume,
                    self._vol_records,
                    END_INFO.size,
                )
                dev.write_record(self._ctl)
                dev.write_filemark(1)
        except OSError as exc:
            log.warning("tape: %s: could not mark the aborted archive: %s", dev.name, exc)
        finally:
            self._close_device()

    # --- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise MediumError(f"{self._name}: tape writer is {self._state}; start a new backup")

    def _start(self, head_length: int) -> None:
        pending = self._pending if self._pending is not None else bytearray()
        self._head = bytes(pending[:head_length])
        self._pending = None
        self._new_volume()
        self._feed(memoryview(pending))

    def _feed(self, mv: memoryview) -> None:
        pos, end = 0, len(mv)
        room = self._payload_max
        while pos < end:
            n = min(room - self._fill, end - pos)
            start = HEADER_SIZE + self._fill
            self._rec[start : start + n] = mv[pos : pos + n]
            self._fill += n
            pos += n
            if self._fill == room:
                self._emit(DATA, room)
                self._fill = 0

    def _budget_left(self, kind: int) -> bool:
        size = self._parsed.volume_size
        if size is None:
            return True
        # A data record must leave room for the end-of-volume record after it.
        need = 2 if kind == DATA else 1
        return (self._vol_records + need) * self._rs <= size

    def _emit(self, kind: int, length: int) -> None:
        """Put the record in ``_rec`` on tape, moving to the next volume when this one is full."""
        while True:
            if not self._budget_left(kind):
                self._next_volume("the volume size is used up")
            if kind == END_OF_ARCHIVE:
                # The volume count is only known once the record has found its volume.
                END_INFO.pack_into(
                    self._rec, HEADER_SIZE, self._written, self._vol_data_records, self._volume
                )
            pack_record(self._rec, kind, self._set.bytes, self._volume, self._vol_records, length)
            try:
                self._device().write_record(self._rec)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise medium_error(self._device().name, exc, "writing a record") from exc
                if self._vol_data_records == 0:
                    raise MediumFull(
                        f"{self._name}: volume {self._volume} is full before its first data "
                        "record; use a larger tape or a smaller record size"
                    ) from exc
                self._next_volume("the drive signalled the end of the medium")
                continue
            self._vol_records += 1
            if kind == DATA:
                self._vol_data_records += 1
                self._written += length
            return

    def _device(self) -> TapeDevice:
        if self._dev is None:
            raise MediumError(f"{self._name}: no tape drive open")
        return self._dev

    def _control(self, kind: int, length: int) -> None:
        pack_record(self._ctl, kind, self._set.bytes, self._volume, self._vol_records, length)
        self._device().write_record(self._ctl)
        self._vol_records += 1

    def _filemark(self, *, past_end_ok: bool = False) -> None:
        dev = self._device()
        try:
            dev.write_filemark(1)
        except OSError as exc:
            if past_end_ok and exc.errno == errno.ENOSPC:
                log.warning(
                    "tape: %s: no room for the filemark after volume %d", dev.name, self._volume
                )
                return
            raise medium_error(dev.name, exc, "writing a filemark") from exc

    def _next_volume(self, reason: str) -> None:
        dev = self._device()
        log.info("tape: closing volume %d on %s: %s", self._volume, dev.name, reason)
        END_INFO.pack_into(
            self._ctl, HEADER_SIZE, self._written, self._vol_data_records, self._volume + 1
        )
        try:
            self._control(END_OF_VOLUME, END_INFO.size)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise medium_error(dev.name, exc, "writing the end-of-volume record") from exc
            # Past the hard end: readers accept the volume by checking that the next one
            # starts at the archive offset where this one stopped.
            log.warning("tape: %s: no room for the end-of-volume record", dev.name)
        self._filemark(past_end_ok=True)
        self._close_device()
        self._dev = self._changer.next(self._volume + 1, str(self._set))
        self._new_volume()

    def _new_volume(self) -> None:
        if self._dev is None:
            raise MediumError(f"{self._name}: no tape drive open")
        self._volume += 1
        self._vol_records = 0
        self._vol_data_records = 0
        head = memoryview(self._head)
        first = self._payload_max - VOLUME_INFO.size
        count = 1 + max(0, -(-(len(head) - first) // self._payload_max))
        flags = FLAG_HEAD_MARKED if self._head_marked else 0
        if (
            self._parsed.volume_size is not None
            and (count + 2) * self._rs > self._parsed.volume_size
        ):
            raise MediumFull(
                f"{self._name}: a volume of {self._parsed.volume_size} bytes cannot hold the "
                f"{count}-record volume header, a data record and the end record; "
                "give a larger --volume-size"
            )
        VOLUME_INFO.pack_into(
            self._ctl, HEADER_SIZE, self._rs, flags, self._written, len(head), time.time_ns(), count
        )
        chunk = head[:first]
        base = HEADER_SIZE + VOLUME_INFO.size
        self._ctl[base : base + len(chunk)] = chunk
        try:
            self._control(VOLUME_HEADER, VOLUME_INFO.size + len(chunk))
            pos = len(chunk)
            while pos < len(head):
                chunk = head[pos : pos + self._payload_max]
                self._ctl[HEADER_SIZE : HEADER_SIZE + len(chunk)] = chunk
                self._control(VOLUME_HEADER, len(chunk))
                pos += len(chunk)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise MediumFull(
                    f"{self._name}: volume {self._volume} is full inside its volume header; "
                    "use a larger tape"
                ) from exc
            raise medium_error(self._dev.name, exc, "writing the volume header") from exc

    def _close_device(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                dev.close()
            except OSError as exc:
                if self._state not in ("aborted", "failed"):
                    raise medium_error(dev.name, exc, "closing it") from exc
