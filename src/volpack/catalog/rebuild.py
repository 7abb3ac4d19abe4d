"""Rebuild the catalog from the media: list a location, read each archive's header and trailer.

Uses ``open_archive`` (footer → trailer → tables by ranged reads), so it never downloads an
archive's data frames. A failed listing aborts; one unreadable archive is reported and skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from volpack import media
from volpack.catalog.record import entry_from_archive
from volpack.catalog.store import Catalog
from volpack.errors import ArchiveIdClash, NotAnArchive, VolpackError

log = logging.getLogger("volpack")


@dataclass(frozen=True, slots=True)
class RebuildResult:
    recorded: tuple[str, ...]  # archive uuids now in the catalog
    ignored: tuple[str, ...]  # objects that are not volpack archives
    failed: tuple[tuple[str, str], ...]  # (url, one-line reason): damaged, incomplete, unreadable


def archives_at(
    url: str, list_archives: Callable[[str], list[tuple[str, int, float]]] | None = None
) -> list[str]:
    """The canonical archive URLs under ``url``: the file itself, or the listing of a directory
    or prefix. A failed listing raises; it is never taken for an empty location."""
    where = media.canonical_url(url)
    if media.scheme_of(url) == "file" and os.path.isfile(where):
        return [where]
    lister = list_archives or media.list_archives
    return sorted(media.canonical_url(u) for u, _, _ in lister(where))


def rebuild(
    catalog: Catalog,
    url: str,
    *,
    list_archives: Callable[[str], list[tuple[str, int, float]]] | None = None,
    open_archive: Callable[[str], Any] | None = None,
) -> RebuildResult:
    """Record every archive found at ``url`` in ``catalog`` (existing rows are updated, verify
    status kept). Entries for archives that are gone are not removed: that is prune's job."""
    opener: Callable[[str], Any]
    if open_archive is None:
        from volpack.format.random_access import open_archive as open_any

        def opener(item: str) -> Any:
            # Public fields need no key: a sealed archive is recorded without opening its slots.
            return open_any(item, public=True)
    else:
        opener = open_archive
    recorded: list[str] = []
    ignored: list[str] = []
    failed: list[tuple[str, str]] = []
    for item in archives_at(url, list_archives):
        try:
            with opener(item) as archive:
                entry = entry_from_archive(archive, item)
        except NotAnArchive:
            ignored.append(item)
            continue
        except VolpackError as exc:
            log.warning("%s: skipped: %s", item, exc)
            failed.append((item, str(exc)))
            continue
        try:
            catalog.add(entry)
        except ArchiveIdClash as exc:
            log.warning("%s: skipped: %s", item, exc)  # the other one stays recorded
            failed.append((item, str(exc)))
            continue
        recorded.append(entry.uuid)
    return RebuildResult(tuple(recorded), tuple(ignored), tuple(failed))
