"""The chain graph in the catalog: schema 3 and its migration from 2, the chain columns kept
across recordings, a second archive under one id refused, and prune's plan keeping every base a
kept archive needs and stopping on every doubt (real SQLite catalogs; no media needed to plan)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
import uuid as uuidlib

import pytest

from volpack.catalog import ArchiveEntry, Catalog, Policy
from volpack.catalog.chains import ChainIndex, chain_trees, needed_bases
from volpack.catalog.prune import plan
from volpack.catalog.schema import SCHEMA_VERSION
from volpack.errors import ArchiveIdClash, ChainError

T0 = dt.datetime(2024, 3, 1, 2, tzinfo=dt.UTC).timestamp()
DAY = 86400.0


def full(day: int, source: str = "/vol/a", **over: object) -> ArchiveEntry:
    uid = str(uuidlib.uuid4())
    values: dict[str, object] = {
        "uuid": uid,
        "created": T0 + day * DAY,
        "source_path": source,
        "source_kind": "file",
        "volume_size": 1 << 30,
        "block_size": 4096,
        "used_blocks": 1000,
        "format_version": "1.2",
        "urls": (f"/backups/{uid}.vpk",),
        "digest": uuidlib.uuid4().hex * 2,
        "kind": "full",
        "chain_id": str(uuidlib.uuid4()),
        "chain_seq": 0,
        "state_digest": uuidlib.uuid4().hex * 2,
    }
    values.update(over)
    return ArchiveEntry(**values)  # type: ignore[arg-type]


def inc(base: ArchiveEntry, day: int, **over: object) -> ArchiveEntry:
    values: dict[str, object] = {
        "kind": "incremental",
        "chain_id": base.chain_id,
        "chain_seq": (base.chain_seq or 0) + 1,
        "base_uuid": base.uuid,
        "base_digest": base.digest,
        "base_state_digest": base.state_digest,
        "source": base.source_path,
    }
    values.update(over)
    return full(day, **values)  # type: ignore[arg-type]


@pytest.fixture
def cat(tmp_path):
    with Catalog.open(str(tmp_path / "c.sqlite")) as c:
        yield c


def nightly(cat: Catalog, days: int, source: str = "/vol/a") -> list[ArchiveEntry]:
    """A full on day 0 and an incremental on each following day, each on the one before."""
    chain = [full(0, source)]
    for d in range(1, days):
        chain.append(inc(chain[-1], d))
    for e in chain:
        cat.add(e)
    return chain


def test_chain_columns_round_trip_and_show_in_json(cat):
    a = full(0)
    b = inc(a, 1)
    cat.add(a)
    cat.add(b)
    got = {e.uuid: e for e in cat.find()}
    assert got[b.uuid].kind == "incremental" and got[b.uuid].chain_seq == 1
    assert got[b.uuid].base_uuid == a.uuid and got[b.uuid].base_digest == a.digest
    assert got[b.uuid].chain_id == a.chain_id == got[a.uuid].chain_id
    shown = got[b.uuid].to_json()
    for name in ("kind", "chain_id", "chain_seq", "base_uuid", "state_digest"):
        assert shown[name] == getattr(b, name)


def test_recording_again_without_chain_knowledge_keeps_what_was_known(cat):
    a = full(0)
    b = inc(a, 1)
    cat.add(a)
    cat.add(b)
    blind = ArchiveEntry(
        **{  # type: ignore[arg-type]
            **{n: getattr(b, n) for n in ("uuid", "created", "source_path", "source_kind")},
            **{n: getattr(b, n) for n in ("volume_size", "block_size", "used_blocks")},
            "format_version": "1.2",
            "digest": b.digest,
            "kind": None,
            "chain_seq": None,
        }
    )
    cat.add(blind)
    again = cat.get(b.uuid)
    assert (again.kind, again.base_uuid, again.chain_seq) == ("incremental", a.uuid, 1)


def test_a_second_archive_claiming_a_recorded_id_is_refused_and_the_first_kept(cat):
    a = full(0)
    cat.add(a)
    other = full(0, uuid=a.uuid, digest="cd" * 32, urls=("/elsewhere/x.vpk",))
    with pytest.raises(ArchiveIdClash, match="two different archives claim one id"):
        cat.add(other)
    kept = cat.get(a.uuid)
    assert kept.digest == a.digest and kept.urls == a.urls


_V2_ARCHIVES = """CREATE TABLE archives (uuid TEXT PRIMARY KEY, created REAL NOT NULL,
    source_path TEXT NOT NULL, source_kind TEXT NOT NULL, volume_size INTEGER NOT NULL,
    fs_uuid TEXT, block_size INTEGER NOT NULL, used_blocks INTEGER NOT NULL, archive_size INTEGER,
    stored_bytes INTEGER, format_version TEXT NOT NULL, digest TEXT, verify_ok INTEGER,
    verified_at REAL, recorded_at REAL NOT NULL, description TEXT NOT NULL)"""
_V2_LOCATIONS = """CREATE TABLE locations (uuid TEXT NOT NULL REFERENCES archives (uuid)
    ON DELETE CASCADE, url TEXT NOT NULL, added REAL NOT NULL, superseded_by TEXT,
    superseded_at REAL, PRIMARY KEY (uuid, url))"""


def test_version_2_catalog_is_migrated_and_its_incrementals_need_a_rebuild_before_prune(tmp_path):
    path = str(tmp_path / "v2.sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(_V2_ARCHIVES)
    conn.execute(_V2_LOCATIONS)
    ids = [str(uuidlib.uuid4()) for _ in range(4)]
    rows = [
        ("1.1", {"source": {}}),
        ("1.2", {"source": {}}),
        ("1.2", {"changes": {"method": "hash-compare"}}),
        ("1.2", {"changes": {"method": "merge"}}),
    ]
    for n, (uid, (version, desc)) in enumerate(zip(ids, rows, strict=True)):
        conn.execute(
            "INSERT INTO archives VALUES (?, ?, '/img', 'file', 1, NULL, 4096, 1, NULL, NULL, "
            "?, NULL, NULL, NULL, 0, ?)",
            (uid, T0 + n, version, json.dumps(desc)),
        )
        conn.execute("INSERT INTO locations VALUES (?, ?, 0, NULL, NULL)", (uid, f"/b/{n}.vpk"))
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with Catalog.open(path, create=False) as c:
        assert [(e.kind, e.chain_seq, e.base_uuid) for e in c.find()] == [
            ("full", 0, None),
            (None, None, None),
            ("incremental", None, None),
            (None, None, None),
        ]
        for last in (1, 2, 3):
            with pytest.raises(ChainError, match="recorded before the catalog knew chains") as err:
                plan(c, Policy(last=last), tz=dt.UTC)
            assert "catalog rebuild" in str(err.value) and "nothing deleted" in str(err.value)
        for uid in ids[1:]:
            c.forget(uid)
        assert [e.uuid for e in plan(c, Policy(last=1), tz=dt.UTC).keep] == [ids[0]]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    check.close()


def test_prune_keep_last_1_keeps_the_whole_chain_the_newest_incremental_needs(cat):
    chain = nightly(cat, 5)
    p = plan(cat, Policy(last=1), tz=dt.UTC)
    assert p.remove == []
    assert [e.uuid for e in p.keep] == [e.uuid for e in reversed(chain)]
    group = p.groups[0]
    assert group.decision.reasons[chain[-1].uuid] == ("last",)
    for lower, upper in zip(chain, chain[1:], strict=False):
        assert group.decision.reasons[lower.uuid] == ("base",)
        assert group.base_of[lower.uuid] == (upper.uuid,)


def test_prune_removes_an_old_chain_once_no_kept_archive_needs_it(cat):
    old = nightly(cat, 3)
    new_full = full(5)
    cat.add(new_full)
    newest = inc(new_full, 6)
    cat.add(newest)
    p = plan(cat, Policy(last=1), tz=dt.UTC)
    assert {e.uuid for e in p.keep} == {new_full.uuid, newest.uuid}
    assert {e.uuid for e in p.remove} == {e.uuid for e in old}


def test_prune_keeps_only_the_branch_a_kept_fork_needs(cat):
    root = full(0)
    left = inc(root, 1)
    right = inc(root, 2)
    right2 = inc(right, 3)
    for e in (root, left, right, right2):
        cat.add(e)
    p = plan(cat, Policy(last=1), tz=dt.UTC)
    assert {e.uuid for e in p.keep} == {root.uuid, right.uuid, right2.uuid}
    assert [e.uuid for e in p.remove] == [left.uuid]


def test_prune_stops_when_a_kept_incremental_s_base_is_not_in_the_catalog(cat):
    chain = nightly(cat, 3)
    cat.forget(chain[1].uuid)
    with pytest.raises(ChainError, match=f"needs base {chain[1].uuid}.*does not know") as err:
        plan(cat, Policy(last=1), tz=dt.UTC)
    assert "nothing deleted" in str(err.value) and "catalog rebuild" in str(err.value)
    # The broken chain no longer kept: a new full and its incremental prune the rest.
    new_full = full(5)
    cat.add(new_full)
    p = plan(cat, Policy(last=1), tz=dt.UTC)
    assert [e.uuid for e in p.keep] == [new_full.uuid]


def test_prune_stops_when_the_catalogued_base_has_another_digest_than_the_link(cat):
    a = full(0)
    b = inc(a, 1, base_digest="ee" * 32)
    cat.add(a)
    cat.add(b)
    with pytest.raises(ChainError, match="two archives claim it"):
        plan(cat, Policy(last=1), tz=dt.UTC)


def test_prune_stops_when_a_needed_base_was_written_over(cat):
    a = full(0, urls=("/b/x.vpk",))
    b = inc(a, 1)
    cat.add(a)
    cat.add(b)
    cat.add(full(2, source="/vol/other", urls=("/b/x.vpk",)))
    with pytest.raises(ChainError, match=f"needs base {a.uuid}, whose location /b/x.vpk was"):
        plan(cat, Policy(last=1), source="/vol/a", tz=dt.UTC)


def test_prune_stops_on_a_cycle_of_base_links(cat):
    a_id, b_id = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    seed = full(0)
    a = inc(seed, 1, uuid=a_id, base_uuid=b_id, base_digest=None)
    b = inc(seed, 2, uuid=b_id, base_uuid=a_id, base_digest=None)
    cat.add(a)
    cat.add(b)
    with pytest.raises(ChainError, match="a cycle"):
        plan(cat, Policy(last=1), tz=dt.UTC)
    assert {r[0].link.entry.uuid for r in chain_trees(ChainIndex(cat.find()))} == {a_id, b_id}


def test_a_merged_full_of_the_same_state_stands_in_for_a_base_the_catalog_lost(cat):
    chain = nightly(cat, 3)
    # Merged after the link it replaces and after the incremental built on that link.
    merged = full(4, kind="merged", chain_id=chain[1].chain_id, state_digest=chain[1].state_digest)
    cat.add(merged)
    top = chain[2]
    cat.forget(chain[1].uuid)
    p = plan(cat, Policy(last=2), tz=dt.UTC)
    assert {e.uuid for e in p.keep} == {top.uuid, merged.uuid}
    assert [e.uuid for e in p.remove] == [chain[0].uuid]
    assert p.groups[0].base_of[merged.uuid] == (top.uuid,)


def test_a_later_incremental_back_at_the_base_state_is_never_taken_for_that_base(cat):
    chain = nightly(cat, 2)
    back = inc(chain[1], 2, state_digest=chain[0].state_digest)  # the changes undone
    cat.add(back)
    cat.forget(chain[0].uuid)
    with pytest.raises(ChainError, match=f"needs base {chain[0].uuid}"):
        plan(cat, Policy(last=1), tz=dt.UTC)


def test_prune_of_one_source_keeps_a_base_another_source_s_archive_needs(cat):
    chain = nightly(cat, 2, source="/vol/a")
    moved = inc(chain[-1], 2, source="/vol/renamed")
    cat.add(moved)
    cat.add(full(3, source="/vol/a"))
    p = plan(cat, Policy(last=1), source="/vol/a", tz=dt.UTC)
    assert {e.uuid for e in p.remove} == set()
    assert set(p.groups[0].base_of) == {chain[0].uuid, chain[1].uuid}


def test_chain_trees_draw_each_full_with_its_incrementals_and_mark_lost_bases(cat):
    chain = nightly(cat, 3)
    other = nightly(cat, 2, source="/vol/b")
    orphan = inc(full(0), 4)
    cat.add(orphan)
    trees = chain_trees(ChainIndex(cat.find()))
    drawn = {
        rows[0].link.entry.uuid: [(r.link.entry.uuid, r.depth, r.link.state) for r in rows]
        for rows in trees
    }
    assert drawn[chain[0].uuid] == [
        (e.uuid, n, "full" if n == 0 else "ok") for n, e in enumerate(chain)
    ]
    assert [u for u, _, _ in drawn[other[0].uuid]] == [e.uuid for e in other]
    assert drawn[orphan.uuid] == [(orphan.uuid, 0, "missing")]
    assert len(trees) == 3


def test_a_chain_of_thousands_of_links_is_planned_and_drawn_in_linear_time(cat):
    chain = [full(0)]
    for n in range(1, 3000):
        chain.append(inc(chain[-1], 0, created=T0 + n))
    index = ChainIndex(chain)
    t = time.perf_counter()
    need = needed_bases(index, list(reversed(chain)))
    rows = chain_trees(index)
    assert time.perf_counter() - t < 5
    assert len(need) == 2999 and need[chain[0].uuid] == (chain[1].uuid,)
    assert [r.depth for r in rows[0]] == list(range(3000))
