"""The catalog store: record, query and forget archives in SQLite, safely across processes.

Rows describe archives that live on media; the catalog never reads or deletes archive bytes
(see prune.py / rebuild.py for that). Every write is one ``BEGIN IMMEDIATE`` transaction. A URL
holds one archive at a time: recording an archive at a URL marks the others there superseded.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from volpack.catalog.schema import connect, sqlite_error
from volpack.errors import ArchiveIdClash, CatalogError, UsageError
from volpack.media import canonical_url, holds_one_archive

_COLUMNS = (
    "uuid",
    "created",
    "source_path",
    "source_kind",
    "volume_size",
    "fs_uuid",
    "block_size",
    "used_blocks",
    "archive_size",
    "stored_bytes",
    "format_version",
    "digest",
    "verify_ok",
    "verified_at",
    "recorded_at",
    "description",
    "kind",
    "chain_id",
    "chain_seq",
    "base_uuid",
    "base_digest",
    "base_state_digest",
    "state_digest",
    "encrypted",
    "key_slots",
)
# Columns a recording may not know (NULL): it never erases what another recording read.
_CHAIN = frozenset(_COLUMNS[_COLUMNS.index("kind") :])
KINDS = ("full", "incremental", "merged")
_HEXPREFIX = re.compile(r"^[0-9a-fA-F-]{1,36}$")


@dataclass(frozen=True, slots=True)
class Supersession:
    """A location that no longer holds the archive: archive ``by`` was written there, as recorded
    at ``at`` (seconds since the epoch)."""

    url: str
    by: str
    at: float


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    """One archive as the catalog knows it. Times are seconds since the epoch (UTC)."""

    uuid: str
    created: float
    source_path: str
    source_kind: str
    volume_size: int
    block_size: int
    used_blocks: int
    format_version: str
    urls: tuple[str, ...] = ()
    fs_uuid: str | None = None
    archive_size: int | None = None
    stored_bytes: int | None = None
    digest: str | None = None
    verify_ok: bool | None = None
    verified_at: float | None = None
    recorded_at: float = 0.0
    description: dict[str, Any] = field(default_factory=dict)
    # Locations overwritten by later archives; ``urls`` lists only those that still hold it.
    superseded: tuple[Supersession, ...] = ()
    # The chain (format 1.2): ``kind`` is one of KINDS, or None when not known (an archive
    # recorded before the catalog knew chains). An incremental names its base by uuid and digest
    # (hex) and the state the base leaves, which a merged full of the same chain leaves too.
    kind: str | None = "full"
    chain_id: str | None = None
    chain_seq: int | None = 0
    base_uuid: str | None = None
    base_digest: str | None = None
    base_state_digest: str | None = None
    state_digest: str | None = None
    # Sealing (format 1.3 ENCRYPTED): None when not known (recorded before the catalog kept it).
    # ``key_slots`` holds each slot's fingerprint (``x25519:…``), a hash of public bytes.
    encrypted: bool | None = False
    key_slots: tuple[str, ...] | None = ()

    @property
    def is_superseded(self) -> bool:
        """Every recorded location was overwritten: no medium holds this archive any more."""
        return bool(self.superseded) and not self.urls

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (what ``list --json`` and ``show --json`` print)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _COLUMNS}
        out["urls"] = list(self.urls)
        out["key_slots"] = None if self.key_slots is None else list(self.key_slots)
        out["superseded"] = [
            {"url": s.url, "by": s.by, "at": s.at, "at_iso": _iso(s.at)} for s in self.superseded
        ]
        out["is_superseded"] = self.is_superseded
        out["created_iso"] = _iso(self.created)
        out["verified_at_iso"] = _iso(self.verified_at) if self.verified_at is not None else None
        return out


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest link ever recorded of one chain: its sequence, archive and state digest."""

    chain_id: str
    chain_seq: int
    uuid: str
    state_digest: str | None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Catalog:
    """An open catalog file. Use ``Catalog.open(path)``; close it or use it as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str, *, create: bool = True) -> Catalog:
        """Open (and with ``create`` make) the catalog at ``path``; CatalogError if unusable."""
        return cls(connect(path, create=create), path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise sqlite_error(
                self.path,
                exc,
                "update the catalog",
                f"{self.path}: cannot update the catalog: {{exc}}; retry",
            ) from exc
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise sqlite_error(
                self.path,
                exc,
                "update the catalog",
                f"{self.path}: catalog update failed: {{exc}}; retry",
            ) from exc
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def add(self, entry: ArchiveEntry) -> None:
        """Insert or update one archive and add its URLs.

        Recording the same archive again (a rebuild, a second copy) keeps the earliest recording
        time and an existing verify status unless the new entry carries one. The entry's URLs are
        where it is now, so any other archive recorded at one of them is marked superseded there
        (``--force`` wrote over it) and this archive's own row there is live again. URLs are
        stored canonical (``media.canonical_url``), so two spellings of one file are one location.
        A URL that names a position, not one archive (a tape without ``#N``), supersedes nothing:
        archives written through it were appended.
        """
        now = time.time()
        urls = tuple(dict.fromkeys(canonical_url(url) for url in entry.urls))
        row = {name: getattr(entry, name) for name in _COLUMNS}
        row["description"] = json.dumps(entry.description, sort_keys=True, default=str)
        row["recorded_at"] = entry.recorded_at or now
        row["verify_ok"] = None if entry.verify_ok is None else int(entry.verify_ok)
        row["encrypted"] = None if entry.encrypted is None else int(entry.encrypted)
        row["key_slots"] = None if entry.key_slots is None else json.dumps(list(entry.key_slots))
        names = ", ".join(_COLUMNS)
        marks = ", ".join(f":{n}" for n in _COLUMNS)
        keep_first = {"uuid", "recorded_at", "verify_ok", "verified_at"}
        # A recording that does not know the chain (NULL) never erases what another one read.
        updates = ", ".join(
            f"{n} = coalesce(excluded.{n}, {n})" if n in _CHAIN else f"{n} = excluded.{n}"
            for n in _COLUMNS
            if n not in keep_first
        )
        with self._write() as db:
            self._check_same_archive(db, entry, urls)
            db.execute(
                f"INSERT INTO archives ({names}) VALUES ({marks}) ON CONFLICT (uuid) DO UPDATE SET "
                f"{updates}, verify_ok = coalesce(excluded.verify_ok, verify_ok), "
                "verified_at = coalesce(excluded.verified_at, verified_at)",
                row,
            )
            db.executemany(
                "UPDATE locations SET superseded_by = ?, superseded_at = ? "
                "WHERE url = ? AND uuid <> ? AND superseded_by IS NULL",
                [(entry.uuid, now, url, entry.uuid) for url in urls if holds_one_archive(url)],
            )
            db.executemany(
                "INSERT INTO locations (uuid, url, added) VALUES (?, ?, ?) "
                "ON CONFLICT (uuid, url) DO UPDATE SET superseded_by = NULL, superseded_at = NULL",
                [(entry.uuid, url, now) for url in urls],
            )
            if entry.chain_id and entry.chain_seq is not None:
                # Only forward: recording an older link again (a rebuild) never lowers the head.
                db.execute(
                    "INSERT INTO chain_heads (chain_id, chain_seq, uuid, state_digest, "
                    "recorded_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (chain_id) DO UPDATE SET "
                    "chain_seq = excluded.chain_seq, uuid = excluded.uuid, "
                    "state_digest = excluded.state_digest, recorded_at = excluded.recorded_at "
                    "WHERE excluded.chain_seq > chain_heads.chain_seq",
                    (entry.chain_id, entry.chain_seq, entry.uuid, entry.state_digest, now),
                )

    def add_rewrap(self, entry: ArchiveEntry, old_digest: str) -> None:
        """Record ``entry``, a rewrap (``volpack rewrap``) of the archive whose digest is
        ``old_digest``: the same id and sealed records, new key slots, so its own digest. When
        the catalog records that archive, the rewrap's URLs are added as more places holding it
        and its slots' fingerprints to the archive's (replace them, when the rewrap replaced every
        copy in place); the row keeps the digest that its chain's links name. Otherwise (not recorded, or recorded as this rewrap) as ``add``; an id
        recorded with yet another digest is refused (ArchiveIdClash)."""
        now = time.time()
        urls = tuple(dict.fromkeys(canonical_url(url) for url in entry.urls))
        with self._write() as db:
            row = db.execute(
                "SELECT digest, key_slots FROM archives WHERE uuid = ?", (entry.uuid,)
            ).fetchone()
            if row is not None and row[0] == old_digest and entry.digest != old_digest:
                live = {
                    r[0]
                    for r in db.execute(
                        "SELECT url FROM locations WHERE uuid = ? AND superseded_by IS NULL",
                        (entry.uuid,),
                    )
                }
                # Rewrapped in place (every copy replaced): only the new slots are left; else
                # the slots of every copy, since each copy opens with its own.
                slots = [] if live <= set(urls) or not row[1] else list(json.loads(row[1]))
                slots += [s for s in entry.key_slots or () if s not in slots]
                db.execute(
                    "UPDATE archives SET key_slots = ? WHERE uuid = ?",
                    (json.dumps(slots), entry.uuid),
                )
                self._place(db, entry.uuid, urls, now)
                return
        self.add(entry)

    @staticmethod
    def _place(db: sqlite3.Connection, uuid: str, urls: tuple[str, ...], now: float) -> None:
        """``uuid`` is now at ``urls`` too: other archives recorded there are superseded (as
        ``add`` does)."""
        db.executemany(
            "UPDATE locations SET superseded_by = ?, superseded_at = ? "
            "WHERE url = ? AND uuid <> ? AND superseded_by IS NULL",
            [(uuid, now, url, uuid) for url in urls if holds_one_archive(url)],
        )
        db.executemany(
            "INSERT INTO locations (uuid, url, added) VALUES (?, ?, ?) "
            "ON CONFLICT (uuid, url) DO UPDATE SET superseded_by = NULL, superseded_at = NULL",
            [(uuid, url, now) for url in urls],
        )

    def _check_same_archive(
        self, db: sqlite3.Connection, entry: ArchiveEntry, urls: tuple[str, ...]
    ) -> None:
        """Refuse a second, different archive under an id already recorded: both claim one uuid,
        and chains, restore by id and prune would mix them up."""
        row = db.execute("SELECT digest FROM archives WHERE uuid = ?", (entry.uuid,)).fetchone()
        if row is None or not row[0] or not entry.digest or row[0] == entry.digest:
            return
        where = [
            r[0] for r in db.execute("SELECT url FROM locations WHERE uuid = ?", (entry.uuid,))
        ]
        raise ArchiveIdClash(
            f"{self.path}: archive {entry.uuid} at {', '.join(urls) or 'a stream'} has digest "
            f"{entry.digest[:16]}…, the catalog records {row[0][:16]}… for the same id at "
            f"{', '.join(where) or 'no location'}: two different archives claim one id; not "
            "recorded: check both with 'volpack verify' and move the wrong one away"
        )

    def record_verify(self, uuid: str, ok: bool, when: float | None = None) -> None:
        """Store the outcome of a verify run; CatalogError when the archive is not catalogued."""
        when = time.time() if when is None else when
        with self._write() as db:
            cur = db.execute(
                "UPDATE archives SET verify_ok = ?, verified_at = ? WHERE uuid = ?",
                (int(bool(ok)), when, uuid),
            )
            if cur.rowcount == 0:
                raise CatalogError(
                    f"{self.path}: archive {uuid} is not in the catalog; nothing recorded"
                )

    def remove_location(self, uuid: str, url: str) -> bool:
        """Forget one copy; the archive row goes when its last location that still holds it does
        (superseded ones go with it). True if the row went."""
        with self._write() as db:
            db.execute("DELETE FROM locations WHERE uuid = ? AND url = ?", (uuid, url))
            left = db.execute(
                "SELECT 1 FROM locations WHERE uuid = ? AND superseded_by IS NULL LIMIT 1", (uuid,)
            ).fetchone()
            if left is None:
                db.execute("DELETE FROM archives WHERE uuid = ?", (uuid,))
                return True
        return False

    def forget(self, uuid: str) -> None:
        """Drop an archive and all its locations from the catalog (the media are not touched)."""
        with self._write() as db:
            db.execute("DELETE FROM archives WHERE uuid = ?", (uuid,))

    # -- reading -------------------------------------------------------------------------------
    def _query(self, where: str, params: tuple[Any, ...], tail: str = "") -> list[ArchiveEntry]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM archives {where} ORDER BY created, uuid {tail}"
        try:
            rows = self._conn.execute(sql, params).fetchall()
            urls: dict[str, list[str]] = {}
            gone: dict[str, list[Supersession]] = {}
            if rows:
                for uuid, url, by, at in self._conn.execute(
                    "SELECT uuid, url, superseded_by, superseded_at FROM locations WHERE uuid IN "
                    f"(SELECT uuid FROM archives {where} ORDER BY created, uuid {tail}) "
                    "ORDER BY added, url",
                    params,
                ):
                    if by is None:
                        urls.setdefault(uuid, []).append(url)
                    else:
                        gone.setdefault(uuid, []).append(Supersession(url, by, at or 0.0))
        except sqlite3.Error as exc:
            raise self._read_error(exc) from exc
        return [_entry(row, urls.get(row[0], []), gone.get(row[0], [])) for row in rows]

    def _read_error(self, exc: sqlite3.Error) -> CatalogError:
        return sqlite_error(
            self.path, exc, "read the catalog", f"{self.path}: cannot read the catalog: {{exc}}"
        )

    def find(
        self,
        *,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        url: str | None = None,
    ) -> list[ArchiveEntry]:
        """Archives matching every given filter, oldest first. ``source`` is a source path;
        ``url`` a location in any spelling (compared canonical), matched only where it still holds
        the archive."""
        clauses: list[str] = []
        params: list[Any] = []
        if source is not None:
            clauses.append("source_path = ?")
            params.append(source)
        if since is not None:
            clauses.append("created >= ?")
            params.append(since)
        if until is not None:
            clauses.append("created <= ?")
            params.append(until)
        if url is not None:
            clauses.append(
                "uuid IN (SELECT uuid FROM locations WHERE url = ? AND superseded_by IS NULL)"
            )
            params.append(canonical_url(url))
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._query(where, tuple(params))

    def chain_head(self, chain_id: str) -> ChainHead | None:
        """The newest link ever recorded of chain ``chain_id`` (kept after prune), or None."""
        try:
            row = self._conn.execute(
                "SELECT chain_id, chain_seq, uuid, state_digest FROM chain_heads "
                "WHERE chain_id = ?",
                (chain_id,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._read_error(exc) from exc
        return None if row is None else ChainHead(*row)

    def sources(self) -> list[str]:
        """Every source path with at least one archive, sorted."""
        try:
            rows = self._conn.execute("SELECT DISTINCT source_path FROM archives ORDER BY 1")
            return [r[0] for r in rows]
        except sqlite3.Error as exc:
            raise self._read_error(exc) from exc

    def get(self, id_or_prefix: str) -> ArchiveEntry:
        """The one archive whose uuid starts with ``id_or_prefix`` (hyphens and case ignored)."""
        text = id_or_prefix.strip()
        if not _HEXPREFIX.match(text):
            raise UsageError(f"'{id_or_prefix}': not an archive id; use a uuid or a unique prefix")
        key = text.replace("-", "").lower()
        if not key:
            raise UsageError(f"'{id_or_prefix}': not an archive id; use a uuid or a unique prefix")
        found = self._query("WHERE replace(uuid, '-', '') LIKE ?", (key + "%",), "LIMIT 3")
        if not found:
            raise CatalogError(f"{self.path}: no archive with id {text}; see 'volpack list'")
        if len(found) > 1:
            raise CatalogError(
                f"{self.path}: id prefix {text} matches several archives "
                f"({', '.join(e.uuid for e in found[:2])}, …); give more characters"
            )
        return found[0]

    def resolve(self, volume: str, at_time: float) -> ArchiveEntry:
        """The newest archive of ``volume`` made at or before ``at_time``."""
        found = self._query("WHERE source_path = ? AND created <= ?", (volume, at_time), "")
        if not found:
            older = self.find(source=volume)
            hint = (
                f"its oldest archive is from {_iso(older[0].created)}"
                if older
                else "see 'volpack list' for the recorded sources"
            )
            raise CatalogError(
                f"{volume}: no archive at or before {_iso(at_time)} in {self.path}; {hint}"
            )
        return found[-1]


def _entry(row: tuple[Any, ...], urls: list[str], gone: list[Supersession]) -> ArchiveEntry:
    v = dict(zip(_COLUMNS, row, strict=True))
    try:
        description = json.loads(v["description"] or "{}")
    except ValueError:
        description = {}
    return ArchiveEntry(
        uuid=v["uuid"],
        created=v["created"],
        source_path=v["source_path"],
        source_kind=v["source_kind"],
        volume_size=v["volume_size"],
        block_size=v["block_size"],
        used_blocks=v["used_blocks"],
        format_version=v["format_version"],
        urls=tuple(urls),
        fs_uuid=v["fs_uuid"],
        archive_size=v["archive_size"],
        stored_bytes=v["stored_bytes"],
        digest=v["digest"],
        verify_ok=None if v["verify_ok"] is None else bool(v["verify_ok"]),
        verified_at=v["verified_at"],
        recorded_at=v["recorded_at"],
        description=description if isinstance(description, dict) else {},
        superseded=tuple(gone),
        kind=v["kind"],
        chain_id=v["chain_id"],
        chain_seq=v["chain_seq"],
        base_uuid=v["base_uuid"],
        base_digest=v["base_digest"],
        base_state_digest=v["base_state_digest"],
        state_digest=v["state_digest"],
        encrypted=None if v["encrypted"] is None else bool(v["encrypted"]),
        key_slots=_key_slots(v["key_slots"]),
    )


def _key_slots(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return tuple(str(v) for v in value) if isinstance(value, list) else None
