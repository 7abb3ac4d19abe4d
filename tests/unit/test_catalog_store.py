"""The SQLite catalog store: recording, querying, id prefixes, verify status, and several
processes writing at once (real SQLite files, real processes)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import uuid as uuidlib

import pytest

from volpack.catalog import (
    ArchiveEntry,
    Catalog,
    default_path,
    parse_time,
    record_after_backup,
    record_after_verify,
    resolve_archive_ref,
    resolve_volume_at,
)
from volpack.catalog.schema import SCHEMA_VERSION
from volpack.errors import CatalogError, UsageError


def entry(
    source: str = "/img/a.img", created: float = 1_700_000_000.0, **over: object
) -> ArchiveEntry:
    values: dict[str, object] = {
        "uuid": str(uuidlib.uuid4()),
        "created": created,
        "source_path": source,
        "source_kind": "file",
        "volume_size": 1 << 30,
        "block_size": 4096,
        "used_blocks": 1000,
        "format_version": "1.0",
        "urls": (f"/backups/{created}.vpk",),
        "archive_size": 4_000_000,
        "stored_bytes": 3_900_000,
        "digest": "ab" * 32,
    }
    values.update(over)
    return ArchiveEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def cat(tmp_path):
    with Catalog.open(str(tmp_path / "cat" / "catalog.sqlite")) as c:
        yield c


def test_catalog_uses_write_ahead_logging_and_records_schema_version(tmp_path):
    path = str(tmp_path / "c.sqlite")
    Catalog.open(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_recorded_archive_reads_back_with_every_field(cat):
    e = entry(fs_uuid="1234-abcd", description={"source": {"path": "/img/a.img"}})
    cat.add(e)
    got = cat.get(e.uuid)
    assert got.uuid == e.uuid and got.urls == e.urls and got.fs_uuid == "1234-abcd"
    assert got.description == {"source": {"path": "/img/a.img"}}
    assert got.verify_ok is None and got.recorded_at > 0
    assert got.to_json()["created_iso"] == "2023-11-14T22:13:20Z"


def test_get_accepts_unique_prefix_without_hyphens_in_any_case(cat):
    e = entry(uuid="3f2a9c1e-0000-4000-8000-000000000001")
    cat.add(e)
    cat.add(entry(uuid="4f2a9c1e-0000-4000-8000-000000000002"))
    assert cat.get("3F2A").uuid == e.uuid
    assert cat.get("3f2a9c1e0000").uuid == e.uuid


def test_get_refuses_ambiguous_prefix_naming_candidates(cat):
    cat.add(entry(uuid="3f2a9c1e-0000-4000-8000-000000000001"))
    cat.add(entry(uuid="3f2a9c1e-0000-4000-8000-000000000002"))
    with pytest.raises(CatalogError, match="matches several"):
        cat.get("3f2a")


def test_get_of_unknown_or_malformed_id_is_an_error(cat):
    with pytest.raises(CatalogError, match="no archive"):
        cat.get("abcdef")
    with pytest.raises(UsageError):
        cat.get("not-an-id!")
    cat.add(entry())
    with pytest.raises(UsageError):
        cat.get("--")  # hyphens alone would otherwise match every archive


def test_recording_again_adds_location_and_keeps_verify_status(cat):
    e = entry()
    cat.add(e)
    cat.record_verify(e.uuid, True, 1_800_000_000.0)
    cat.add(entry(uuid=e.uuid, urls=("s3://bucket/copy.vpk",)))
    got = cat.get(e.uuid)
    assert set(got.urls) == {e.urls[0], "s3://bucket/copy.vpk"}
    assert got.verify_ok is True and got.verified_at == 1_800_000_000.0


def test_record_verify_of_unknown_archive_is_an_error(cat):
    with pytest.raises(CatalogError, match="not in the catalog"):
        cat.record_verify(str(uuidlib.uuid4()), True)


def test_find_filters_by_source_and_time_oldest_first(cat):
    a1, a2 = entry("/a", 100.0), entry("/a", 200.0)
    b1 = entry("/b", 150.0)
    for e in (a2, b1, a1):
        cat.add(e)
    assert [e.uuid for e in cat.find()] == [a1.uuid, b1.uuid, a2.uuid]
    assert [e.uuid for e in cat.find(source="/a")] == [a1.uuid, a2.uuid]
    assert [e.uuid for e in cat.find(since=120, until=180)] == [b1.uuid]
    assert cat.sources() == ["/a", "/b"]


def test_resolve_picks_newest_archive_at_or_before_time(cat):
    old, new = entry("/a", 100.0), entry("/a", 200.0)
    cat.add(old)
    cat.add(new)
    assert cat.resolve("/a", 150.0).uuid == old.uuid
    assert cat.resolve("/a", 200.0).uuid == new.uuid
    with pytest.raises(CatalogError, match="oldest archive is from"):
        cat.resolve("/a", 50.0)


def test_removing_last_location_forgets_the_archive(cat):
    e = entry(urls=("/x/1.vpk", "/y/1.vpk"))
    cat.add(e)
    assert cat.remove_location(e.uuid, "/x/1.vpk") is False
    assert cat.get(e.uuid).urls == ("/y/1.vpk",)
    assert cat.remove_location(e.uuid, "/y/1.vpk") is True
    assert cat.find() == []


def test_missing_catalog_is_an_error_not_an_empty_list(tmp_path):
    with pytest.raises(CatalogError, match="no catalog here"):
        Catalog.open(str(tmp_path / "none.sqlite"), create=False)


def test_garbage_file_is_refused_with_rebuild_hint(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="catalog rebuild"):
        Catalog.open(str(path))


def test_default_path_follows_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("VOLPACK_CATALOG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == str(tmp_path / "xdg" / "volpack" / "catalog.sqlite")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == str(tmp_path / "home/.local/share/volpack/catalog.sqlite")
    monkeypatch.setenv("VOLPACK_CATALOG", "/elsewhere/c.sqlite")
    assert default_path() == "/elsewhere/c.sqlite"


def test_parse_time_reads_iso_dates_epoch_and_now():
    assert parse_time("@1700000000") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_time("now", now=5.0) == 5.0
    end_of_day = parse_time("2023-11-14")
    start = parse_time("2023-11-14T00:00")
    assert 86_399 < end_of_day - start < 86_400
    with pytest.raises(UsageError, match="ISO 8601"):
        parse_time("yesterday-ish")


class _Result:
    def __init__(self, url: str, src: str) -> None:
        self.archive_uuid = str(uuidlib.uuid4())
        self.url = url
        self.volume_size = 1 << 20
        self.block_size = 4096
        self.used_blocks = 10
        self.archive_size = 50_000
        self.stored_bytes = 40_960
        self.digest = "cd" * 32
        self.elapsed = 2.0
        self.source = {"kind": "file", "path": src, "details": {}}


def test_record_after_backup_stores_absolute_paths_and_resolves_by_id_and_time(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "c.sqlite")
    monkeypatch.chdir(tmp_path)
    res = _Result("out.vpk", "disk.img")
    assert record_after_backup(res, path, {"created": 1_700_000_000.0}) is True
    with Catalog.open(path) as c:
        got = c.get(res.archive_uuid)
    assert got.source_path == str(tmp_path / "disk.img")
    assert got.urls == (str(tmp_path / "out.vpk"),)
    assert got.created == 1_700_000_000.0
    assert resolve_archive_ref(res.archive_uuid[:8], path) == str(tmp_path / "out.vpk")
    assert resolve_volume_at("disk.img", "@1700000001", path) == str(tmp_path / "out.vpk")
    assert record_after_verify(res.archive_uuid, False, path) is True
    with Catalog.open(path) as c:
        assert c.get(res.archive_uuid).verify_ok is False


def test_record_after_backup_turns_catalog_failure_into_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ok = record_after_backup(_Result("/b/o.vpk", "/d"), str(blocker / "sub" / "c.sqlite"))
    assert ok is False
    assert "not recorded in the catalog" in caplog.text


def test_resolve_archive_ref_ignores_non_ids_and_missing_catalog(tmp_path):
    assert resolve_archive_ref("backup.vpk", str(tmp_path / "c.sqlite")) is None
    assert resolve_archive_ref("abcd1234", str(tmp_path / "none.sqlite")) is None


def _writer(path: str, worker: int, count: int) -> None:
    with Catalog.open(path) as c:
        for i in range(count):
            c.add(entry(f"/vol/{worker}", 1_700_000_000.0 + i, urls=(f"/b/{worker}-{i}.vpk",)))


def test_several_processes_recording_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    with Catalog.open(path) as c:
        found = c.find()
        assert len(found) == 240
        assert len(c.sources()) == 6


# -- one archive per location (schema version 2) -------------------------------------------------
# The schema of version 1 as released, to build a catalog the migration must bring forward.
_V1_DDL = (
    """CREATE TABLE archives (uuid TEXT PRIMARY KEY, created REAL NOT NULL,
    source_path TEXT NOT NULL, source_kind TEXT NOT NULL, volume_size INTEGER NOT NULL,
    fs_uuid TEXT, block_size INTEGER NOT NULL, used_blocks INTEGER NOT NULL, archive_size INTEGER,
    stored_bytes INTEGER, format_version TEXT NOT NULL, digest TEXT, verify_ok INTEGER,
    verified_at REAL, recorded_at REAL NOT NULL, description TEXT NOT NULL)""",
    "CREATE INDEX archives_by_source ON archives (source_path, created)",
    "CREATE INDEX archives_by_time ON archives (created)",
    """CREATE TABLE locations (uuid TEXT NOT NULL REFERENCES archives (uuid) ON DELETE CASCADE,
    url TEXT NOT NULL, added REAL NOT NULL, PRIMARY KEY (uuid, url))""",
    "CREATE INDEX locations_by_url ON locations (url)",
)


def test_recording_an_archive_at_a_url_marks_the_one_there_before_superseded(cat):
    first = entry(created=1.0, urls=("/b/disk.vpk",))
    second = entry(created=2.0, urls=("/b/disk.vpk",))
    cat.add(first)
    cat.add(second)
    old, new = cat.find()
    assert old.uuid == first.uuid and old.urls == () and old.is_superseded
    assert old.superseded[0].url == "/b/disk.vpk" and old.superseded[0].by == second.uuid
    assert new.urls == ("/b/disk.vpk",) and not new.is_superseded
    assert [e.uuid for e in cat.find(url="/b/disk.vpk")] == [second.uuid]


def test_an_archive_recorded_again_where_it_was_written_over_is_live_there_again(cat):
    a = entry(created=1.0, urls=("/b/x.vpk",))
    b = entry(created=2.0, urls=("/b/x.vpk",))
    cat.add(a)
    cat.add(b)
    cat.add(a)  # a rebuild found a copied back over b
    rows = {e.uuid: e for e in cat.find()}
    assert rows[a.uuid].urls == ("/b/x.vpk",) and rows[a.uuid].superseded == ()
    assert rows[b.uuid].is_superseded and rows[b.uuid].superseded[0].by == a.uuid


def test_removing_the_last_live_location_drops_an_archive_with_superseded_copies(cat):
    a = entry(created=1.0, urls=("/b/x.vpk", "/c/x.vpk"))
    cat.add(a)
    cat.add(entry(created=2.0, urls=("/c/x.vpk",)))
    assert cat.get(a.uuid).urls == ("/b/x.vpk",)
    assert cat.remove_location(a.uuid, "/b/x.vpk") is True
    assert a.uuid not in {e.uuid for e in cat.find()}


def test_version_1_catalog_is_migrated_and_older_archives_at_one_url_are_superseded(tmp_path):
    path = str(tmp_path / "v1.sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _V1_DDL:
        conn.execute(statement)
    ids = [str(uuidlib.uuid4()) for _ in range(4)]
    for n, (uid, url) in enumerate(zip(ids, ["/n/d.vpk"] * 3 + ["/n/other.vpk"], strict=True)):
        conn.execute(
            "INSERT INTO archives VALUES (?, ?, '/img', 'file', 1, NULL, 4096, 1, NULL, NULL, "
            "'1.0', NULL, NULL, NULL, 0, '{}')",
            (uid, 100.0 + n),
        )
        conn.execute("INSERT INTO locations VALUES (?, ?, 0)", (uid, url))
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with Catalog.open(path, create=False) as c:
        rows = c.find()
    assert [e.is_superseded for e in rows] == [True, True, False, False]
    assert {s.by for e in rows[:2] for s in e.superseded} == {ids[2]}
    assert rows[0].superseded[0].at == 102.0
    assert rows[2].urls == ("/n/d.vpk",) and rows[3].urls == ("/n/other.vpk",)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    check.close()


def test_restore_lookup_refuses_a_superseded_archive_naming_the_ones_left(tmp_path):
    from volpack.catalog import locate_archive_ref, locate_volume_at
    from volpack.errors import ArchiveReplaced

    path = str(tmp_path / "c.sqlite")
    with Catalog.open(path) as c:
        weekly = entry(created=1.0, urls=("/b/weekly.vpk",))
        night = [entry(created=10.0 + n, urls=("/b/disk.vpk",)) for n in range(2)]
        for e in (weekly, *night):
            c.add(e)
    with pytest.raises(ArchiveReplaced, match=f"newest older one is {weekly.uuid[:8]}"):
        locate_archive_ref(night[0].uuid, path)
    with pytest.raises(ArchiveReplaced, match=f"next newer one is {night[1].uuid[:8]}"):
        locate_volume_at("/img/a.img", "@10.5", path)
    assert locate_volume_at("/img/a.img", "@5", path).uuid == weekly.uuid
    found = locate_archive_ref(night[1].uuid[:8], path)
    assert found is not None and (found.uuid, found.url) == (night[1].uuid, "/b/disk.vpk")
