"""Backup media chosen by URL: a path or ``file:`` URL, ``-`` for stdin/stdout, and more schemes
(``s3://``, ``tape:``) registered in ``_SCHEMES``. Media move opaque bytes only.
"""

from __future__ import annotations

import importlib

from volpack.errors import UsageError
from volpack.media.base import MediumReader, MediumWriter

__all__ = ["MediumReader", "MediumWriter", "open_reader", "open_writer", "scheme_of"]

# scheme → module with open_writer(url, force) and open_reader(url)
_SCHEMES = {
    "file": "volpack.media.file",
    "-": "volpack.media.pipe",
}


def scheme_of(url: str) -> str:
    if url == "-":
        return "-"
    head, sep, _ = url.partition(":")
    if sep and head.isalpha() and len(head) > 1:
        return head.lower()
    return "file"


def _module(url: str):
    scheme = scheme_of(url)
    name = _SCHEMES.get(scheme)
    if name is None:
        known = ", ".join(sorted(k + ":" for k in _SCHEMES if k != "-"))
        raise UsageError(f"{url}: unknown medium scheme '{scheme}:'; use a path, '-' or one of {known}")
    return importlib.import_module(name)


def open_writer(url: str, *, force: bool = False) -> MediumWriter:
    """A writer for a new archive at ``url``; refuses to replace an existing one unless ``force``."""
    return _module(url).open_writer(url, force=force)


def open_reader(url: str) -> MediumReader:
    return _module(url).open_reader(url)
