"""The Medium seam: opaque bytes out (in order; a new file may leave room at the start that is
filled last) and in (sequential or ranged).

Media never parse archive bytes. A writer publishes the archive only on ``commit``; ``abort`` leaves
nothing visible under the final name. What a medium can do beyond this is declared with its scheme
(``volpack.media.Capabilities``), not probed. Failures of the medium are MediumError subclasses; a
medium with its own framing (tape records) raises CorruptArchive / IncompleteArchive for damage.
"""

from __future__ import annotations

from typing import Protocol

Buffer = bytes | bytearray | memoryview


class MediumWriter(Protocol):
    url: str

    def write(self, data: Buffer) -> None:
        """Append all of ``data``."""
        ...

    @property
    def location(self) -> str:
        """Where the committed archive is read back, as the catalog records it: ``url`` itself,
        except that a tape writer names the tape file it wrote (``#N``) when the drive tells."""
        return self.url

    def mark_head_end(self) -> None:
        """Called once, after the archive's header and tables are written. Media that copy them
        into every volume (tape) note where they end; the others inherit this no-op."""
        return None

    def leave_room(self, length: int) -> bool:
        """Called before anything is written: start writing ``length`` bytes in, and let
        :meth:`write_room` fill them last (a backup that learns its tables only while it writes
        its frames). True where the medium can (a new regular file, an S3 upload); the others
        write in order only and inherit this answer, False."""
        return False

    def write_room(self, data: Buffer) -> None:
        """Write the ``length`` bytes of room left at the start (after every other byte, before
        ``commit``). Only after :meth:`leave_room` said True."""
        raise TypeError(f"{type(self).__name__} leaves no room")

    def rewind(self) -> None:
        """Drop everything written so far and start again at offset 0 (room left, and the
        writes after it). Only after :meth:`leave_room` said True."""
        raise TypeError(f"{type(self).__name__} leaves no room")

    def commit(self) -> None:
        """Make the archive durable and visible under its final name."""
        ...

    def abort(self) -> None:
        """Drop everything written; nothing partial stays visible. Safe to call after a failure."""
        ...


class MediumReader(Protocol):
    url: str

    @property
    def size(self) -> int | None:
        """Archive length in bytes when known (files, objects), ``None`` for streams."""
        ...

    def readinto(self, buf: memoryview) -> int:
        """Sequential read; returns 0 only at the end of the archive."""
        ...

    def read_at(self, offset: int, length: int) -> bytes:
        """Random access (files, ranged GETs); MediumError when the medium is a stream."""
        ...

    def close(self) -> None: ...
