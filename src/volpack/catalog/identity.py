"""Which archive a medium location holds now: the archive UUID in its header, read from the medium.

The catalog says where an archive was written; ``--force`` or another tool may have written
another archive there since. Prune asks this before each deletion. It reads one header (a ranged
read on S3) and never writes; it does not judge the rest of the archive.
"""

from __future__ import annotations

from volpack import media
from volpack.errors import IncompleteArchive
from volpack.format import records as R


def archive_at(url: str) -> str:
    """The UUID of the archive at ``url``, from its checksummed header (see ``header_at``)."""
    return header_at(url).uuid


def header_at(url: str) -> R.Header:
    """The checksummed header of the archive at ``url`` (its uuid, chain id and sequence).

    NotAnArchive (or another FormatError) when the bytes there are not a readable volpack
    header; MediumNotFound when nothing is there; MediumError when the medium cannot be read.
    """
    reader = media.open_reader(url)
    try:
        size = reader.size
        if size is None:
            data = _read_stream(reader, R.HEADER_SIZE)
        else:
            data = reader.read_at(0, min(size, R.HEADER_SIZE))
    finally:
        reader.close()
    where = f"{url} at offset 0"
    if len(data) < R.HEADER_SIZE:
        R.Header.decode(data, where)  # "not an archive" wins over "too short"
        raise IncompleteArchive(
            f"{url}: only {len(data)} of the {R.HEADER_SIZE} header bytes; not a whole archive"
        )
    return R.Header.decode(data, where)


def _read_stream(reader: media.MediumReader, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        step = reader.readinto(view[got:])
        if step == 0:
            break
        got += step
    return bytes(buf[:got])
