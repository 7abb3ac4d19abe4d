"""Pipe medium: ``-`` is stdout when writing and stdin when reading.

A stream cannot be taken back: an aborted backup leaves a stream without a trailer, which every
reader refuses as incomplete. Random access is not possible on a pipe.
"""

from __future__ import annotations

import contextlib
import os

from volpack.errors import MediumError
from volpack.media.base import Buffer, MediumReader, MediumWriter


class PipeWriter(MediumWriter):
    url = "-"

    def __init__(self) -> None:
        self.fd = 1
        if os.isatty(self.fd):
            raise MediumError(
                "-: refusing to write an archive to a terminal; redirect stdout to "
                "a file or pipe it to another command"
            )

    def write(self, data: Buffer) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except BrokenPipeError:
            raise MediumError(
                "-: the reader of stdout went away (broken pipe); the archive is incomplete"
            ) from None
        except OSError as exc:
            raise MediumError(f"-: {exc.strerror} while writing the archive to stdout") from None

    def commit(self) -> None:
        # Pipes and sockets cannot fsync; the reader sees the trailer, which is enough.
        with contextlib.suppress(OSError):
            os.fsync(self.fd)

    def abort(self) -> None:
        pass


class PipeReader(MediumReader):
    url = "-"

    def __init__(self) -> None:
        self.fd = 0
        if os.isatty(self.fd):
            raise MediumError("-: stdin is a terminal; pipe an archive in (cat x.vpk | volpack …)")

    @property
    def size(self) -> int | None:
        return None

    def readinto(self, buf: memoryview) -> int:
        try:
            return os.readv(self.fd, [buf])
        except OSError as exc:
            raise MediumError(f"-: {exc.strerror} while reading the archive from stdin") from None

    def read_at(self, offset: int, length: int) -> bytes:
        raise MediumError("-: stdin is a stream; this needs random access (a file or s3:// URL)")

    def close(self) -> None:
        pass


def canonical(url: str) -> str:
    return "-"


def open_writer(url: str, *, force: bool = False) -> PipeWriter:
    return PipeWriter()


def open_reader(url: str) -> PipeReader:
    return PipeReader()
