"""The ``tape:`` medium (and ``tape+emu:``, the emulated drive): archives as records on tape.

Entry point chosen by URL scheme: ``open_writer`` / ``open_reader`` build the writer and reader in
writer.py / reader.py, framed by records.py, over the device layer in device.py (real st drive) or
emulator.py, with URLs and volume changes in volumes.py. Tape is sequential: readers have no random
access. Moves opaque bytes only.
"""

from __future__ import annotations

from volpack.media.tape.reader import TapeReader
from volpack.media.tape.volumes import TapeURL, parse_tape_url, tape_url
from volpack.media.tape.writer import TapeWriter

__all__ = [
    "TapeReader",
    "TapeURL",
    "TapeWriter",
    "canonical",
    "holds_one_archive",
    "open_reader",
    "open_writer",
    "tape_url",
]


def canonical(url: str) -> str:
    """The URL with its scheme in lower case. Its options stay: reading needs the record size.
    Without ``#N`` it names wherever the tape stands, not one tape file."""
    parse_tape_url(url)  # refuses what is not a usable tape URL
    scheme, _, rest = url.partition(":")
    return f"{scheme.lower()}:{rest}"


def holds_one_archive(url: str) -> bool:
    """Only ``#N`` names one tape file; without it the URL is wherever the tape stands."""
    return parse_tape_url(url).file_number is not None


def open_writer(url: str, *, force: bool = False) -> TapeWriter:
    """A writer at the URL's position (``#N``: file N; otherwise where the tape stands).

    Without ``force`` it refuses to write where the drive knows data follows (the emulator
    knows; real drives cannot tell without reading, so writing there overwrites).
    """
    return TapeWriter(parse_tape_url(url), force=force)


def open_reader(url: str) -> TapeReader:
    """A sequential reader of the archive starting at the URL's position."""
    return TapeReader(parse_tape_url(url))
