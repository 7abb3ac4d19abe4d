"""The catalog's SQLite schema and connection set-up (WAL, busy timeout, schema version).

Only this module knows the DDL and its migrations. It opens connections in autocommit mode so
that callers run explicit ``BEGIN IMMEDIATE`` transactions, and it tells a full disk apart from a
damaged catalog in SQLite's errors; it never reads or writes archive data.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from volpack.errors import CatalogError, CatalogFull
from volpack.units import human

# 1: archives + locations. 2: a location row can be superseded (another archive was written to
# the same URL since; the row records which one and when). 3: the chain graph: per archive its
# kind, chain id and sequence, its base (uuid, digest, state digest) and its own state digest.
# 4: per archive whether it is encrypted and its key slots' fingerprints (never a key); per chain
# the highest sequence ever recorded and its state digest (rollback detection).
SCHEMA_VERSION = 4

# Below this much free space an I/O error from SQLite is taken for a full disk: growing the
# shared-memory index (32 KiB) or the write-ahead log (a few pages) is what fails first.
LOW_SPACE = 1 << 20

# How long a writer waits for another process's transaction before giving up. Backups of many
# volumes finishing together each hold the write lock for milliseconds, so this is generous.
BUSY_TIMEOUT_S = 60.0

# The newest link of each chain the catalog ever recorded. Rows only move forward and outlive
# the archives (prune and forget leave them): a medium that later offers a lower sequence of the
# chain is a rollback, whatever is still catalogued.
_CHAIN_HEADS = """
    CREATE TABLE IF NOT EXISTS chain_heads (
        chain_id        TEXT PRIMARY KEY,
        chain_seq       INTEGER NOT NULL,  -- the highest sequence recorded for the chain
        uuid            TEXT NOT NULL,     -- the archive that has it
        state_digest    TEXT,              -- the state it leaves (hex)
        recorded_at     REAL NOT NULL
    )
    """

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS archives (
        uuid            TEXT PRIMARY KEY,
        created         REAL NOT NULL,     -- seconds since the epoch (UTC)
        source_path     TEXT NOT NULL,
        source_kind     TEXT NOT NULL,
        volume_size     INTEGER NOT NULL,
        fs_uuid         TEXT,
        block_size      INTEGER NOT NULL,
        used_blocks     INTEGER NOT NULL,
        archive_size    INTEGER,
        stored_bytes    INTEGER,
        format_version  TEXT NOT NULL,
        digest          TEXT,
        verify_ok       INTEGER,           -- NULL: never verified; 1 good; 0 failed
        verified_at     REAL,
        recorded_at     REAL NOT NULL,
        description     TEXT NOT NULL,     -- JSON as the archive records it
        kind            TEXT,              -- full | incremental | merged; NULL: not known
        chain_id        TEXT,              -- NULL: before format 1.2, or not known
        chain_seq       INTEGER,           -- 0 for a full; NULL: not known
        base_uuid       TEXT,              -- an incremental's base; NULL for a full or not known
        base_digest     TEXT,              -- the base's digest as the base link records it
        base_state_digest TEXT,            -- the state the base leaves (a stand-in leaves it too)
        state_digest    TEXT,              -- the state this archive leaves
        encrypted       INTEGER,           -- 1 sealed (format 1.3), 0 not; NULL: not known
        key_slots       TEXT               -- JSON list of slot fingerprints; NULL: not known
    )
    """,
    "CREATE INDEX IF NOT EXISTS archives_by_source ON archives (source_path, created)",
    "CREATE INDEX IF NOT EXISTS archives_by_time ON archives (created)",
    "CREATE INDEX IF NOT EXISTS archives_by_base ON archives (base_uuid)",
    """
    CREATE TABLE IF NOT EXISTS locations (
        uuid    TEXT NOT NULL REFERENCES archives (uuid) ON DELETE CASCADE,
        url     TEXT NOT NULL,
        added   REAL NOT NULL,
        superseded_by   TEXT,              -- NULL: the archive is there; else the uuid written over it
        superseded_at   REAL,              -- when the overwrite was recorded
        PRIMARY KEY (uuid, url)
    )
    """,
    "CREATE INDEX IF NOT EXISTS locations_by_url ON locations (url)",
    _CHAIN_HEADS,
)

