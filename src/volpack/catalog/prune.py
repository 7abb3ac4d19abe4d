"""Prune: apply a retention policy to the catalogued archives and delete the rest from the media.

Three separate steps so the caller can show the plan before anything happens: ``plan`` (pure
policy over catalog rows, plus every base a kept archive needs; superseded rows are only
forgotten; a kept chain in doubt aborts), ``check`` (lists every location
involved and reads which archive each holds now; a listing error or a missing *kept* archive
aborts with nothing deleted), ``execute`` (deletes through the medium API, updating the catalog
after each success). A URL is deleted only when the archive read there is the one being removed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from volpack import media
from volpack.catalog.chains import ChainIndex, needed_bases
from volpack.catalog.identity import archive_at
from volpack.catalog.policy import Decision, Policy, Snapshot, apply
from volpack.catalog.store import ArchiveEntry, Catalog
from volpack.errors import FormatError, MediumError, MediumNotFound, UsageError, VolpackError

log = logging.getLogger("volpack")


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """The policy's verdict for one volume (source path)."""

    source: str
    decision: Decision
    entries: dict[str, ArchiveEntry]
    # Archives whose every location was written over: outside the policy, forgotten by execute.
    superseded: tuple[ArchiveEntry, ...] = ()
    # Archive uuid → the archives that need it as their base (kept for them: reason "base").
    base_of: dict[str, tuple[str, ...]] = field(default_factory=dict)

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

    @property
    def superseded(self) -> list[ArchiveEntry]:
        return [e for g in self.groups for e in g.superseded]


@dataclass(frozen=True, slots=True)
class Spared:
    """A catalogued location of a removed archive that holds something else now: not deleted."""

    uuid: str  # the archive the catalog had there
    url: str
    holds: str  # the archive id read there, or why none could be read


@dataclass(frozen=True, slots=True)
class Checked:
    """What the media said: per archive, which of its catalogued URLs really hold it (``present``),
    are not listed any more (``gone``), or hold something else now (``spared``)."""

    present: dict[str, tuple[str, ...]]
    gone: dict[str, tuple[str, ...]]
    spared: tuple[Spared, ...] = ()


@dataclass(frozen=True, slots=True)
class PruneOutcome:
    deleted: tuple[str, ...]  # archive uuids gone from media and catalog
    already_gone: tuple[str, ...]  # catalogued but no longer on the medium; forgotten
    spared: tuple[Spared, ...] = ()  # locations written over since: kept on the medium
    forgotten: tuple[str, ...] = ()  # superseded archives dropped from the catalog only


def plan(
    catalog: Catalog, policy: Policy, *, source: str | None = None, tz: dt.tzinfo | None = None
) -> PrunePlan:
    """Group the catalogued archives by source and apply ``policy`` to each group; then keep
    every base (transitively) of every archive kept, and of every archive outside ``source``.
    ChainError (nothing deleted) when a kept archive's chain is in doubt."""
    policy.check()
    everything = catalog.find()
    entries = [e for e in everything if source is None or e.source_path == source]
    by_source: dict[str, dict[str, ArchiveEntry]] = {}
    for entry in entries:
        by_source.setdefault(entry.source_path, {})[entry.uuid] = entry
    decisions = {}
    for src in sorted(by_source):
        group = by_source[src]
        # A superseded archive is on no medium: counting it would let it take a kept slot.
        snaps = [Snapshot(e.uuid, e.created) for e in group.values() if not e.is_superseded]
        decisions[src] = apply(policy, snaps, tz)
    kept = [by_source[src][s.id] for src, d in decisions.items() for s in d.keep]
    untouched = [e for e in everything if e.source_path not in by_source and not e.is_superseded]
    need = needed_bases(ChainIndex(everything), kept, untouched)
    groups = []
    for src, decision in decisions.items():
        group = by_source[src]
        gone = tuple(e for e in group.values() if e.is_superseded)
        groups.append(GroupPlan(src, _keep_bases(decision, need), group, gone, need))
    return PrunePlan(policy, tuple(groups))


def _keep_bases(decision: Decision, need: dict[str, tuple[str, ...]]) -> Decision:
    """``decision`` with every archive some kept archive needs moved from remove to keep."""
    bases = [s for s in decision.remove if s.id in need]
    if not bases:
        return decision
    keep = sorted((*decision.keep, *bases), key=lambda s: (s.created, s.id), reverse=True)
    reasons = dict(decision.reasons)
    for s in bases:
        reasons[s.id] = ("base",)
    remove = tuple(s for s in decision.remove if s.id not in need)
    return Decision(tuple(keep), reasons, remove)


def location_of(url: str) -> str:
    """The container listed to confirm an archive exists: its directory, or its key's prefix up
    to the last '/' (``s3://bucket/dir/a.vpk`` → ``s3://bucket/dir/``)."""
    canonical = media.canonical_url(url)
    if media.scheme_of(url) == "file":
        return os.path.dirname(canonical)
    head, sep, _ = canonical.rpartition("/")
    return head + sep


