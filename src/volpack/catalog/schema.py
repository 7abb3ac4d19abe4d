"""The catalog's SQLite schema and connection set-up (WAL, busy timeout, schema version).

Only this module knows the DDL. It opens connections in autocommit mode so that callers run
explicit ``BEGIN IMMEDIATE`` transactions; it never reads or writes archive data.
"""

from __future__ import annotations

import os
import sqlite3

from volpack.errors import CatalogError

SCHEMA_VERSION = 1

# How long a writer waits for another process's transaction before giving up. Backups of many
# volumes finishing together each hold the write lock for milliseconds, so this is generous.
BUSY_TIMEOUT_S = 60.0

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
        description     TEXT NOT NULL      -- JSON as the archive records it
    )
    """,
    "CREATE INDEX IF NOT EXISTS archives_by_source ON archives (source_path, created)",
    "CREATE INDEX IF NOT EXISTS archives_by_time ON archives (created)",
    """
    CREATE TABLE IF NOT EXISTS locations (
        uuid    TEXT NOT NULL REFERENCES archives (uuid) ON DELETE CASCADE,
        url     TEXT NOT NULL,
        added   REAL NOT NULL,
        PRIMARY KEY (uuid, url)
    )
    """,
    "CREATE INDEX IF NOT EXISTS locations_by_url ON locations (url)",
)


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
        raise CatalogError(
            f"{path}: not a usable catalog ({exc}); move it away and run 'volpack catalog rebuild URL'"
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
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
