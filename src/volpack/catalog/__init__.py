"""The catalog of backups (SQLite): what was backed up, when, where. Rebuildable from media.

Entry points for the other parts of volpack: ``record_after_backup`` and ``record_after_verify``
(never fail the operation they follow), ``locate_archive_ref`` and ``locate_volume_at`` (turn an
archive id or a volume + time into the archive id and the medium URL it was recorded at; restore
then checks that the URL still holds that id). The catalog never holds data.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from volpack.catalog.policy import Policy
from volpack.catalog.record import (
    catalog_path as _catalog_path,
)
from volpack.catalog.record import (
    default_path,
    entry_from_archive,
    entry_from_result,
    parse_time,
    source_key,
)
from volpack.catalog.store import ArchiveEntry, Catalog
from volpack.errors import ArchiveReplaced, CatalogError, VolpackError

__all__ = [
    "ArchiveEntry",
    "Catalog",
    "Located",
    "Policy",
    "default_path",
    "entry_from_archive",
    "entry_from_result",
    "locate_archive_ref",
    "locate_volume_at",
    "parse_time",
    "recorded_source",
    "record_after_backup",
    "record_after_rewrap",
    "record_after_verify",
    "record_archive",
    "resolve_archive_ref",
    "resolve_volume_at",
    "source_key",
]

log = logging.getLogger("volpack")

_ID_LIKE = re.compile(r"^[0-9a-fA-F][0-9a-fA-F-]{3,35}$")


def record_after_backup(
    result: Any,
    catalog_path: str | None,
    description: Mapping[str, Any] | None = None,
) -> bool:
    """Record a finished backup in the catalog (the default one when the path is None).

    Never raises for catalog trouble: the archive is already safe on its medium, and a catalog
    can be rebuilt from media, so a failure is logged as a warning and False returned.
    """
    path = _catalog_path(catalog_path)
    try:
        entry = entry_from_result(result, description)
        with Catalog.open(path) as catalog:
            catalog.add(entry)
    except (VolpackError, sqlite3.Error, OSError) as exc:
        log.warning(
            "archive %s was written but not recorded in the catalog %s: %s; "
            "run 'volpack catalog rebuild %s' later",
            getattr(result, "archive_uuid", "?"),
            path,
            exc,
            getattr(result, "url", "URL"),
        )
        return False
    return True


def record_archive(url: str, catalog_path: str | None) -> bool:
    """Record the archive at ``url`` as rebuild would (read from its trailer); like
    ``record_after_backup`` it only warns when the catalog cannot take it."""
    return _record(url, catalog_path, lambda catalog, entry: catalog.add(entry))


def record_after_rewrap(url: str, old_digest: str, catalog_path: str | None) -> bool:
    """Record the rewrapped archive at ``url`` (public fields from its trailer: no key needed),
    made from the archive whose digest is ``old_digest`` (``Catalog.add_rewrap``: another place
    holding that archive when it is recorded). Like ``record_after_backup`` it only warns."""
    return _record(
        url, catalog_path, lambda catalog, entry: catalog.add_rewrap(entry, old_digest), True
    )


def _record(
    url: str,
    catalog_path: str | None,
    add: Callable[[Catalog, ArchiveEntry], None],
    public: bool = False,
) -> bool:
    """Read the archive at ``url`` from its trailer and ``add`` it; a warning, not an error,
    when that fails: the archive itself is good."""
    from volpack.format.random_access import open_archive

    path = _catalog_path(catalog_path)
    try:
        with open_archive(url, public=public) as archive, Catalog.open(path) as catalog:
            add(catalog, entry_from_archive(archive, archive.url))
    except (VolpackError, sqlite3.Error, OSError) as exc:
        log.warning(
            "archive at %s was written but not recorded in the catalog %s: %s; "
            "run 'volpack catalog rebuild %s' later",
            url,
            path,
            exc,
            url,
        )
        return False
    return True


def record_after_verify(
    archive_uuid: str, ok: bool, catalog_path: str | None, when: float | None = None
) -> bool:
    """Store a verify outcome; archives the catalog does not know (or no catalog) are skipped
    quietly, other catalog trouble is a warning. Never raises for catalog trouble."""
    path = _catalog_path(catalog_path)
    try:
        with Catalog.open(path, create=False) as catalog:
            catalog.record_verify(archive_uuid, ok, when)
    except CatalogError as exc:
        log.debug("verify result not recorded: %s", exc)
        return False
    except (sqlite3.Error, OSError) as exc:
        log.warning("verify result for %s not recorded in %s: %s", archive_uuid, path, exc)
        return False
    return True


@dataclass(frozen=True, slots=True)
class Located:
    """A catalogued archive and the URL to read it from; restore checks the id it finds there."""

    uuid: str
    url: str


def resolve_archive_ref(text: str, catalog_path: str | None = None) -> str | None:
    """The medium URL of ``locate_archive_ref`` (kept for library callers)."""
    found = locate_archive_ref(text, catalog_path)
    return None if found is None else found.url


def resolve_volume_at(volume: str, at: str, catalog_path: str | None = None) -> str:
    """The medium URL of ``locate_volume_at`` (kept for library callers)."""
    return locate_volume_at(volume, at, catalog_path).url


def locate_archive_ref(text: str, catalog_path: str | None = None) -> Located | None:
    """The catalogued archive whose id (or unique id prefix) is ``text``, and its first location.

    None when ``text`` does not look like an id or no catalog exists; CatalogError when it looks
    like an id but matches none or several archives, or the archive has no recorded location;
    ArchiveReplaced when every location it had was overwritten by a later archive.
    Callers use it only after ``text`` turned out not to be an existing path or URL.
    """
    if not _ID_LIKE.match(text.strip()):
        return None
    path = _catalog_path(catalog_path)
    try:
        catalog = Catalog.open(path, create=False)
    except CatalogError:
        return None
    with catalog:
        entry = catalog.get(text)
        return _located(entry, path, catalog)


def locate_volume_at(volume: str, at: str, catalog_path: str | None = None) -> Located:
    """The newest archive of ``volume`` made at or before time ``at``. When that archive was
    overwritten in place, it is refused (ArchiveReplaced), naming the archives still there:
    silently restoring an older or newer one would not be the state asked for."""
    path = _catalog_path(catalog_path)
    when = parse_time(at)
    with Catalog.open(path, create=False) as catalog:
        entry = catalog.resolve(recorded_source(catalog, volume), when)
        _check_overwritten_by_older(catalog, entry)
        found = _located(entry, path, catalog)
        _check_rollback(catalog, found)
        return found


def _check_overwritten_by_older(catalog: Catalog, entry: ArchiveEntry) -> None:
    """ArchiveRolledBack when the catalog itself recorded ``entry``'s location overwritten by an
    older link of a chain (a rebuild read the stale copy put back there)."""
    from volpack.catalog.rollback import older_link

    if not entry.is_superseded:
        return
    first = entry.superseded[0]
    try:
        by = catalog.get(first.by)
    except CatalogError:
        return
    error = older_link(catalog, by.uuid, by.chain_id, by.chain_seq, first.url)
    if error is not None:
        raise error


def _check_rollback(catalog: Catalog, found: Located) -> None:
    """ArchiveRolledBack when ``found.url`` now holds an older link of a chain than the newest
    the catalog recorded. One header read on a random-access medium; a medium that cannot be
    read here is left to the reader that follows, which reports it."""
    from volpack import media
    from volpack.catalog.identity import header_at
    from volpack.catalog.rollback import rolled_back
    from volpack.errors import FormatError, MediumError

    if not media.capabilities(found.url).random_access:
        return
    try:
        header = header_at(found.url)
    except (FormatError, MediumError):
        return
    error = rolled_back(catalog, header, found.url, found.uuid)
    if error is not None:
        raise error


def recorded_source(catalog: Catalog, volume: str) -> str:
    """The source ``volume`` (as a user names it) is recorded under: its normalised key (an
    absolute path for a plain path) when the catalog holds archives under it, else the text as
    given (a qcow2 or other source recorded verbatim)."""
    key = source_key(volume)
    if key != volume and not catalog.find(source=key):
        return volume
    return key


def _located(entry: ArchiveEntry, path: str, catalog: Catalog) -> Located:
    if entry.is_superseded:
        raise _replaced_error(entry, path, catalog)
    if not entry.urls:
        raise CatalogError(
            f"{path}: archive {entry.uuid} was written to a stream and has no recorded location; "
            "give its path or URL"
        )
    return Located(entry.uuid, entry.urls[0])


def _replaced_error(entry: ArchiveEntry, path: str, catalog: Catalog) -> ArchiveReplaced:
    first = entry.superseded[0]
    others = [e for e in catalog.find(source=entry.source_path) if e.urls]
    older = [e for e in others if e.created <= entry.created]
    newer = [e for e in others if e.created > entry.created]
    choices = []
    if older:
        choices.append(f"the newest older one is {older[-1].uuid[:8]} ({_iso(older[-1].created)})")
    if newer:
        choices.append(f"the next newer one is {newer[0].uuid[:8]} ({_iso(newer[0].created)})")
    pick = "; ".join(choices) or f"no archive of {entry.source_path} is left"
    return ArchiveReplaced(
        f"archive {entry.uuid} of {entry.source_path} (made {_iso(entry.created)}) is gone: "
        f"{first.url} was overwritten by archive {first.by} (recorded {_iso(first.at)}); "
        f"{pick}; restore one by id ('volpack restore ID TARGET') or see "
        f"'volpack list --source {entry.source_path}' (catalog {path})"
    )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
