"""The one exception tree of volpack, with a stable exit code per family.

Library code raises these and never prints or exits; the CLI turns them into one line on stderr
and the exit code below. Any other exception is a bug. Messages are one line: the subject, the
problem with numbers, and the remedy.
"""

from __future__ import annotations

# Exit codes are part of the public interface (README "Exit codes"); never renumber.
EXIT_OK = 0
EXIT_WARNING = 1
EXIT_USAGE = 2
EXIT_SOURCE = 3
EXIT_CORRUPT = 4
EXIT_INCOMPLETE = 5
EXIT_UNSUPPORTED = 6
EXIT_MEDIUM = 7
EXIT_TARGET = 8
EXIT_CATALOG = 9
EXIT_DIFFERS = 10
EXIT_CHAIN = 11
EXIT_KEY = 12
EXIT_INTERRUPTED = 130
EXIT_HANGUP = 129  # 128 + SIGHUP
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


class VolpackError(Exception):
    """Root of every error volpack raises on purpose."""

    exit_code = EXIT_USAGE


class UsageError(VolpackError):
    """Bad arguments or options: a flag, a size, a URL."""

    exit_code = EXIT_USAGE


class SourceError(VolpackError):
    """The volume cannot be opened, read or understood (missing, directory, unreadable, changed)."""

    exit_code = EXIT_SOURCE


class FormatError(VolpackError):
    """The archive cannot be decoded."""

    exit_code = EXIT_CORRUPT


class CorruptArchive(FormatError):
    """A checksum, digest, count or bound in the archive does not check out."""

    exit_code = EXIT_CORRUPT


class NotAnArchive(CorruptArchive):
    """The bytes do not start with volpack's magic."""


class IncompleteArchive(FormatError):
    """The archive ends before its trailer (truncated, or the writer was interrupted)."""

    exit_code = EXIT_INCOMPLETE


class UnsupportedArchive(FormatError):
    """A newer major version or an incompatible feature this volpack does not implement."""

    exit_code = EXIT_UNSUPPORTED


class MediumError(VolpackError):
    """Bytes could not be moved to or from the medium."""

    exit_code = EXIT_MEDIUM


class MediumNotFound(MediumError):
    """The archive, bucket, key or device does not exist."""


class MediumFull(MediumError):
    """No space left on the medium."""


class MediumTransient(MediumError):
    """A failure that may go away on retry (network, throttling, busy device)."""


class TargetError(VolpackError):
    """The restore target is unsuitable or could not be written."""

    exit_code = EXIT_TARGET


class CatalogError(VolpackError):
    """The catalog could not be read or updated."""

    exit_code = EXIT_CATALOG


class VolumeDiffers(VolpackError):
    """verify --against found a volume that is not what the archive holds."""

    exit_code = EXIT_DIFFERS


class ChainError(VolpackError):
    """An incremental's base chain is broken: a base missing, replaced, of another volume or
    geometry, or a cycle. Nothing was written."""

    exit_code = EXIT_CHAIN


class ArchiveRolledBack(ChainError):
    """A medium offers an older link of a chain (a lower sequence) where the catalog recorded a
    newer one: a rollback, or a stale copy put back. Nothing was read or written."""


class CatalogFull(CatalogError):
    """The catalog's filesystem has no free space left (SQLITE_FULL / ENOSPC); not damage."""


class ArchiveReplaced(CatalogError):
    """The catalogued location now holds another archive than the one asked for (overwritten)."""


class KeyRefused(VolpackError):
    """An encrypted archive could not be authenticated: the key given opens none of its key
    slots, a key slot asks for too little work, or a sealed part or its header MAC fails."""

    exit_code = EXIT_KEY


class WrongKey(KeyRefused):
    """None of the archive's key slots opens with the identity, passphrase or key file given."""


class WeakKeySlot(KeyRefused):
    """A passphrase key slot records key-derivation parameters below volpack's minimum."""


class TamperedArchive(KeyRefused):
    """A sealed record or the header MAC does not authenticate under the archive's data key."""


class ArchiveIdClash(CatalogError):
    """Two different archives (other digests) claim one archive id; the second is not recorded."""
