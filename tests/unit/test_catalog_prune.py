"""Prune against the real file medium: plan, listing check, deletion, and every abort path
(a failed listing or a missing kept archive deletes nothing; a failed deletion stops at once)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid as uuidlib

import pytest

from volpack.catalog import ArchiveEntry, Catalog, Policy
from volpack.catalog.prune import check, execute, location_of, plan
from volpack.errors import MediumError, MediumTransient, UsageError
from volpack.format import records as R
from volpack.media import file as file_medium

DAY = 86400.0
T0 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC).timestamp()


def header_bytes(uid: str) -> bytes:
    """A real archive header for ``uid`` (what prune reads to learn which archive is where)."""
    return (
        R.Header(uid, 4096, 1 << 20, 1 << 20, 3, 1, chain_id=uid).encode() + b"rest of the archive"
    )


def make(cat: Catalog, directory, source: str, day: int) -> ArchiveEntry:
    path = directory / f"{source.strip('/').replace('/', '_')}-{day}.vpk"
    uid = str(uuidlib.uuid4())
    path.write_bytes(header_bytes(uid))
    e = ArchiveEntry(
        uuid=uid,
        created=T0 + day * DAY,
        source_path=source,
        source_kind="file",
        volume_size=1 << 20,
        block_size=4096,
        used_blocks=3,
        format_version="1.0",
        urls=(str(path),),
    )
    cat.add(e)
    return e


@pytest.fixture
def setup(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    cat = Catalog.open(str(tmp_path / "c.sqlite"))
    a = [make(cat, media, "/vol/a", d) for d in range(10)]
    b = [make(cat, media, "/vol/b", d) for d in range(3)]
    yield cat, media, a, b
    cat.close()


def test_prune_deletes_exactly_what_policy_removes_per_volume(setup):
    cat, media, a, b = setup
    p = plan(cat, Policy(last=2), tz=dt.UTC)
    assert {e.uuid for e in p.remove} == {e.uuid for e in a[:8] + b[:1]}
    outcome = execute(cat, p, check(p))
    assert set(outcome.deleted) == {e.uuid for e in a[:8] + b[:1]}
    left = sorted(x.name for x in media.iterdir())
    assert left == ["vol_a-8.vpk", "vol_a-9.vpk", "vol_b-1.vpk", "vol_b-2.vpk"]
    assert {e.uuid for e in cat.find()} == {a[8].uuid, a[9].uuid, b[1].uuid, b[2].uuid}


def test_prune_limited_to_one_source_leaves_others_alone(setup):
    cat, media, a, b = setup
    p = plan(cat, Policy(last=1), source="/vol/b", tz=dt.UTC)
    execute(cat, p, check(p))
    assert len(cat.find(source="/vol/a")) == 10
    assert [e.uuid for e in cat.find(source="/vol/b")] == [b[2].uuid]


def test_failed_listing_aborts_before_any_deletion(setup):
    cat, media, a, b = setup
    p = plan(cat, Policy(last=1), tz=dt.UTC)

    def broken(url: str):
        raise MediumTransient(f"{url}: connection reset")

    with pytest.raises(MediumTransient, match="nothing deleted"):
        check(p, broken)
    assert len(list(media.iterdir())) == 13 and len(cat.find()) == 13


def test_unlistable_location_aborts_before_any_deletion(setup, tmp_path):
    cat, media, a, b = setup
    # An archive whose directory has vanished: the listing fails, so nothing anywhere goes.
    ghost = ArchiveEntry(
        uuid=str(uuidlib.uuid4()),
        created=T0 - DAY,
        source_path="/vol/a",
        source_kind="file",
        volume_size=1,
        block_size=4096,
        used_blocks=1,
        format_version="1.0",
        urls=(str(tmp_path / "gone-dir" / "x.vpk"),),
    )
    cat.add(ghost)
    p = plan(cat, Policy(last=1), tz=dt.UTC)
    with pytest.raises(MediumError, match="listing .*gone-dir failed, nothing deleted"):
        check(p)
    assert len(list(media.iterdir())) == 13


def test_missing_kept_archive_aborts_prune(setup):
    cat, media, a, b = setup
    (media / "vol_a-9.vpk").unlink()  # the newest of /vol/a, which keep-last keeps
    p = plan(cat, Policy(last=1), tz=dt.UTC)
    with pytest.raises(MediumError, match="which the policy keeps, is missing"):
        check(p)
    assert len(list(media.iterdir())) == 12


def test_removed_archive_already_gone_is_forgotten(setup):
    cat, media, a, b = setup
    (media / "vol_a-0.vpk").unlink()
    p = plan(cat, Policy(last=9), source="/vol/a", tz=dt.UTC)
    outcome = execute(cat, p, check(p))
    assert outcome.already_gone == (a[0].uuid,) and outcome.deleted == ()
    assert len(cat.find(source="/vol/a")) == 9


def test_failed_deletion_stops_and_catalog_keeps_undeleted(setup):
    cat, media, a, b = setup
    p = plan(cat, Policy(last=1), source="/vol/a", tz=dt.UTC)
    calls: list[str] = []

    def flaky(url: str) -> None:
        if len(calls) == 3:
            raise MediumTransient(f"{url}: throttled")
        calls.append(url)
        file_medium.delete(url)

    with pytest.raises(MediumError, match="after 3 of 9 archives were deleted"):
        execute(cat, p, check(p), flaky)
    remaining = cat.find(source="/vol/a")
    assert len(remaining) == 7
    assert all((media / f"vol_a-{d}.vpk").exists() for d in range(3, 10))


def test_dry_run_style_plan_and_check_touch_nothing(setup):
    cat, media, a, b = setup
    p = plan(cat, Policy(daily=3), tz=dt.UTC)
    check(p)
    assert len(list(media.iterdir())) == 13 and len(cat.find()) == 13


def test_location_of_is_directory_or_key_prefix(tmp_path):
    assert location_of(str(tmp_path / "a.vpk")) == str(tmp_path)
    assert location_of("s3://bucket/dir/a.vpk") == "s3://bucket/dir/"
    assert location_of("s3://bucket/a.vpk") == "s3://bucket/"


def test_file_medium_lists_regular_files_but_not_partial_ones(tmp_path):
    (tmp_path / "a.vpk").write_bytes(b"1")
    (tmp_path / ".a.vpk.1234.partial").write_bytes(b"2")
    (tmp_path / "sub").mkdir()
    listed = file_medium.list_archives(str(tmp_path))
    assert [u for u, _, _ in listed] == [str(tmp_path / "a.vpk")]
    with pytest.raises(MediumError):
        file_medium.list_archives(str(tmp_path / "a.vpk"))


def test_medium_that_cannot_list_aborts_prune_with_source_hint(setup):
    cat, media, a, b = setup
    on_tape = ArchiveEntry(
        uuid=str(uuidlib.uuid4()),
        created=T0 - DAY,
        source_path="/vol/t",
        source_kind="file",
        volume_size=1,
        block_size=4096,
        used_blocks=1,
        format_version="1.0",
        urls=("tape:/dev/nst0",),
    )
    cat.add(on_tape)
    cat.add(dataclasses.replace(on_tape, uuid=str(uuidlib.uuid4()), created=T0 - 2 * DAY))
    p = plan(cat, Policy(last=1), tz=dt.UTC)
    with pytest.raises(UsageError, match="cannot list tape:/dev/, nothing deleted.*--source"):
        check(p)
    assert len(list(media.iterdir())) == 13


# -- identity: a URL is deleted only while it holds the archive being removed -------------------
def test_location_written_over_between_check_and_delete_is_spared(setup):
    cat, media, a, b = setup
    p = plan(cat, Policy(last=1), source="/vol/b", tz=dt.UTC)
    checked = check(p)
    intruder = str(uuidlib.uuid4())
    (media / "vol_b-0.vpk").write_bytes(header_bytes(intruder))  # e.g. a backup --force now
    outcome = execute(cat, p, checked)
    assert (media / "vol_b-0.vpk").read_bytes() == header_bytes(intruder)
    assert outcome.deleted == (b[1].uuid,)
    assert [(s.uuid, s.holds) for s in outcome.spared] == [(b[0].uuid, intruder)]
    assert [e.uuid for e in cat.find(source="/vol/b")] == [b[2].uuid]


def test_location_holding_something_that_is_not_an_archive_is_never_deleted(setup):
    cat, media, a, b = setup
    (media / "vol_b-0.vpk").write_bytes(b"somebody's notes")
    p = plan(cat, Policy(last=1), source="/vol/b", tz=dt.UTC)
    checked = check(p)
    assert [s.url for s in checked.spared] == [str(media / "vol_b-0.vpk")]
    assert "no readable volpack archive" in checked.spared[0].holds
    execute(cat, p, checked)
    assert (media / "vol_b-0.vpk").read_bytes() == b"somebody's notes"


def test_failure_to_read_which_archive_is_there_aborts_with_nothing_deleted(setup):
    cat, media, a, b = setup
    p = plan(cat, Policy(last=1), source="/vol/b", tz=dt.UTC)

    def unreachable(url: str) -> str:
        raise MediumTransient(f"{url}: connection reset")

    with pytest.raises(MediumError, match="cannot read which archive .* nothing deleted"):
        check(p, identify=unreachable)
    assert len(list(media.iterdir())) == 13 and len(cat.find()) == 13


def test_superseded_archives_are_outside_the_policy_and_only_forgotten(setup):
    cat, media, a, b = setup
    url = str(media / "vol_b-2.vpk")
    over = dataclasses.replace(b[2], uuid=str(uuidlib.uuid4()), created=b[2].created + DAY)
    (media / "vol_b-2.vpk").write_bytes(header_bytes(over.uuid))
    cat.add(over)  # backup --force over the newest of /vol/b
    p = plan(cat, Policy(last=2), source="/vol/b", tz=dt.UTC)
    assert [e.uuid for e in p.superseded] == [b[2].uuid]
    assert [e.uuid for e in p.keep] == [over.uuid, b[1].uuid]
    outcome = execute(cat, p, check(p))
    assert outcome.forgotten == (b[2].uuid,) and outcome.deleted == (b[0].uuid,)
    assert (media / "vol_b-2.vpk").read_bytes() == header_bytes(over.uuid)
    assert [e.uuid for e in cat.find(source="/vol/b")] == [b[1].uuid, over.uuid]
    assert cat.find(url=url)[0].uuid == over.uuid
