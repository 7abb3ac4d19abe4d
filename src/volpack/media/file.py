"""File medium: archives as files (a path or ``file:`` URL).

A new archive is written to a hidden temporary name in the target directory, fsynced, then
renamed, so a reader never sees a partial archive under the final name; it may leave room at
its start for a head written last (``leave_room``). An existing archive is
only replaced with ``force`` (keeping its mode and owner); a new one is made 0600 unless a mode is
given. Character devices (``/dev/null``) and FIFOs are written in place; block devices are
refused (renaming over a device node would replace the node).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from urllib.parse import unquote, urlsplit

from volpack.atomic import create_temp, discard, publish
from volpack.errors import MediumError, MediumFull, MediumNotFound, UsageError
from volpack.media.base import Buffer, MediumReader, MediumWriter
from volpack.writeback import for_fd


def path_of(url: str) -> str:
    """The path a path or ``file:`` URL names: ``file:///a%20b.vpk`` is ``/a b.vpk``,
    ``file://localhost/x`` is ``/x``; a plain path is taken as it is (``%20`` stays)."""
    if url[:5].lower() != "file:":
        return url
    parsed = urlsplit(url)  # not urlparse: that would cut ';…' off the last path segment
    if parsed.netloc not in ("", "localhost"):
        raise MediumError(f"{url}: file URLs on other hosts are not supported; use a local path")
    if parsed.query or parsed.fragment or url.endswith(("?", "#")):
        raise UsageError(
            f"{url}: a file URL has no '?' query or '#' fragment; write '?' as %3F and '#' as %23, "
            "or give a plain path"
        )
    path = unquote(parsed.path)
    if not path:
        raise UsageError(f"{url}: the file URL names no file; write file:///path/to/archive.vpk")
    if "\0" in path:
        raise UsageError(
            f"{url}: %00 decodes to a NUL byte, which no file name can hold; remove it from the URL"
        )
    return path


def canonical(url: str) -> str:
    """The catalog's spelling of a file location: the absolute, normalised path (symbolic links
    are not resolved; the same file reached through a link is another location)."""
    return os.path.abspath(path_of(url))


def _os_error(path: str, exc: OSError, doing: str) -> MediumError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MediumFull(
            f"{path}: no space left while {doing}; free space or choose another medium"
        )
    if exc.errno == errno.ENOENT:
        return MediumNotFound(f"{path}: not found while {doing}; check the path")
    return MediumError(f"{path}: {exc.strerror} while {doing}")


