"""Backup media chosen by URL: a path or ``file:`` URL, ``-`` for stdin/stdout, and more schemes
(``s3://``, ``tape:``) registered in ``_SCHEMES``. Media move opaque bytes only.
"""

from __future__ import annotations

import importlib

from volpack.errors import UsageError
from volpack.media.base import MediumReader, MediumWriter

__all__ = [
    "MediumReader",
    "MediumWriter",
    "delete",
    "list_archives",
    "open_reader",
    "open_writer",
    "scheme_of",
]

# scheme → module with open_writer(url, force) and open_reader(url)
_SCHEMES = {
    "file": "volpack.media.file",
    "-": "volpack.media.pipe",
    "s3": "volpack.media.s3",
    "tape": "volpack.media.tape",
    "tape+emu": "volpack.media.tape",
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


def _module(url: str):
    scheme = scheme_of(url)
    name = _SCHEMES.get(scheme)
    if name is None:
        known = ", ".join(sorted(k + ":" for k in _SCHEMES if k != "-"))
        raise UsageError(
            f"{url}: unknown medium scheme '{scheme}:'; use a path, '-' or one of {known}"
        )
    return importlib.import_module(name)


def open_writer(url: str, *, force: bool = False, mode: int | None = None) -> MediumWriter:
    """A writer for a new archive at ``url``; refuses to replace an existing one unless ``force``.
    ``mode``: permission bits of a new archive file (file medium only; default 0600)."""
    module = _module(url)
    if mode is None:
        return module.open_writer(url, force=force)
    scheme = scheme_of(url)
    if scheme != "file":
        what = "a pipe has" if scheme == "-" else f"'{scheme}:' media have"
        raise UsageError(
            f"{url}: --mode sets a file's permission bits and {what} none; drop --mode "
            "(control access with the medium's own means, e.g. bucket policies)"
        )
    return module.open_writer(url, force=force, mode=mode)


def open_reader(url: str) -> MediumReader:
    return _module(url).open_reader(url)


def list_archives(url_prefix: str) -> list[tuple[str, int, float]]:
    """Archives under ``url_prefix`` as (url, size, mtime). Raises on any listing failure (never
    an empty list for "could not look"); UsageError when the medium cannot list."""
    module = _module(url_prefix)
    if not hasattr(module, "list_archives"):
        raise UsageError(f"{url_prefix}: the '{scheme_of(url_prefix)}' medium cannot list archives")
    return module.list_archives(url_prefix)


def delete(url: str) -> None:
    """Remove the archive at ``url`` (all its objects); MediumNotFound when there is none."""
    module = _module(url)
    if not hasattr(module, "delete"):
        raise UsageError(f"{url}: the '{scheme_of(url)}' medium cannot delete archives")
    module.delete(url)
