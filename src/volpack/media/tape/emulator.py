"""An emulated tape drive in a directory, behind the same ``TapeDevice`` seam as a real st drive.

It models records, filemarks, the early-warning zone (the st driver's alternating ENOSPC), the hard
end of the medium, write protection, injected read errors (EIO) and loading/unloading cartridges;
all state lives on disk so a tape can be changed by another process (``--tape-next``). It is the
test double for drives this machine does not have; it knows nothing of archives or volume sets,
and prints nothing (its command line, ``python -m volpack.media.tape``, is ``__main__.py``).

Layout: a *drive* directory holds ``drive.json`` (loaded cartridge, head position) and a lock; a
*cartridge* directory holds ``cartridge.json`` (capacity, early warning, injected errors), ``data``
(record bytes back to back) and ``index`` (one 16-byte entry per record or filemark).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
from dataclasses import dataclass

from volpack.media.tape.device import TapeStatus

_ENTRY = struct.Struct("<IIQ")  # kind, record length, offset in ``data``
_RECORD = 1
_FILEMARK = 2
_MAX_ENTRIES = 1 << 28  # bound on the index before loading it (4 GiB of index: never legitimate)


@dataclass(frozen=True, slots=True)
class CartridgeSpec:
    capacity: int  # bytes of record data the medium holds before the hard end
    early_warning: int  # size of the early-warning zone before the hard end
    write_protected: bool
    read_errors: tuple[tuple[int, int], ...]  # (file number, record number), both 0-based


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create_cartridge(
    path: str, *, capacity: int, early_warning: int = 0, write_protected: bool = False
) -> str:
    """A blank cartridge directory; returns its absolute path."""
    if capacity <= 0 or early_warning < 0 or early_warning >= capacity:
        raise ValueError(f"cartridge {path}: need 0 <= early_warning < capacity, capacity > 0")
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    for name in ("data", "index"):
        open(os.path.join(path, name), "wb").close()
    spec = {
        "capacity": capacity,
        "early_warning": early_warning,
        "write_protected": write_protected,
        "read_errors": [],
    }
    _write_json(os.path.join(path, "cartridge.json"), spec)
    return path


def cartridge_spec(path: str) -> CartridgeSpec:
    raw = _read_json(os.path.join(path, "cartridge.json"))
    return CartridgeSpec(
        capacity=int(raw["capacity"]),
        early_warning=int(raw["early_warning"]),
        write_protected=bool(raw.get("write_protected", False)),
        read_errors=tuple((int(f), int(r)) for f, r in raw.get("read_errors", [])),
    )


def inject_read_error(cartridge: str, file_number: int, record_number: int) -> None:
    """Make reading record ``record_number`` of file ``file_number`` (0-based) fail with EIO."""
    path = os.path.join(cartridge, "cartridge.json")
    raw = _read_json(path)
    raw.setdefault("read_errors", []).append([file_number, record_number])
    _write_json(path, raw)


def _drive_state(drive: str) -> dict:
    path = os.path.join(drive, "drive.json")
    if not os.path.exists(path):
        return {"cartridge": None, "position": 0}
    return _read_json(path)


def load(drive: str, cartridge: str) -> None:
    """Put ``cartridge`` in ``drive`` (creating the drive directory); a loaded tape is at BOT."""
    os.makedirs(drive, exist_ok=True)
    if not os.path.exists(os.path.join(cartridge, "cartridge.json")):
        raise FileNotFoundError(errno.ENOENT, "not a cartridge directory", cartridge)
    _write_json(
        os.path.join(drive, "drive.json"), {"cartridge": os.path.abspath(cartridge), "position": 0}
    )


def unload(drive: str) -> None:
    os.makedirs(drive, exist_ok=True)
    _write_json(os.path.join(drive, "drive.json"), {"cartridge": None, "position": 0})


def loaded(drive: str) -> str | None:
    return _drive_state(drive).get("cartridge")


def cartridge_files(cartridge: str) -> list[list[int]]:
    """Record lengths per tape file, for tests and inspection (a trailing unterminated file too)."""
    files: list[list[int]] = [[]]
    with open(os.path.join(cartridge, "index"), "rb") as f:
        raw = f.read()
    for kind, length, _offset in _ENTRY.iter_unpack(raw):
        if kind == _FILEMARK:
            files.append([])
        else:
            files[-1].append(length)
    if not files[-1]:
        files.pop()
    return files


class EmulatedTape:
    """A ``TapeDevice`` over a drive directory; exclusive like a real drive (EBUSY when in use)."""

    def __init__(self, drive: str, *, write: bool) -> None:
        self.name = drive
        if not os.path.isdir(drive):
            raise FileNotFoundError(errno.ENOENT, "no emulated tape drive here", drive)
        self._lock = os.open(os.path.join(drive, "drive.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise OSError(errno.EBUSY, "tape drive is in use by another process", drive) from None
        self._data = self._index = -1
        try:
            self._open_cartridge(write)
        except BaseException:
            self._release()
            raise

    def _open_cartridge(self, write: bool) -> None:
        state = _drive_state(self.name)
        cart = state.get("cartridge")
        if not cart:
            raise OSError(errno.ENOMEDIUM, "no cartridge loaded", self.name)
        self.cartridge = cart
        self._spec = cartridge_spec(cart)
        if write and self._spec.write_protected:
            raise OSError(errno.EACCES, "cartridge is write-protected", cart)
        mode = os.O_RDWR if write else os.O_RDONLY
        self._data = os.open(os.path.join(cart, "data"), mode)
        self._index = os.open(os.path.join(cart, "index"), mode)
        raw = os.pread(self._index, _MAX_ENTRIES * _ENTRY.size, 0)
        if len(raw) % _ENTRY.size:
            raise OSError(errno.EIO, f"cartridge index has a torn entry ({len(raw)} bytes)", cart)
        self._entries = [tuple(e) for e in _ENTRY.iter_unpack(raw)]
        self._pos = min(max(int(state.get("position", 0)), 0), len(self._entries))
        self._file, self._rec = self._locate(self._pos)
        self._ew_phase = 0  # 0: before early warning; 1: next write fails; 2: next write allowed
        self._eod_reported = False

    def _locate(self, pos: int) -> tuple[int, int]:
        file = rec = 0
        for kind, _length, _offset in self._entries[:pos]:
            if kind == _FILEMARK:
                file, rec = file + 1, 0
            else:
                rec += 1
        return file, rec

    def _data_end(self) -> int:
        if not self._entries:
            return 0
        kind, length, offset = self._entries[-1]
        return offset + (length if kind == _RECORD else 0)

    def _truncate_here(self) -> None:
        # Writing in the middle of a tape makes everything after the head unreadable.
        if self._pos < len(self._entries):
            end = self._entries[self._pos][2]
            del self._entries[self._pos :]
            os.ftruncate(self._index, self._pos * _ENTRY.size)
            os.ftruncate(self._data, end)
            self._ew_phase = 0

    def _append(self, kind: int, payload: bytes | bytearray | memoryview) -> None:
        offset = self._data_end()
        if kind == _RECORD:
            done = os.pwrite(self._data, payload, offset)
            if done != len(payload):
                raise OSError(errno.EIO, "short write to the cartridge data file", self.cartridge)
        entry = (kind, len(payload), offset)
        os.pwrite(self._index, _ENTRY.pack(*entry), self._pos * _ENTRY.size)
        self._entries.append(entry)
        self._pos += 1
        self._eod_reported = False

    def write_record(self, record: bytes | bytearray | memoryview) -> None:
        if self._spec.write_protected:
            raise OSError(errno.EACCES, "cartridge is write-protected", self.cartridge)
        self._truncate_here()
        used = self._data_end()
        spec = self._spec
        if used + len(record) > spec.capacity:
            raise OSError(errno.ENOSPC, "physical end of medium", self.name)
        if used + len(record) > spec.capacity - spec.early_warning:
            # Linux st: the write that enters early warning succeeds, the next one fails with
            # ENOSPC (nothing written), then writes alternately succeed and fail until the end.
            if self._ew_phase == 1:
                self._ew_phase = 2
                raise OSError(errno.ENOSPC, "early warning: end of medium is near", self.name)
            self._ew_phase = 1
        self._append(_RECORD, record)
        self._rec += 1

    def write_filemark(self, count: int = 1) -> None:
        self._truncate_here()
        for _ in range(count):
            self._append(_FILEMARK, b"")
            self._file, self._rec = self._file + 1, 0

    def read_record(self, buf: memoryview) -> int:
        if self._pos >= len(self._entries):
            if not self._eod_reported:
                self._eod_reported = True
                return 0
            raise OSError(errno.EIO, "blank check: no data after the end of recorded data")
        kind, length, offset = self._entries[self._pos]
        here = (self._file, self._rec)
        self._pos += 1
        if kind == _FILEMARK:
            self._file, self._rec = self._file + 1, 0
            return 0
        self._rec += 1
        if here in self._spec.read_errors:
            raise OSError(errno.EIO, f"read error at file {here[0]} record {here[1]}")
        if length > len(buf):
            raise OSError(errno.ENOMEM, f"record of {length} bytes is larger than the buffer")
        got = os.preadv(self._data, [buf[:length]], offset)
        if got != length:
            raise OSError(errno.EIO, f"cartridge data ends inside a record at {offset}")
        return length

    def rewind(self) -> None:
        self._pos, self._file, self._rec = 0, 0, 0
        self._ew_phase = 0
        self._eod_reported = False

    def forward_files(self, count: int) -> None:
        while count > 0:
            if self._pos >= len(self._entries):
                raise OSError(errno.EIO, "end of recorded data while spacing over filemarks")
            kind = self._entries[self._pos][0]
            self._pos += 1
            if kind == _FILEMARK:
                self._file, self._rec = self._file + 1, 0
                count -= 1
            else:
                self._rec += 1

    def status(self) -> TapeStatus:
        spec = self._spec
        return TapeStatus(
            file_number=self._file,
            record_number=self._rec,
            at_bot=self._pos == 0,
            early_warning=self._data_end() > spec.capacity - spec.early_warning,
            at_eod=self._pos >= len(self._entries),
            write_protected=spec.write_protected,
        )

    def close(self) -> None:
        if self._lock < 0:
            return
        if self._data >= 0:
            state = {"cartridge": self.cartridge, "position": self._pos}
            _write_json(os.path.join(self.name, "drive.json"), state)
        self._release()

    def _release(self) -> None:
        for fd in (self._data, self._index):
            if fd >= 0:
                os.close(fd)
        self._data = self._index = -1
        if self._lock >= 0:
            os.close(self._lock)  # closing the descriptor drops the flock
            self._lock = -1
