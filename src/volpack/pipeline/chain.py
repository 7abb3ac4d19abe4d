"""Chains of archives: find an incremental's bases and read the state a chain leaves.

A base is looked for in the incremental's own directory or prefix first, then through the
catalog by UUID, then in the places given with ``--search``; it must be the archive the link
names (UUID and digest), or one that leaves the same state (same chain, state digest and volume
size: a merged full standing in for the links it replaced). ``ChainView`` serves the newest
state: each block from the newest archive that covers it. Library code: no printing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from volpack import media
from volpack.errors import ChainError, FormatError, MediumError, UsageError, VolpackError
from volpack.extents import Extents
from volpack.format import records as R
from volpack.format.hashtable import HashTable
from volpack.format.random_access import DEFAULT_CACHE, Archive, open_archive, zero_views

if TYPE_CHECKING:
    from volpack.format.keyring import Keyring

MAX_LINKS = 10000
log = logging.getLogger("volpack.chain")  # the CLI exits 1 after its warnings


def parent_location(url: str) -> str | None:
    """The directory or prefix holding the archive at ``url``, or None for media that list
    nothing (pipes, tapes)."""
    scheme = media.scheme_of(url)
    if scheme == "-" or not media.capabilities(url).can_list:
        return None
    if scheme == "file":
        return os.path.dirname(os.path.abspath(media.canonical_url(url))) or "/"
    return url.rsplit("/", 1)[0] + "/"


def stands_for(candidate: Archive, child: R.Header) -> bool:
    """Whether ``candidate`` is the base the ``child`` header's link names, or leaves the same
    state in the same chain."""
    link = child.base
    assert link is not None
    if candidate.uuid == link.uuid:
        return candidate.trailer.digest == link.digest
    # A later incremental that changed nothing leaves the same state too, but resolving through
    # it would loop back to the child: only a full or an earlier link may stand in.
    return (
        candidate.header.hashed
        and candidate.header.chain_id == child.chain_id
        and (not candidate.incremental or candidate.header.chain_seq < child.chain_seq)
        and candidate.trailer.state_digest == link.state_digest
        and candidate.size == link.volume_size
    )


@dataclass(frozen=True, slots=True)
class Places:
    """Where bases are looked for besides the incremental's own directory or prefix."""

    search: tuple[str, ...] = ()
    catalog: str | None = None
    keyring: Keyring | None = None  # opens the links of an encrypted chain


def _catalog_urls(catalog: str | None, uuid: str) -> list[str]:
    if catalog is None or not os.path.exists(catalog):
        return []
    from volpack.catalog.store import Catalog

    try:
        with Catalog.open(catalog, create=False) as cat:
            return list(cat.get(uuid).urls)
    except VolpackError:
        return []


def _holds(url: str, uuid: str) -> bool:
    """Whether the archive at ``url``, which did not open, still says it is ``uuid``."""
    from volpack.catalog.identity import header_at

    try:
        return header_at(url).uuid == uuid
    except (VolpackError, OSError):
        return False


def _listing(place: str) -> list[str]:
    try:
        return [u for u, _, _ in media.list_archives(place)]
    except (MediumError, UsageError):
        return []


