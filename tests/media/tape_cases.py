"""Tape media for the contract suite (tests/media/conftest.py CASES): the emulated drive with one
large cartridge, and with small cartridges so that every contract archive spans several volumes.
"""

from __future__ import annotations

import os
import sys

from volpack.media import open_reader, open_writer
from volpack.media.tape import emulator as te
from volpack.media.tape import tape_url


class TapeCase:
    """``tape+emu:`` — sequential, cannot take bytes back, names are drives (one per archive).

    Same interface as conftest.MediumCase (not imported: conftest imports this module).
    """

    name = "tape"
    random_access = False
    atomic = False
    addressable = True  # a drive that does not exist is MediumNotFound
    capacity = 256 << 20
    cartridges = 1
    record_size: int | None = None

    def __init__(self, tmp_path) -> None:
        self.dir = tmp_path / f"media-{self.name}"
        self.dir.mkdir()
        self.carts: dict[str, list[str]] = {}

    def _drive(self, url: str) -> str:
        return url.partition(":")[2].partition("?")[0].partition("#")[0]

    def url(self, name: str) -> str:
        drive = str(self.dir / name)
        carts = [str(self.dir / f"{name}.c{i}") for i in range(self.cartridges)]
        nxt = None
        if self.cartridges > 1:
            nxt = f"{sys.executable} -m volpack.media.tape next {drive} " + " ".join(carts)
        return tape_url(f"tape+emu:{drive}", record_size=self.record_size, next_command=nxt)

    def _insert_blank(self, url: str) -> None:
        drive = self._drive(url)
        name = os.path.basename(drive)
        carts = [
            te.create_cartridge(
                str(self.dir / f"{name}.c{i}"),
                capacity=self.capacity,
                early_warning=self.capacity // 8,
            )
            for i in range(self.cartridges)
        ]
        self.carts[drive] = carts
        te.load(drive, carts[0])

    def write(self, url: str, chunks: list[bytes], *, force: bool = False) -> None:
        self._insert_blank(url)
        writer = open_writer(url, force=force)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def write_and_abort(self, url: str, chunks: list[bytes]) -> None:
        self._insert_blank(url)
        writer = open_writer(url)
        for chunk in chunks:
            writer.write(chunk)
        writer.abort()
        writer.abort()

    def read_stream(self, url: str, bufsize: int = 100_003) -> bytes:
        drive = self._drive(url)
        te.load(drive, self.carts[drive][0])  # rewound, first volume in the drive
        reader = open_reader(url)
        try:
            out = bytearray()
            view = memoryview(bytearray(bufsize))
            while n := reader.readinto(view):
                out += view[:n]
            return bytes(out)
        finally:
            reader.close()

    def stored(self, url: str) -> list[str]:
        return sorted(os.listdir(self.dir))


class SpanningTapeCase(TapeCase):
    """Small cartridges (3 MiB, 384 KiB early warning) and 64 KiB records: 11 MiB spans 6."""

    name = "tape-spanning"
    capacity = 3 << 20
    cartridges = 8
    record_size = 64 << 10


def tape_case(request, tmp_path) -> TapeCase:
    return TapeCase(tmp_path)


def spanning_tape_case(request, tmp_path) -> TapeCase:
    return SpanningTapeCase(tmp_path)