class FileWriter(MediumWriter):
    def __init__(self, url: str, *, force: bool, mode: int | None = None) -> None:
        self.url = url
        self.path = path_of(url)
        self._tmp: str | None = None
        self._mode = mode
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise _os_error(self.path, exc, "checking the archive path") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise MediumError(f"{self.path}: is a directory; give the archive a file name")
        if st is not None and stat.S_ISBLK(st.st_mode):
            # Renaming a finished archive over a device node would replace the node, not write
            # the device; and an archive is found by its footer at the end of a file.
            raise MediumError(
                f"{self.path}: is a block device; volpack writes archives to files, pipes, "
                "tape: and s3://; give a file path on a filesystem"
            )
        if st is not None and stat.S_ISSOCK(st.st_mode):
            raise MediumError(f"{self.path}: is a socket; give the archive a file path")
        self._written = 0
        self._room = 0
        if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            self.fd = self._open(self.path, os.O_WRONLY)
            self._writeback = for_fd(self.fd)
            return
        if st is not None and not force:
            raise MediumError(
                f"{self.path}: already exists ({st.st_size} bytes); use --force to "
                "replace it (the old archive stays until the new one is complete)"
            )
        directory, name = os.path.split(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise MediumNotFound(
                f"{self.path}: directory {directory} does not exist; create it first"
            )
        try:
            self._tmp, self.fd = create_temp(self.path, mode)
        except OSError as exc:
            raise _os_error(self.path, exc, "creating the archive") from None
        self._writeback = for_fd(self.fd)

    def _open(self, path: str, flags: int) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error(path, exc, "creating the archive") from None

    def write(self, data: Buffer) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self._written += n
        except OSError as exc:
            raise _os_error(self.path, exc, "writing the archive") from None
        self._writeback.wrote(self._written)

    def leave_room(self, length: int) -> bool:
        # Only a new archive under a partial name: a FIFO or character device is written in
        # order, and nothing reads the partial before it is published whole.
        if self._tmp is None or self._written:
            return False
        try:
            os.lseek(self.fd, length, os.SEEK_SET)
        except OSError as exc:
            raise _os_error(self.path, exc, "writing the archive") from None
        self._room = length
        self._written = length  # file offsets from here on, for the early writeback
        return True

    def write_room(self, data: Buffer) -> None:
        if len(data) != self._room:
            # A programming error: the head must fill its room exactly (no gap, format section 1).
            raise ValueError(f"room of {self._room} bytes, {len(data)} bytes to fill it")
        view = memoryview(data)
        at = 0
        try:
            while at < len(view):
                at += os.pwrite(self.fd, view[at:], at)
        except OSError as exc:
            raise _os_error(self.path, exc, "writing the archive") from None

    def rewind(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise _os_error(self.path, exc, "writing the archive") from None
        self._room = self._written = 0
        self._writeback = for_fd(self.fd)

    def commit(self) -> None:
        fd, self.fd = self.fd, -1
        try:
            if self._tmp is None:  # a character device written in place
                with contextlib.suppress(OSError):  # /dev/null and friends cannot fsync
                    os.fsync(fd)
                os.close(fd)
                return
            publish(fd, self._tmp, self.path, keep_existing=self._mode is None)
            self._tmp = None
        except OSError as exc:
            raise _os_error(self.path, exc, "completing the archive") from None

    def abort(self) -> None:
        discard(self.fd, self._tmp)
        self.fd, self._tmp = -1, None


class FileReader(MediumReader):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_of(url)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error(self.path, exc, "opening the archive") from None
        st = os.fstat(self.fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self.fd)
            raise MediumError(f"{self.path}: is a directory, not an archive")
        if stat.S_ISREG(st.st_mode):
            self._size: int | None = st.st_size
        elif stat.S_ISBLK(st.st_mode):
            self._size = os.lseek(self.fd, 0, os.SEEK_END)
            os.lseek(self.fd, 0, os.SEEK_SET)
        else:
            self._size = None
        self._pos = 0

    @property
    def size(self) -> int | None:
        return self._size

    def readinto(self, buf: memoryview) -> int:
        try:
            n = os.readv(self.fd, [buf])
        except OSError as exc:
            raise _os_error(self.path, exc, f"reading the archive at offset {self._pos}") from None
        self._pos += n
        return n

    def read_at(self, offset: int, length: int) -> bytes:
        if self._size is None:
            raise MediumError(f"{self.path}: not seekable; random access needs a regular file")
        if offset < 0 or offset + length > self._size:
            raise MediumError(
                f"{self.path}: read of {length} bytes at {offset} is past the end "
                f"({self._size} bytes)"
            )
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise _os_error(self.path, exc, f"reading the archive at offset {offset}") from None
        if len(data) != length:
            raise MediumError(
                f"{self.path}: short read at {offset} ({len(data)} of {length} "
                "bytes); the file changed while being read"
            )
        return data

    def read_at_into(self, offset: int, buf: memoryview) -> None:
        """``read_at`` into ``buf`` (all of it): random access without a new buffer a read."""
        if self._size is None or offset < 0 or offset + len(buf) > self._size:
            self.read_at(offset, len(buf))  # raises the MediumError read_at gives
        try:
            n = os.preadv(self.fd, [buf], offset)
        except OSError as exc:
            raise _os_error(self.path, exc, f"reading the archive at offset {offset}") from None
        if n != len(buf):
            raise MediumError(
                f"{self.path}: short read at {offset} ({n} of {len(buf)} bytes); the file "
                "changed while being read"
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_writer(url: str, *, force: bool = False, mode: int | None = None) -> FileWriter:
    return FileWriter(url, force=force, mode=mode)


def open_reader(url: str) -> FileReader:
    return FileReader(url)


def list_archives(url_prefix: str) -> list[tuple[str, int, float]]:
    """Regular, non-hidden files directly in a directory as (absolute path, size, mtime), sorted;
    hidden names are skipped because they are archives still being written (``.NAME.partial``).
    Which of them are archives is for the caller to find out. Any failure raises."""
    directory = os.path.abspath(path_of(url_prefix))
    found: list[tuple[str, int, float]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                found.append((os.path.join(directory, entry.name), st.st_size, st.st_mtime))
    except NotADirectoryError:
        raise MediumError(
            f"{directory}: not a directory; list the directory that holds archives"
        ) from None
    except OSError as exc:
        raise _os_error(directory, exc, "listing archives") from None
    return sorted(found)


def delete(url: str) -> None:
    """Remove the archive file at ``url``; MediumNotFound when there is none."""
    path = path_of(url)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise MediumError(f"{path}: is a directory, not an archive; nothing deleted")
        os.unlink(path)
    except OSError as exc:
        raise _os_error(path, exc, "deleting the archive") from None
