"""Prune: apply a retention policy to the catalogued archives and delete the rest from the media.

Three separate steps so the caller can show the plan before anything happens: ``plan`` (pure
policy over catalog rows), ``check`` (lists every medium location involved; any listing error or
a missing *kept* archive aborts with nothing deleted), ``execute`` (deletes through the medium
API, updating the catalog after each success). It never deletes archives the catalog does not know.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from volpack import media
from volpack.catalog.policy import Decision, Policy, Snapshot, apply
from volpack.catalog.record import normalize_url
from volpack.catalog.store import ArchiveEntry, Catalog
from volpack.errors import MediumError, UsageError, VolpackError

log = logging.getLogger("volpack")


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """The policy's verdict for one volume (source path)."""

    source: str
    decision: Decision
    entries: dict[str, ArchiveEntry]

    @property
    def keep(self) -> list[ArchiveEntry]:
        return [self.entries[s.id] for s in self.decision.keep]

    @property
    def remove(self) -> list[ArchiveEntry]:
        return [self.entries[s.id] for s in self.decision.remove]


@dataclass(frozen=True, slots=True)
class PrunePlan:
    policy: Policy
    groups: tuple[GroupPlan, ...]

    @property
    def keep(self) -> list[ArchiveEntry]:
        return [e for g in self.groups for e in g.keep]

    @property
    def remove(self) -> list[ArchiveEntry]:
        return [e for g in self.groups for e in g.remove]


@dataclass(frozen=True, slots=True)
class Checked:
    """What the media listing said: per archive, which of its catalogued URLs are really there."""

    present: dict[str, tuple[str, ...]]
    gone: dict[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class PruneOutcome:
    deleted: tuple[str, ...]  # archive uuids gone from media and catalog
    already_gone: tuple[str, ...]  # catalogued but no longer on the medium; forgotten


def plan(
    catalog: Catalog, policy: Policy, *, source: str | None = None, tz: dt.tzinfo | None = None
) -> PrunePlan:
    """Group the catalogued archives by source and apply ``policy`` to each group."""
    policy.check()
    entries = catalog.find(source=source)
    by_source: dict[str, dict[str, ArchiveEntry]] = {}
    for entry in entries:
        by_source.setdefault(entry.source_path, {})[entry.uuid] = entry
    groups = []
    for src in sorted(by_source):
        group = by_source[src]
        snaps = [Snapshot(e.uuid, e.created) for e in group.values()]
        groups.append(GroupPlan(src, apply(policy, snaps, tz), group))
    return PrunePlan(policy, tuple(groups))


def location_of(url: str) -> str:
    """The container listed to confirm an archive exists: its directory, or its key's prefix up
    to the last '/' (``s3://bucket/dir/a.vpk`` → ``s3://bucket/dir/``)."""
    if media.scheme_of(url) == "file":
        return os.path.dirname(normalize_url(url))
    head, sep, _ = url.rpartition("/")
    return head + sep


def check(
    pplan: PrunePlan, list_archives: Callable[[str], list[tuple[str, int, float]]] | None = None
) -> Checked:
    """List every medium location the plan touches. Raises (nothing deleted) when a listing fails,
    or when an archive the policy keeps is missing: pruning around a lost archive would delete
    the backups that stand in for it."""
    lister = list_archives or media.list_archives
    involved = pplan.keep + pplan.remove
    listings: dict[str, set[str]] = {}
    for entry in involved:
        for url in entry.urls:
            where = location_of(url)
            if where in listings:
                continue
            try:
                listings[where] = {normalize_url(u) for u, _, _ in lister(where)}
            except UsageError as exc:
                raise UsageError(
                    f"prune: cannot list {where}, nothing deleted: {exc}; "
                    "limit the prune to other volumes with --source"
                ) from exc
            except VolpackError as exc:
                raise type(exc)(f"prune: listing {where} failed, nothing deleted: {exc}") from exc
            except OSError as exc:
                raise MediumError(
                    f"prune: listing {where} failed, nothing deleted: {exc}; fix the medium and retry"
                ) from exc
    present: dict[str, tuple[str, ...]] = {}
    gone: dict[str, tuple[str, ...]] = {}
    for entry in involved:
        here = tuple(u for u in entry.urls if u in listings[location_of(u)])
        present[entry.uuid] = here
        gone[entry.uuid] = tuple(u for u in entry.urls if u not in here)
    for entry in pplan.keep:
        if entry.urls and not present[entry.uuid]:
            raise MediumError(
                f"prune: archive {entry.uuid} of {entry.source_path}, which the policy keeps, is "
                f"missing from {', '.join(entry.urls)}; nothing deleted; run "
                "'volpack catalog rebuild URL' or restore the archive before pruning"
            )
    return Checked(present, gone)


def execute(
    catalog: Catalog,
    pplan: PrunePlan,
    checked: Checked,
    delete: Callable[[str], None] | None = None,
) -> PruneOutcome:
    """Delete every copy of each archive the plan removes, forgetting each copy in the catalog
    right after its deletion succeeded. A failure stops at once (MediumError naming what was done);
    the catalog then still lists exactly the copies that were not deleted."""
    remover = delete or media.delete
    deleted: list[str] = []
    already: list[str] = []
    todo = sorted(pplan.remove, key=lambda e: (e.created, e.uuid))  # oldest first
    for entry in todo:
        present = checked.present.get(entry.uuid, ())
        for url in checked.gone.get(entry.uuid, ()):
            catalog.remove_location(entry.uuid, url)
        for url in present:
            try:
                remover(url)
            except (VolpackError, OSError) as exc:
                raise MediumError(
                    f"prune: deleting {url} failed after {len(deleted)} of {len(todo)} archives "
                    f"were deleted: {exc}; the catalog lists what is left, retry the prune"
                ) from exc
            log.info("deleted %s (%s)", url, entry.uuid)
            catalog.remove_location(entry.uuid, url)
        if not entry.urls:
            catalog.forget(entry.uuid)
        (deleted if present else already).append(entry.uuid)
    return PruneOutcome(tuple(deleted), tuple(already))