def find_base(
    child: R.Header,
    child_url: str,
    places: Places,
    opened: dict[str, Archive],
    cache_bytes: int = DEFAULT_CACHE,
) -> Archive:
    """The archive the ``child`` header's base link names (or one of the same state), checked.
    Archives opened on the way are kept in ``opened`` (by canonical URL) for the caller to close."""
    link = child.base
    assert link is not None
    tried: list[str] = []
    replaced: str | None = None
    damaged: str | None = None  # where the named base is, unreadable
    candidates: list[str] = []
    home = parent_location(child_url)
    for place in ([home] if home else []) + list(places.search):
        if media.scheme_of(place) == "file" and os.path.isfile(place):
            candidates.append(place)
        else:
            candidates.extend(_listing(place))
    candidates = _catalog_urls(places.catalog, link.uuid) + candidates
    seen: set[str] = set()
    # The archive the link names wins over one that only leaves the same state (an empty
    # incremental, a merged full): otherwise a link present on the medium would go unread.
    stand_in: tuple[Archive, str] | None = None

    def keyed(arch: Archive, url: str) -> Archive:
        """The base chosen: a sealed one must open with the keys given (else exit 12)."""
        if not arch.sealed:
            return arch
        key = media.canonical_url(url)
        arch.close()
        del opened[key]
        arch = open_archive(url, cache_bytes=cache_bytes, keyring=places.keyring)
        opened[key] = arch
        return arch

    for url in candidates:
        key = media.canonical_url(url)
        if key in seen or (child_url != "-" and key == media.canonical_url(child_url)):
            continue
        seen.add(key)
        arch = opened.get(key)
        if arch is None:
            try:
                # Public first: candidates sealed to other keys are skipped, not refused.
                arch = open_archive(url, cache_bytes=cache_bytes, public=True)
            except (FormatError, MediumError, UsageError) as exc:
                if damaged is None and _holds(url, link.uuid):
                    damaged = f"{url} does not open ({exc})"
                continue
            opened[key] = arch
        tried.append(url)
        if arch.uuid == link.uuid and arch.trailer.digest == link.digest:
            return keyed(arch, url)
        if stand_in is None and stands_for(arch, child):
            stand_in = (arch, url)
        if arch.uuid == link.uuid:
            replaced = url
    if stand_in is not None:
        if replaced is not None:
            damaged = (
                f"{replaced} was rewritten (digest {opened[media.canonical_url(replaced)].digest})"
            )
        if damaged is not None:
            # The state is the same, so the restore is right; the damaged copy must not go
            # unnoticed, or the next prune could delete the stand-in it now relies on.
            log.warning(
                "%s: its base %s at %s; using %s instead, which leaves the same state (chain "
                "%s, state %s…); replace or delete the damaged base",
                child_url,
                link.uuid,
                damaged,
                stand_in[1],
                child.chain_id,
                link.state_digest.hex()[:16],
            )
        return keyed(*stand_in)
    if replaced is not None:
        raise ChainError(
            f"{child_url}: its base {link.uuid} at {replaced} has digest "
            f"{opened[media.canonical_url(replaced)].digest}, the link records "
            f"{link.digest.hex()}: the base was replaced or rewritten; restore needs the "
            "original base (or a merge of it), or back up a new full"
        )
    looked = ", ".join([*([home] if home else []), *places.search, "the catalog"])
    raise ChainError(
        f"{child_url}: base archive {link.uuid} (state {link.state_digest.hex()[:16]}…) not "
        f"found (looked in {looked}); give its directory or prefix with --search"
    )