def check(
    pplan: PrunePlan,
    list_archives: Callable[[str], list[tuple[str, int, float]]] | None = None,
    identify: Callable[[str], str] | None = None,
) -> Checked:
    """List every medium location the plan touches and read which archive each listed URL holds.
    Raises (nothing deleted) when a listing or a read fails, or when an archive the policy keeps
    is missing or written over: pruning around a lost archive would delete the backups that
    stand in for it."""
    lister = list_archives or media.list_archives
    involved = pplan.keep + pplan.remove
    listings: dict[str, set[str]] = {}
    for entry in involved:
        for url in entry.urls:
            where = location_of(url)
            if where in listings:
                continue
            try:
                listings[where] = {media.canonical_url(u) for u, _, _ in lister(where)}
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
    spared: list[Spared] = []
    for entry in involved:
        holding, missing = [], []
        for url in entry.urls:
            holds = (
                _holds(url, identify, "nothing deleted")
                if media.canonical_url(url) in listings[location_of(url)]
                else None
            )
            if holds is None:
                missing.append(url)
            elif holds == entry.uuid:
                holding.append(url)
            else:
                spared.append(Spared(entry.uuid, url, holds))
        present[entry.uuid] = tuple(holding)
        gone[entry.uuid] = tuple(missing)
    for entry in pplan.keep:
        if entry.urls and not present[entry.uuid]:
            other = [s for s in spared if s.uuid == entry.uuid]
            now = f" ({other[0].url} holds {other[0].holds} now)" if other else ""
            raise MediumError(
                f"prune: archive {entry.uuid} of {entry.source_path}, which the policy keeps, is "
                f"missing from {', '.join(entry.urls)}{now}; nothing deleted; back the volume up "
                "again, or run 'volpack catalog rebuild URL' or restore the archive before pruning"
            )
    kept = {e.uuid for e in pplan.keep}
    return Checked(present, gone, tuple(s for s in spared if s.uuid not in kept))


def _holds(url: str, identify: Callable[[str], str] | None, done: str) -> str | None:
    """The archive id at ``url``, a few words on why none can be read there, or None when
    nothing is there. A medium that cannot be read raises: "could not look" is never taken for
    "something else is there"."""
    try:
        return (identify or archive_at)(url)
    except MediumNotFound:
        return None
    except FormatError as exc:
        return f"no readable volpack archive ({type(exc).__name__})"
    except (VolpackError, OSError) as exc:
        raise MediumError(
            f"prune: cannot read which archive {url} holds, {done}: {exc}; fix the medium and retry"
        ) from exc


def execute(
    catalog: Catalog,
    pplan: PrunePlan,
    checked: Checked | None,
    delete: Callable[[str], None] | None = None,
    identify: Callable[[str], str] | None = None,
) -> PruneOutcome:
    """Forget the superseded rows, then delete every copy of each archive the plan removes,
    forgetting each copy in the catalog right after its deletion succeeded. Right before each
    deletion the archive id at the URL is read again: a URL written over since ``check`` is
    spared. A failure stops at once (MediumError naming what was done); the catalog then still
    lists exactly the copies that were not deleted. ``checked`` may be None only when the plan
    removes nothing."""
    remover = delete or media.delete
    forgotten = []
    for entry in pplan.superseded:
        catalog.forget(entry.uuid)
        forgotten.append(entry.uuid)
    if checked is None:
        if pplan.remove:
            raise UsageError("prune: the plan removes archives but the media were not checked")
        return PruneOutcome((), (), (), tuple(forgotten))
    deleted: list[str] = []
    already: list[str] = []
    spared = list(checked.spared)
    todo = sorted(pplan.remove, key=lambda e: (e.created, e.uuid))  # oldest first
    done = f"after {{}} of {len(todo)} archives were deleted"
    for entry in todo:
        present = checked.present.get(entry.uuid, ())
        for url in checked.gone.get(entry.uuid, ()):
            catalog.remove_location(entry.uuid, url)
        for s in checked.spared:
            if s.uuid == entry.uuid:
                catalog.remove_location(entry.uuid, s.url)
        removed = False
        for url in present:
            holds = _holds(url, identify, done.format(len(deleted)))
            if holds != entry.uuid:
                if holds is not None:  # written over since check(); None: deleted meanwhile
                    spared.append(Spared(entry.uuid, url, holds))
                catalog.remove_location(entry.uuid, url)
                continue
            try:
                remover(url)
            except (VolpackError, OSError) as exc:
                raise MediumError(
                    f"prune: deleting {url} failed {done.format(len(deleted))}: {exc}; "
                    "the catalog lists what is left, retry the prune"
                ) from exc
            log.info("deleted %s (%s)", url, entry.uuid)
            catalog.remove_location(entry.uuid, url)
            removed = True
        if not entry.urls:
            catalog.forget(entry.uuid)
        (deleted if removed else already).append(entry.uuid)
    return PruneOutcome(tuple(deleted), tuple(already), tuple(spared), tuple(forgotten))