# Existing catalogs, one step per version. Version 1 recorded every archive written to one URL as
# if each were still there: all but the newest of them are marked superseded by the newest.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE locations ADD COLUMN superseded_by TEXT",
        "ALTER TABLE locations ADD COLUMN superseded_at REAL",
        """
        WITH ranked AS (
            SELECT l.uuid AS uuid, l.url AS url, a.created AS created,
                   first_value(l.uuid) OVER w AS newest,
                   first_value(a.created) OVER w AS newest_created
            FROM locations l JOIN archives a ON a.uuid = l.uuid
            WINDOW w AS (PARTITION BY l.url ORDER BY a.created DESC, l.uuid DESC)
        )
        UPDATE locations SET
            superseded_by = (SELECT newest FROM ranked r
                             WHERE r.uuid = locations.uuid AND r.url = locations.url),
            superseded_at = (SELECT newest_created FROM ranked r
                             WHERE r.uuid = locations.uuid AND r.url = locations.url)
        WHERE EXISTS (SELECT 1 FROM ranked r WHERE r.uuid = locations.uuid
                      AND r.url = locations.url AND r.newest <> r.uuid)
        """,
    ),
    # Version 2 did not record chains, and the base link is only in the archive's header. Before
    # format 1.2 there were no incrementals: those are fulls. A 1.2 archive whose description
    # says how it found its changes is an incremental (base not known); any other 1.2 archive
    # is not known (backup recorded no such description). Prune treats "not known" as a doubt
    # until 'catalog rebuild' reads the headers.
    2: (
        "ALTER TABLE archives ADD COLUMN kind TEXT",
        "ALTER TABLE archives ADD COLUMN chain_id TEXT",
        "ALTER TABLE archives ADD COLUMN chain_seq INTEGER",
        "ALTER TABLE archives ADD COLUMN base_uuid TEXT",
        "ALTER TABLE archives ADD COLUMN base_digest TEXT",
        "ALTER TABLE archives ADD COLUMN base_state_digest TEXT",
        "ALTER TABLE archives ADD COLUMN state_digest TEXT",
        """
        UPDATE archives SET kind = CASE
            WHEN format_version IN ('1.0', '1.1') THEN 'full'
            WHEN NOT json_valid(description) THEN NULL
            WHEN json_extract(description, '$.changes.method') IS NULL THEN NULL
            WHEN json_extract(description, '$.changes.method') = 'merge' THEN NULL
            ELSE 'incremental' END
        """,
        "UPDATE archives SET chain_seq = 0 WHERE kind = 'full'",
        "CREATE INDEX IF NOT EXISTS archives_by_base ON archives (base_uuid)",
    ),
    # Version 3 did not record sealing. Formats before 1.3 cannot be sealed; a 1.3 archive's
    # slots are known only from its header: "not known" until 'catalog rebuild' reads it. Chain
    # heads start from the links catalogued now.
    3: (
        "ALTER TABLE archives ADD COLUMN encrypted INTEGER",
        "ALTER TABLE archives ADD COLUMN key_slots TEXT",
        "UPDATE archives SET encrypted = 0, key_slots = '[]' "
        "WHERE format_version IN ('1.0', '1.1', '1.2')",
        _CHAIN_HEADS,
        """
        INSERT INTO chain_heads (chain_id, chain_seq, uuid, state_digest, recorded_at)
        SELECT chain_id, chain_seq, uuid, state_digest, recorded_at FROM (
            SELECT chain_id, chain_seq, uuid, state_digest, recorded_at,
                   row_number() OVER (PARTITION BY chain_id
                                      ORDER BY chain_seq DESC, created DESC) AS n
            FROM archives WHERE chain_id IS NOT NULL AND chain_seq IS NOT NULL
        ) WHERE n = 1
        """,
    ),
}


def connect(path: str, *, create: bool) -> sqlite3.Connection:
    """An autocommit connection with WAL and a busy timeout; creates the schema when asked."""
    if not create and not os.path.exists(path):
        raise CatalogError(
            f"{path}: no catalog here; back up a volume first, or run "
            "'volpack catalog rebuild URL' to rebuild it from the media"
        )
    if create:
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise full_error(path, "create the catalog directory") from exc
            raise CatalogError(
                f"{parent}: cannot create the catalog directory: {exc.strerror}"
            ) from exc
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise CatalogError(
            f"{path}: cannot open the catalog: {exc}; check the path and permissions"
        ) from exc
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL lets readers run while one writer commits; it needs a local filesystem (not NFS).
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise CatalogError(
                f"{path}: the catalog cannot use write-ahead logging (journal mode {mode}); "
                "put it on a local filesystem"
            )
        conn.execute("PRAGMA synchronous = FULL")
        _ensure_schema(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise sqlite_error(
            path,
            exc,
            "open the catalog",
            f"{path}: not a usable catalog ({{exc}}); move it away and run "
            "'volpack catalog rebuild URL'",
        ) from exc
    except CatalogError:
        conn.close()
        raise
    return conn


def _ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise CatalogError(
            f"{path}: catalog schema version {version} is newer than this volpack's "
            f"{SCHEMA_VERSION}; upgrade volpack"
        )
    # Several processes may open a new catalog at once: the immediate transaction serialises them
    # and the second one finds the schema already there.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in _DDL:
                conn.execute(statement)
        else:
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def sqlite_error(path: str, exc: sqlite3.Error, doing: str, otherwise: str) -> CatalogError:
    """The one-line error for a failed SQLite call on the catalog at ``path``. A full disk and
    other I/O trouble have other remedies than a damaged file, so they get their own words;
    anything else gets ``otherwise`` (the caller's message, ``{exc}`` filled in)."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    free = free_space(path)
    if name == "SQLITE_FULL" or (
        name.startswith("SQLITE_IOERR") and free is not None and free < LOW_SPACE
    ):
        return full_error(path, doing, free)
    if name.startswith("SQLITE_IOERR"):
        return CatalogError(
            f"{path}: cannot {doing}: I/O error ({name}: {exc}); the catalog is not known to be "
            "damaged: check the disk and its kernel log, then retry"
        )
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
        return CatalogError(
            f"{path}: cannot {doing}: {exc} ({name}); check the permissions of the catalog, its "
            "-wal/-shm files and their directory"
        )
    return CatalogError(otherwise.replace("{exc}", str(exc)))


def full_error(path: str, doing: str, free: int | None = None) -> CatalogFull:
    """No room left where the catalog lives: name the filesystem, its free space, the remedy."""
    free = free_space(path) if free is None else free
    left = "unknown space" if free is None else f"{human(free)} ({free} bytes)"
    return CatalogFull(
        f"{path}: cannot {doing}: the filesystem holding the catalog is full ({left} free in "
        f"{os.path.dirname(os.path.abspath(path))}); the catalog is not damaged: free space "
        "there, or move the catalog with its -wal/-shm files to a filesystem with room and "
        "point --catalog or VOLPACK_CATALOG at it"
    )


def free_space(path: str) -> int | None:
    """Bytes an unprivileged writer can still use on the filesystem of ``path``; None if unknown."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