def resolve_chain(top: Archive, places: Places, cache_bytes: int = DEFAULT_CACHE) -> list[Archive]:
    """``top`` and its bases down to a full, newest first; every link checked."""
    opened: dict[str, Archive] = {}
    chain = [top]
    seen = {top.uuid}
    try:
        while chain[-1].incremental:
            child = chain[-1]
            base = find_base(child.header, child.url, places, opened, cache_bytes)
            if base.uuid in seen or len(chain) > MAX_LINKS:
                raise ChainError(
                    f"{child.url}: its base {base.uuid} is already in the chain (a cycle); the "
                    "archives were tampered with"
                )
            if (base.block_size, base.header.hash_block_size) != (
                child.block_size,
                child.header.hash_block_size,
            ):
                raise ChainError(
                    f"{child.url}: block size {child.block_size} / hash block "
                    f"{child.header.hash_block_size}, its base {base.url} has {base.block_size} / "
                    f"{base.header.hash_block_size}; they are not one chain"
                )
            seen.add(base.uuid)
            chain.append(base)
    except BaseException:
        for arch in opened.values():
            if arch not in chain:
                arch.close()
        raise
    for arch in opened.values():
        if arch not in chain:
            arch.close()
    # One frame cache budget for the chain: ten links each keeping the whole budget held 700 MiB
    # while restoring a 10-link chain.
    by_frame: dict[int, Archive] = {}
    for arch in chain:
        arch.limit_cache(cache_bytes // len(chain))
        first = by_frame.setdefault(arch.header.frame_size, arch)
        if first is not arch:
            arch.share_buffers(first)
    return chain


def ownership(
    covers: list[Extents | None], used: Iterable[Extents], size: int, unit: int
) -> tuple[list[Extents], list[Extents]]:
    """For each archive of a chain (newest first; ``covers``: the runs of ``unit``-sized blocks
    it covers, None for a full, which covers all), the byte runs it owns (covers and no newer
    archive does) and its used byte runs inside them. Run arithmetic only: tables, never data."""
    whole = Extents.span(0, -(-size // unit))
    taken = Extents.empty()
    owned: list[Extents] = []
    for covered in covers:
        mine = (whole if covered is None else covered).subtract(taken).intersect(whole)
        taken = taken.union(mine)
        owned.append(mine.scale_in(unit).clip(0, size))
    return owned, [u.intersect(own) for u, own in zip(used, owned, strict=True)]


class ChainView:
    """The volume a chain leaves, read at random: each block from the newest archive that covers
    it (a full covers all). Same reading interface as ``Archive`` for serve, restore and
    merge."""

    def __init__(self, chain: list[Archive]) -> None:
        self.chain = chain
        top = chain[0]
        self.top = top
        self.url = top.url
        self.size = top.size
        self.block_size = top.block_size
        self.header = top.header
        self.desc = top.desc
        self.frame_size = top.frame_size
        # By block, not hash block: a FINE incremental covers parts of hash blocks.
        self.owned, self.used_parts = ownership(
            [arch.table.used().union(arch.zeros) if arch.incremental else None for arch in chain],
            (arch.used_bytes() for arch in chain),
            self.size,
            self.block_size,
        )
        self._used = Extents.empty()
        for part in self.used_parts:
            self._used = self._used.union(part)
        starts = np.concatenate([o.starts for o in self.owned] or [np.zeros(0, np.int64)])
        ends = np.concatenate([o.ends for o in self.owned] or [np.zeros(0, np.int64)])
        owner = np.concatenate(
            [np.full(len(o), i, np.int64) for i, o in enumerate(self.owned)]
            or [np.zeros(0, np.int64)]
        )
        order = np.argsort(starts, kind="stable")
        self._starts, self._ends, self._owner = starts[order], ends[order], owner[order]

    @property
    def uuid(self) -> str:
        return self.top.uuid

    @property
    def digest(self) -> str:
        return self.top.digest

    @property
    def hash_table(self) -> HashTable | None:
        return self.top.hash_table

    def used_bytes(self) -> Extents:
        return self._used

    @property
    def used(self) -> Extents:
        return self._used.scale_out(self.block_size)

    def spans(self, offset: int, length: int) -> list[tuple[Archive | None, int, int, int]]:
        """Where volume bytes ``[offset, offset+length)`` are, in order, without reading them:
        ``(archive, seq, within, take)`` for ``take`` bytes at ``within`` of that link's frame
        ``seq``, or ``(None, -1, 0, take)`` for zeros (unused, or past every link's volume)."""
        end = offset + length
        spans: list[tuple[Archive | None, int, int, int]] = []
        lo = int(np.searchsorted(self._ends, offset, side="right"))
        hi = int(np.searchsorted(self._starts, end, side="left"))
        pos = offset
        for s, e, k in zip(
            self._starts[lo:hi].tolist(),
            self._ends[lo:hi].tolist(),
            self._owner[lo:hi].tolist(),
            strict=True,
        ):
            s, e = max(s, offset), min(e, end)
            if s > pos:  # not owned: past every archive's volume (cannot happen inside size)
                spans.append((None, -1, 0, s - pos))
            arch = self.chain[k]
            spans.extend(
                (None if seq < 0 else arch, seq, within, take)
                for seq, within, take in arch.spans(s, e - s)
            )
            pos = e
        if pos < end:
            spans.append((None, -1, 0, end - pos))
        return spans

    def read_views(self, offset: int, length: int) -> list[memoryview]:
        views: list[memoryview] = []
        for arch, seq, within, take in self.spans(offset, length):
            if arch is None:
                zero_views(views, take)
            else:
                views.append(arch.frame(seq)[within : within + take])
        return views

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(self.read_views(offset, length))

    def close(self) -> None:
        for arch in self.chain:
            arch.close()

    def __enter__(self) -> ChainView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_chain(
    url: str, places: Places | None = None, *, cache_bytes: int = DEFAULT_CACHE
) -> Archive | ChainView:
    """The archive at ``url``, or for an incremental the view of its whole chain (what serve and
    mount offer: the volume as it was when that archive was made); an encrypted one opened with
    the keyring of ``places``."""
    keyring = places.keyring if places is not None else None
    top = open_archive(url, cache_bytes=cache_bytes, keyring=keyring)
    if not top.incremental:
        return top
    try:
        return ChainView(resolve_chain(top, places or Places(), cache_bytes))
    except BaseException:
        top.close()
        raise
