"""``prune --merge``, the writing step: merge each planned base's chain into a full beside it,
check it stands in for that base, record it, and plan the prune again around the merged fulls.

Runs after ``prune.check`` and before ``prune.execute``; it never deletes anything, so any
failure here leaves every archive where it was (a merged full already written stays recorded).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from volpack import media
from volpack.catalog.identity import header_at
from volpack.catalog.policy import Policy
from volpack.catalog.prune import Checked, PrunePlan, location_of, plan
from volpack.catalog.record import entry_from_archive
from volpack.catalog.store import ArchiveEntry, Catalog
from volpack.errors import ChainError, MediumError, UsageError, VolpackError
from volpack.format import records as R


def write_merges(
    catalog: Catalog, pplan: PrunePlan, checked: Checked, merge: Callable[[str, str], str]
) -> dict[str, ArchiveEntry]:
    """Write and record the merged full of every MergeStep of ``pplan``; returns base uuid →
    the recorded merged full. ``merge(from_url, out_url)`` writes the merged full of the chain
    at ``from_url`` and returns where it went (``volpack.merge``, passed in by the caller: the
    catalog does not import the pipeline). Raises (nothing deleted) when a merge fails or its
    result does not carry the base's chain id and state digest."""
    from volpack.format.random_access import open_archive

    written: dict[str, ArchiveEntry] = {}
    for step in pplan.merges:
        top = step.top
        done = _done(written)
        if step.source_url not in checked.present.get(top.uuid, ()):
            raise MediumError(
                f"prune --merge: archive {top.uuid} is not at {step.source_url} any more, so its "
                f"chain cannot be merged; nothing deleted{done}; run 'volpack catalog rebuild "
                "URL' and prune again"
            )
        taken = {media.canonical_url(u) for u, _, _ in _listing(step.url, done)}
        if media.canonical_url(step.url) in taken:
            raise UsageError(
                f"prune --merge: {step.url} already exists, so the merged full of {top.uuid} "
                f"cannot be written there; nothing deleted{done}; move it away and prune again "
                "(or prune without --merge)"
            )
        if _header(step.source_url, done).encrypted:
            raise UsageError(
                f"prune --merge: the chain of {top.uuid} ({step.source_url}) is encrypted and "
                f"prune does not take keys; nothing deleted{done}; merge it with 'volpack merge "
                f"{step.source_url} {step.url}' and its key options, then prune again"
            )
        try:
            url = merge(step.source_url, step.url)
            with open_archive(url) as archive:
                entry = entry_from_archive(archive, archive.url)
        except (VolpackError, OSError) as exc:
            kind = type(exc) if isinstance(exc, VolpackError) else MediumError
            raise kind(
                f"prune --merge: merging the chain of {top.uuid} ({step.source_url}) into "
                f"{step.url} failed; nothing deleted{done}: {exc}"
            ) from exc
        if (entry.kind, entry.chain_id, entry.state_digest) != (
            "merged",
            top.chain_id,
            top.state_digest,
        ):
            raise ChainError(
                f"prune --merge: the merged full {entry.uuid} at {entry.urls[0]} does not stand "
                f"in for {top.uuid} (chain {entry.chain_id} state "
                f"{(entry.state_digest or '')[:16]}…, expected chain {top.chain_id} state "
                f"{(top.state_digest or '')[:16]}…); nothing deleted; check the chain with "
                f"'volpack verify --chain {step.source_url}'"
            )
        catalog.add(entry)
        written[top.uuid] = entry
    return written


def _header(url: str, done: str) -> R.Header:
    try:
        return header_at(url)
    except (VolpackError, OSError) as exc:
        raise MediumError(
            f"prune --merge: reading the header of {url} failed; nothing deleted{done}: {exc}"
        ) from exc


def _listing(url: str, done: str) -> list[tuple[str, int, float]]:
    where = location_of(url)
    try:
        return media.list_archives(where)
    except (VolpackError, OSError) as exc:
        raise MediumError(
            f"prune --merge: listing {where} failed; nothing deleted{done}: {exc}; fix the "
            "medium and retry"
        ) from exc


def _done(written: dict[str, ArchiveEntry]) -> str:
    if not written:
        return ""
    urls = ", ".join(e.urls[0] for e in written.values())
    return f" (the merged fulls written so far are kept and recorded: {urls})"


def replan(
    catalog: Catalog,
    shown: PrunePlan,
    written: dict[str, ArchiveEntry],
    *,
    source: str | None,
    tz: dt.tzinfo | None = None,
) -> PrunePlan:
    """The prune plan again with the recorded merged fulls standing in for their bases. It must
    remove exactly what the plan shown before the merges did, and keep every merged full;
    otherwise ChainError, nothing deleted."""
    policy: Policy = shown.policy
    final = plan(catalog, policy, source=source, tz=tz, stand_ins=written)
    kept = {e.uuid for e in final.keep}
    lost = [e for e in written.values() if e.uuid not in kept]
    want = {e.uuid for e in shown.remove}
    got = {e.uuid for e in final.remove}
    if lost or want != got:
        what = (
            f"merged full {lost[0].uuid} is not taken as a base"
            if lost
            else f"the plan changed ({len(got)} archives to delete instead of {len(want)})"
        )
        raise ChainError(
            f"prune --merge: after merging, {what}; nothing deleted; the merged fulls are "
            f"recorded ({', '.join(e.urls[0] for e in written.values())}); run the prune again"
        )
    return final
