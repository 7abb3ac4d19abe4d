"""Prune: apply a retention policy to the catalogued archives and delete the rest from the media.

Three separate steps so the caller can show the plan before anything happens: ``plan`` (pure
policy over catalog rows, plus every base a kept archive needs; superseded rows are only
forgotten; a kept chain in doubt aborts), ``check`` (lists every location
involved and reads which archive each holds now; a listing error or a missing *kept* archive
aborts with nothing deleted), ``execute`` (deletes through the medium API, updating the catalog
after each success). A URL is deleted only when the archive read there is the one being removed.
With ``merge`` the plan also names merged fulls to write first (``volpack.catalog.prune_merge``
writes them); the plan never writes anything itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from volpack import media
from volpack.catalog.chains import OK, STAND_IN, ChainIndex, needed_bases
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
    # Merged fulls to write before anything is deleted (``prune --merge``).
    merges: tuple[MergeStep, ...] = ()

    @property
    def keep(self) -> list[ArchiveEntry]:
        return [self.entries[s.id] for s in self.decision.keep]

    @property
    def remove(self) -> list[ArchiveEntry]:
        return [self.entries[s.id] for s in self.decision.remove]


@dataclass(frozen=True, slots=True)
class MergeStep:
    """A merged full of ``top``'s chain, written at ``url`` beside ``top``: same chain id and
    state digest, so the kept archives built on ``top`` (``users``) take it as their base and
    ``top`` and the links below it that nothing else needs can go."""

    top: ArchiveEntry
    source_url: str  # the location of ``top`` the merge reads
    url: str
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PrunePlan:
    policy: Policy
    groups: tuple[GroupPlan, ...]

    @property
    def merges(self) -> list[MergeStep]:
        return [m for g in self.groups for m in g.merges]

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
    catalog: Catalog,
    policy: Policy,
    *,
    source: str | None = None,
    tz: dt.tzinfo | None = None,
    merge: bool = False,
    stand_ins: Mapping[str, ArchiveEntry] | None = None,
) -> PrunePlan:
    """Group the catalogued archives by source and apply ``policy`` to each group; then keep
    every base (transitively) of every archive kept, and of every archive outside ``source``.
    ChainError (nothing deleted) when a kept archive's chain is in doubt.

    ``merge``: where a kept archive needs a chain of links only as bases, plan a merged full of
    the newest such base (a MergeStep) and remove the links it makes unneeded. ``stand_ins``
    (base uuid → the recorded merged full written for it) plans as if each such base were gone
    already, so the kept archives resolve to the merged fulls; these take no part in the policy
    (they hold an older state than their creation time says) and are kept as bases."""
    policy.check()
    everything = catalog.find()
    pplan = _plan(everything, policy, source, tz, dict(stand_ins or {}))
    if not merge or stand_ins:
        return pplan
    steps = _merge_steps(everything, pplan)
    if not steps:
        return pplan
    # Plan again as if each merged full were written already (a placeholder entry).
    now = time.time()
    fakes = {
        m.top.uuid: dataclasses.replace(
            m.top,
            uuid=f"merge-of-{m.top.uuid}",
            created=now,
            kind="merged",
            base_uuid=None,
            base_digest=None,
            base_state_digest=None,
            urls=(m.url,),
            superseded=(),
        )
        for m in steps
    }
    merged = _plan(everything, policy, source, tz, fakes)
    if len(merged.keep) >= len(pplan.keep):  # merging would not leave fewer archives
        return pplan
    fake_ids = {f.uuid for f in fakes.values()}
    groups = []
    for g in merged.groups:
        d = g.decision
        keep = tuple(s for s in d.keep if s.id not in fake_ids)
        mine = tuple(m for m in steps if m.top.source_path == g.source)
        groups.append(
            dataclasses.replace(g, decision=Decision(keep, d.reasons, d.remove), merges=mine)
        )
    return PrunePlan(policy, tuple(groups))


def _plan(
    everything: list[ArchiveEntry],
    policy: Policy,
    source: str | None,
    tz: dt.tzinfo | None,
    stand_ins: dict[str, ArchiveEntry],
) -> PrunePlan:
    merged_ids = {m.uuid for m in stand_ins.values()}
    known = {e.uuid for e in everything}
    rows = everything + [m for m in stand_ins.values() if m.uuid not in known]
    entries = [e for e in rows if source is None or e.source_path == source]
    by_source: dict[str, dict[str, ArchiveEntry]] = {}
    for entry in entries:
        by_source.setdefault(entry.source_path, {})[entry.uuid] = entry
    decisions = {}
    for src in sorted(by_source):
        group = by_source[src]
        # A superseded archive is on no medium: counting it would let it take a kept slot.
        snaps = [
            Snapshot(e.uuid, e.created)
            for e in group.values()
            if not e.is_superseded and e.uuid not in merged_ids
        ]
        decisions[src] = apply(policy, snaps, tz)
    kept = [by_source[src][s.id] for src, d in decisions.items() for s in d.keep]
    untouched = [e for e in rows if e.source_path not in by_source and not e.is_superseded]
    # A base a merged full stands in for is left out of the graph: its users find the merged full.
    index = ChainIndex(e for e in rows if e.uuid not in stand_ins)
    need = needed_bases(index, kept, untouched)
    groups = []
    for src, decision in decisions.items():
        group = by_source[src]
        gone = tuple(e for e in group.values() if e.is_superseded)
        extra = [group[u] for u in merged_ids if u in group and u in need]
        decision = _keep_bases(decision, need, extra)
        groups.append(GroupPlan(src, decision, group, gone, need))
    return PrunePlan(policy, tuple(groups))


def _merge_steps(everything: list[ArchiveEntry], pplan: PrunePlan) -> list[MergeStep]:
    """The bases worth merging: an incremental kept only as a base, needed directly by an
    archive kept for another reason, whose own base is also kept only as a base (merging it
    frees at least that one)."""
    index = ChainIndex(everything)
    steps = []
    for g in pplan.groups:
        only_base = {e.uuid for e in g.keep if g.decision.reasons[e.uuid] == ("base",)}
        for uuid in sorted(only_base):
            top = g.entries[uuid]
            users = g.base_of.get(uuid, ())
            if top.kind != "incremental" or not top.urls or all(u in only_base for u in users):
                continue
            link = index.link(top)
            if link.state not in (OK, STAND_IN) or link.base is None:
                continue
            if link.base.uuid not in only_base:
                continue
            steps.append(MergeStep(top, top.urls[0], merged_url(top.urls[0], uuid), users))
    return steps


def merged_url(url: str, uuid: str) -> str:
    """Where the merged full standing in for the archive at ``url`` is written: beside it, named
    after it (``/b/d3.vpk`` → ``/b/d3.merged-456508ec.vpk``)."""
    head, sep, name = media.canonical_url(url).rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, "vpk"
    return f"{head}{sep}{stem}.merged-{uuid[:8]}.{ext}"


def _keep_bases(
    decision: Decision, need: dict[str, tuple[str, ...]], extra: Sequence[ArchiveEntry] = ()
) -> Decision:
    """``decision`` with every archive some kept archive needs moved from remove to keep, and
    the needed ``extra`` archives (merged fulls outside the policy) kept as bases."""
    bases = [s for s in decision.remove if s.id in need]
    bases += [Snapshot(e.uuid, e.created) for e in extra]
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
