"""Key material in local files: identity files (age-keygen's format), 32-byte key files and
passphrase files; and writing a new identity file, mode 0600.

The only module of the crypto layer that touches the file system; never logs what it reads.
Problems are UsageError (exit 2): a key given on the command line is an argument.
"""

from __future__ import annotations

import os
import stat
import sys

from volpack import atomic
from volpack.crypto.keys import Identity, KeyFile, Passphrase, parse_identities
from volpack.errors import UsageError

MAX_TEXT = 64 * 1024  # an identity or passphrase file is a few lines; anything larger is a mistake


def _read(path: str, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of ``path`` (``-``: standard input); UsageError for a missing,
    unreadable or non-regular file, or one larger than ``limit``."""
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
        if len(data) > limit:
            raise UsageError(f"{what} on standard input: more than {limit} bytes")
        return data
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(
            f"{what} {path}: cannot be opened ({exc.strerror}); check the path"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode):
            raise UsageError(f"{what} {path}: not a regular file; give the file itself")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise UsageError(
                f"{what} {path}: {st.st_size} bytes, more than {limit}; is it the right file?"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UsageError(f"{what} {path}: more than {limit} bytes; is it the right file?")
    return data


def read_identities(path: str) -> tuple[Identity, ...]:
    """Every X25519 identity in an age identity file (``-``: standard input)."""
    data = _read(path, MAX_TEXT, "identity file")
    name = "identity file on standard input" if path == "-" else f"identity file {path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not UTF-8 text; give an age identity file") from None
    return parse_identities(text, name)


def read_key_file(path: str) -> KeyFile:
    """A key file: exactly 32 bytes, taken as they are. Any other size is refused, naming it
    (a newline after a 32-byte key makes 33: that is refused too, never trimmed)."""
    data = _read(path, MAX_TEXT, "key file")
    return KeyFile(data, name=f"key file {path}")


def read_passphrase_file(path: str) -> Passphrase:
    """The passphrase in ``path``: its first line without the line end; UsageError when the file
    holds more than one line or an empty one (a second line is likely the wrong file)."""
    data = _read(path, MAX_TEXT, "passphrase file")
    lines = data.split(b"\n")
    if len(lines) > 2 or (len(lines) == 2 and lines[1]):
        raise UsageError(
            f"passphrase file {path}: {len(lines) - (0 if lines[-1] else 1)} lines; it must hold "
            "the passphrase on one line"
        )
    line = lines[0].removesuffix(b"\r")
    if not line:
        raise UsageError(f"passphrase file {path}: the passphrase is empty; write it in the file")
    return Passphrase(line)


def write_identity(path: str, identity: Identity, *, force: bool = False) -> None:
    """Write ``identity`` in age-keygen's format to ``path``, mode 0600, atomically (a reader
    never sees half a key). An existing file is replaced only with ``force``."""
    if os.path.lexists(path) and not force:
        raise UsageError(
            f"{path}: exists; choose another path, or add --force to replace the key in it "
            "(archives sealed to it then need the old key)"
        )
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory; give a file name")
    try:
        tmp, fd = atomic.create_temp(path, 0o600)
    except OSError as exc:
        raise UsageError(f"{path}: cannot be created ({exc.strerror}); check the folder") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may only take bits away; 0600 is what a key needs
        data = identity.file_text().encode()
        while data:
            data = data[os.write(fd, data) :]
    except BaseException as exc:
        atomic.discard(fd, tmp)
        if isinstance(exc, OSError):
            raise UsageError(f"{path}: cannot be written ({exc.strerror})") from None
        raise
    try:
        atomic.publish(fd, tmp, path, keep_existing=False)
    except OSError as exc:
        atomic.discard(-1, tmp)  # publish closed fd
        raise UsageError(f"{path}: cannot be written ({exc.strerror})") from None
