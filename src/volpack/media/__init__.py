"""Backup media chosen by URL: a path or ``file:`` URL, ``-`` for stdin/stdout, ``s3://`` and
``tape:`` (``tape+emu:``). ``SCHEMES`` registers each scheme's module and declares what the medium
can do (``Capabilities``); callers ask ``capabilities(url)`` instead of probing modules, and
``canonical_url`` is the one spelling of a location that the catalog records and compares.
Media move opaque bytes only.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from volpack.errors import MediumError, UsageError
from volpack.media.base import MediumReader, MediumWriter

__all__ = [
    "SCHEMES",
    "Capabilities",
    "MediumReader",
    "MediumWriter",
    "Scheme",
    "canonical_url",
    "capabilities",
    "delete",
    "list_archives",
    "local_file",
    "open_reader",
    "open_writer",
    "scheme_of",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a medium can do beyond writing and reading an archive in one pass."""

    can_list: bool = False  # list_archives(prefix): catalog rebuild, prune
    can_delete: bool = False  # delete(url): prune
    random_access: bool = False  # read_at on a finished archive: info, serve, mount, rebuild
    file_modes: bool = False  # open_writer(mode=): permission bits of a new archive
    # The local file a URL names, which a backup or restore keeps apart from its source and
    # target: the path itself, or stdin/stdout for '-'; remote media name none.
    local_file: Literal["path", "stdio"] | None = None
    # What an interrupted write leaves behind for ``volpack cleanup``: hidden partial files
    # (removed when their writer is provably dead) or open multipart uploads.
    leftovers: Literal["partials", "uploads"] | None = None
    # A URL may name a position (a tape without ``#N``: wherever the tape stands) rather than one
    # archive; the module then says per URL with ``holds_one_archive(url)``.
    positional: bool = False


@dataclass(frozen=True, slots=True)
class Scheme:
    """A URL scheme: the module implementing the medium, and what the medium can do.

    The module provides ``open_writer(url, *, force)``, ``open_reader(url)`` and
    ``canonical(url) -> str``, plus ``list_archives(prefix)`` / ``delete(url)`` when the
    capabilities say so (``open_writer`` takes ``mode=`` when ``file_modes``)."""

    module: str
    capabilities: Capabilities


_TAPE = Scheme("volpack.media.tape", Capabilities(positional=True))

SCHEMES: Mapping[str, Scheme] = {
    "file": Scheme(
        "volpack.media.file",
        Capabilities(
            can_list=True,
            can_delete=True,
            random_access=True,
            file_modes=True,
            local_file="path",
            leftovers="partials",
        ),
    ),
    "-": Scheme("volpack.media.pipe", Capabilities(local_file="stdio")),
    "s3": Scheme(
        "volpack.media.s3",
        Capabilities(can_list=True, can_delete=True, random_access=True, leftovers="uploads"),
    ),
    "tape": _TAPE,
    "tape+emu": _TAPE,
}


def scheme_of(url: str) -> str:
    if url == "-":
        return "-"
    head, sep, _ = url.partition(":")
    # RFC 3986 scheme syntax ("s3" has a digit); one letter would be a drive, not a scheme.
    if (
        sep
        and len(head) > 1
        and head[0].isalpha()
        and head.replace("+", "").replace("-", "").replace(".", "").isalnum()
    ):
        return head.lower()
    return "file"


def _scheme(url: str) -> Scheme:
    scheme = scheme_of(url)
    found = SCHEMES.get(scheme)
    if found is None:
        known = ", ".join(sorted(k + ":" for k in SCHEMES if k != "-"))
        raise UsageError(
            f"{url}: unknown medium scheme '{scheme}:'; use a path, '-' or one of {known}"
        )
    return found


def _module(url: str) -> ModuleType:
    return importlib.import_module(_scheme(url).module)


def capabilities(url: str) -> Capabilities:
    """What the medium of ``url`` can do; UsageError for an unknown scheme."""
    return _scheme(url).capabilities


def canonical_url(url: str) -> str:
    """The one spelling of the location ``url`` names, as the catalog records and compares it:
    files as absolute paths (``file:`` URLs decoded, ``localhost`` dropped), other media as their
    module defines. Two URLs name the same location exactly when their canonical forms are equal.
    Raises UsageError or MediumError for a URL its medium cannot use."""
    return str(_module(url).canonical(url))


def holds_one_archive(url: str) -> bool:
    """Whether the location ``url`` names holds one archive, so a new archive written there
    replaces the one before (a file, an S3 key, tape file ``#N``). A tape URL without ``#N``
    names wherever the tape stands: archives written through it are appended, not replaced."""
    if not capabilities(url).positional:
        return True
    return bool(_module(url).holds_one_archive(url))


def local_file(url: str, *, stdio: str) -> str | None:
    """The local file ``url`` names (``stdio`` for '-', e.g. /dev/stdout), or None when the
    medium names no local file."""
    where = capabilities(url).local_file
    if where == "stdio":
        return stdio
    if where == "path":
        return str(_module(url).path_of(url))
    return None


def open_writer(url: str, *, force: bool = False, mode: int | None = None) -> MediumWriter:
    """A writer for a new archive at ``url``; refuses to replace an existing one unless ``force``.
    ``mode``: permission bits of a new archive file (file medium only; default 0600)."""
    module = _module(url)
    if mode is None:
        return module.open_writer(url, force=force)
    if not capabilities(url).file_modes:
        scheme = scheme_of(url)
        what = "a pipe has" if scheme == "-" else f"'{scheme}:' media have"
        raise UsageError(
            f"{url}: --mode sets a file's permission bits and {what} none; drop --mode "
            "(control access with the medium's own means, e.g. bucket policies)"
        )
    return module.open_writer(url, force=force, mode=mode)


def open_reader(url: str, *, random_access: bool = False) -> MediumReader:
    """A reader of the archive at ``url``. With ``random_access`` a medium that can only be read
    in one pass is refused before it is opened (a tape is not positioned, stdin not read)."""
    if random_access and not capabilities(url).random_access:
        raise MediumError(
            f"{url}: a stream cannot be opened for random access; use a file or s3:// URL "
            "(restore and verify read '-' and tape: in one pass)"
        )
    return _module(url).open_reader(url)


def list_archives(url_prefix: str) -> list[tuple[str, int, float]]:
    """Archives under ``url_prefix`` as (canonical url, size, mtime). Raises on any listing failure
    (never an empty list for "could not look"); UsageError when the medium cannot list."""
    if not capabilities(url_prefix).can_list:
        raise UsageError(f"{url_prefix}: the '{scheme_of(url_prefix)}' medium cannot list archives")
    return _module(url_prefix).list_archives(url_prefix)


def delete(url: str) -> None:
    """Remove the archive at ``url`` (all its objects); MediumNotFound when there is none."""
    if not capabilities(url).can_delete:
        raise UsageError(f"{url}: the '{scheme_of(url)}' medium cannot delete archives")
    _module(url).delete(url)
