"""``--base latest``: the newest catalogued archive of a volume that can serve as a base now.

Looks at the catalog, then reads one header per candidate location to confirm the archive is
still there; it never reads data or writes. Newer archives that were deleted or written over are
passed by with a warning (an older base is still a correct base); one only on a positional medium
(tape) cannot be opened at random and is refused, naming ``--base PATH``.
"""

from __future__ import annotations

import logging

from volpack import media
from volpack.catalog.identity import header_at
from volpack.catalog.record import catalog_path, source_key
from volpack.catalog.rollback import rolled_back
from volpack.catalog.store import Catalog
from volpack.errors import ChainError, FormatError, MediumNotFound

log = logging.getLogger("volpack")


def latest_base(source: str, catalog: str | None) -> str:
    """The URL of the newest archive of ``source`` in ``catalog`` that is still where the catalog
    says (its header read there names it). ChainError when there is none, or when the newest one
    is only on a medium without random access (tape)."""
    path = catalog_path(catalog)
    with Catalog.open(path, create=False) as cat:
        return _latest(cat, source, path)


def _latest(cat: Catalog, source: str, path: str) -> str:
    key = source_key(source)
    found = cat.find(source=key) or (cat.find(source=source) if key != source else [])
    passed: list[str] = []
    for entry in reversed(found):
        if not entry.urls:
            if entry.is_superseded:
                s = entry.superseded[0]
                passed.append(f"newer archive {entry.uuid} at {s.url} was written over by {s.by}")
            continue
        readable = [u for u in entry.urls if media.capabilities(u).random_access]
        if not readable:
            raise ChainError(
                f"--base latest: the newest archive of {source}, {entry.uuid}, is only at "
                f"{', '.join(entry.urls)}, which cannot be read at random (a base is compared "
                "block by block); copy it to a file or S3 and give --base PATH, or back up a full"
            )
        for url in readable:
            why = _not_there(url, entry.uuid, cat)
            if why is None:
                for note in passed:
                    log.warning("--base latest: %s; using %s (%s)", note, entry.uuid, url)
                return url
            passed.append(f"newer archive {entry.uuid} is not at {url} any more ({why})")
    gone = f" ({'; '.join(passed)})" if passed else ""
    raise ChainError(
        f"--base latest: {path} records no archive of {source} that still exists{gone}; give "
        "the base archive's path or URL with --base PATH, or back up a full first"
    )


def _not_there(url: str, uuid: str, cat: Catalog) -> str | None:
    """None when ``url`` holds archive ``uuid``; else a few words on what is there. A medium that
    cannot be read raises: "could not look" is never taken for "not there"; nor is an older link
    of a chain than the catalog recorded (ArchiveRolledBack): an older base would hide it."""
    try:
        header = header_at(url)
    except MediumNotFound:
        return "deleted"
    except FormatError as exc:
        return f"no readable volpack header: {type(exc).__name__}"
    error = rolled_back(cat, header, url, uuid)
    if error is not None:
        raise error
    return None if header.uuid == uuid else f"it holds archive {header.uuid} now"
