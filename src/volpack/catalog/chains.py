"""The chain graph as the catalog records it: which catalogued archive each incremental builds on.

Pure functions over catalog rows (``ArchiveEntry``): they never open media or the catalog. A base
is the archive the link names (uuid, and digest when both sides know it), or, when that one is not
catalogued, a live archive of the same chain that leaves the same state (a merged full). ``list
--chains`` draws the graph; prune keeps every base of what it keeps and stops on any doubt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from volpack.catalog.store import ArchiveEntry
from volpack.errors import ChainError

# How an archive's base stands in the catalog.
FULL = "full"  # no base: a full or a merged full
OK = "ok"  # the archive the link names is catalogued and on a medium
STAND_IN = "stand-in"  # not catalogued, but an archive of the same state is
MISSING = "missing"  # the catalog knows no archive that can be the base
UNKNOWN = "unknown"  # recorded before the catalog knew chains: the link is not known
REPLACED = "replaced"  # the catalogued archive with the base's id has another digest
GONE = "superseded"  # the base is catalogued, but every location of it was written over

DOUBTS = (MISSING, UNKNOWN, REPLACED, GONE)


@dataclass(frozen=True, slots=True)
class Link:
    """An archive and its base as found in the catalog (``base`` is None unless OK/STAND_IN,
    or GONE/REPLACED: then it is the catalogued archive that cannot serve)."""

    entry: ArchiveEntry
    state: str
    base: ArchiveEntry | None = None


class ChainIndex:
    """Catalog rows indexed by uuid and by (chain, state) for finding bases and stand-ins."""

    def __init__(self, entries: Iterable[ArchiveEntry]) -> None:
        self.entries = sorted(entries, key=lambda e: (e.created, e.uuid))
        self.by_uuid = {e.uuid: e for e in self.entries}
        self._by_state: dict[tuple[str, str], list[ArchiveEntry]] = {}
        for e in self.entries:
            if e.chain_id and e.state_digest and not e.is_superseded:
                self._by_state.setdefault((e.chain_id, e.state_digest), []).append(e)

    def link(self, entry: ArchiveEntry) -> Link:
        """Where ``entry``'s base is in the catalog, and how it stands."""
        if entry.kind in ("full", "merged"):
            return Link(entry, FULL)
        if entry.kind is None or entry.base_uuid is None:
            return Link(entry, UNKNOWN)
        base = self.by_uuid.get(entry.base_uuid)
        known = base is not None and base.digest and entry.base_digest
        if base is not None and known and base.digest != entry.base_digest:
            return Link(entry, REPLACED, base)
        if base is not None and not base.is_superseded:
            return Link(entry, OK, base)
        stand_in = self._stand_in(entry)
        if stand_in is not None:
            return Link(entry, STAND_IN, stand_in)
        return Link(entry, GONE, base) if base is not None else Link(entry, MISSING)

    def _stand_in(self, entry: ArchiveEntry) -> ArchiveEntry | None:
        if not entry.chain_id or not entry.base_state_digest:
            return None
        # A full (a merge is made after the links it replaces) needs nothing below it; an
        # incremental only if older, so that a later one that went back to the same state and
        # builds on ``entry`` is never taken for its base (a loop).
        found = [
            e
            for e in self._by_state.get((entry.chain_id, entry.base_state_digest), [])
            if e.uuid != entry.uuid and (e.kind in ("full", "merged") or e.created < entry.created)
        ]
        found.sort(key=lambda e: (e.kind in ("full", "merged"), e.created, e.uuid))
        return found[-1] if found else None


def doubt_message(link: Link, why: str) -> str:
    """The one line that stops a prune: ``link`` is in doubt; ``why`` says why it is needed."""
    e = link.entry
    head = f"prune: archive {e.uuid} of {e.source_path}, which {why},"
    seq = f"seq {e.chain_seq - 1}" if e.chain_seq else "seq ?"
    tail = "nothing deleted"
    if link.state == UNKNOWN:
        return (
            f"{head} was recorded before the catalog knew chains, so whether it needs a base "
            f"is not known; {tail}; run 'volpack catalog rebuild URL' on the place that holds it "
            "and prune again"
        )
    if link.state == MISSING:
        return (
            f"{head} needs base {e.base_uuid} (chain {e.chain_id}, {seq}), which the catalog "
            f"does not know; {tail}; run 'volpack catalog rebuild URL' on the place that holds "
            f"the base, or back up a new full of {e.source_path} and prune once the broken "
            "chain is no longer kept"
        )
    base = link.base
    assert base is not None
    if link.state == REPLACED:
        return (
            f"{head} needs base {e.base_uuid} with digest {(e.base_digest or '')[:16]}…, the "
            f"catalog records {(base.digest or '')[:16]}… for that id: two archives claim it; "
            f"{tail}; check them with 'volpack verify', or back up a new full of {e.source_path}"
        )
    first = base.superseded[0]
    return (
        f"{head} needs base {base.uuid}, whose location {first.url} was written over by "
        f"archive {first.by}; {tail}; put the base back and run 'volpack catalog rebuild URL', "
        f"or back up a new full of {e.source_path} and prune once the broken chain is no "
        "longer kept"
    )


def needed_bases(
    index: ChainIndex, kept: Sequence[ArchiveEntry], protected: Sequence[ArchiveEntry] = ()
) -> dict[str, tuple[str, ...]]:
    """Every archive some archive in ``kept`` or ``protected`` needs, transitively, mapped to
    the archives that need it directly. A ``kept`` archive whose chain is in doubt (a base
    missing, not known, replaced or written over, or a cycle) raises ChainError; a doubt below a
    ``protected`` archive (one this prune does not judge) only stops the walk there."""
    need: dict[str, list[str]] = {}
    # Archives whose bases were walked already: a chain of N links kept whole costs N steps, not
    # N²/2. Strict walks come first, so a strict walk stops only at archives checked strictly.
    walked: set[str] = set()
    for strict, seeds in ((True, kept), (False, protected)):
        for seed in seeds:
            seen = {seed.uuid}
            entry, why = seed, "the policy keeps" if strict else "this prune does not touch"
            while True:
                link = index.link(entry)
                if link.state == FULL:
                    break
                if link.state in DOUBTS:
                    if strict:
                        raise ChainError(doubt_message(link, why))
                    break
                base = link.base
                assert base is not None
                users = need.setdefault(base.uuid, [])
                if entry.uuid not in users:
                    users.append(entry.uuid)
                if base.uuid in seen:
                    if strict:
                        raise ChainError(
                            f"prune: archive {seed.uuid} of {seed.source_path}: its chain "
                            f"comes back to {base.uuid} (a cycle in the base links); nothing "
                            "deleted; the archives were tampered with: verify them"
                        )
                    break
                if base.uuid in walked:
                    break
                seen.add(base.uuid)
                entry, why = base, f"is kept as base of {entry.uuid[:8]}"
            walked.update(seen)
    return {k: tuple(v) for k, v in need.items()}


@dataclass(frozen=True, slots=True)
class Row:
    """One archive in a drawn chain: how its base stands, its depth below the chain's root (0 for
    the root), and the archive it was drawn under (None for the root)."""

    link: Link
    depth: int
    parent: str | None


def chain_trees(index: ChainIndex) -> list[list[Row]]:
    """The catalog as trees, oldest root first, each flattened depth-first with the incrementals
    built on an archive oldest first. A root is a full, or an incremental whose base is not in
    the catalog (its link says why). Stand-ins count as bases. Iterative: chains may be long."""
    links = [index.link(e) for e in index.entries]
    below: dict[str, list[Link]] = {}
    roots: list[Link] = []
    for link in links:
        if link.state in (OK, STAND_IN) and link.base is not None:
            below.setdefault(link.base.uuid, []).append(link)
        else:
            roots.append(link)
    shown: set[str] = set()
    trees: list[list[Row]] = []
    for root in roots:
        rows: list[Row] = []
        stack: list[tuple[Link, int, str | None]] = [(root, 0, None)]
        while stack:
            link, depth, parent = stack.pop()
            if link.entry.uuid in shown:
                continue
            shown.add(link.entry.uuid)
            rows.append(Row(link, depth, parent))
            kids = below.get(link.entry.uuid, [])
            stack.extend((k, depth + 1, link.entry.uuid) for k in reversed(kids))
        trees.append(rows)
    # A cycle of base links has no root; its members are shown alone so nothing is hidden.
    trees += [[Row(link, 0, None)] for link in links if link.entry.uuid not in shown]
    return trees
