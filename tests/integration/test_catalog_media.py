"""The catalog with real archives written by the backup pipeline, on the file medium and on a real
SeaweedFS S3 server: rebuild from media alone, restore by id and by time, prune through the
medium API, and rebuild reading only headers and trailers (bytes fetched counted at the reader)."""

from __future__ import annotations

import filecmp
import os

import pytest

from volpack import backup, restore
from volpack.catalog import (
    Catalog,
    Policy,
    record_after_backup,
    resolve_archive_ref,
    resolve_volume_at,
)
from volpack.catalog.prune import check, execute, plan
from volpack.catalog.rebuild import rebuild
from volpack.errors import MediumError


def make_volume(path: str, seed: int, size: int = 32 << 20, data_mib: int = 3) -> str:
    """A sparse volume: random data at three places, holes elsewhere."""
    rnd = __import__("random").Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(data_mib):
            f.seek(i * (size // data_mib) + 4096 * (seed % 7))
            f.write(rnd.randbytes(1 << 20))
    return path


def back_up(src: str, url: str, catalog: str):
    result = backup(src, url, allow_mounted=True)
    assert record_after_backup(result, catalog) is True
    return result


def rows(path: str) -> set[tuple]:
    with Catalog.open(path, create=False) as c:
        return {
            (
                e.uuid,
                e.source_path,
                round(e.created, 3),
                e.volume_size,
                e.used_blocks,
                e.digest,
                e.urls,
            )
            for e in c.find()
        }


def test_rebuild_after_deleting_catalog_lists_every_archive(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    catalog = str(tmp_path / "catalog.sqlite")
    for v in range(3):
        src = make_volume(str(tmp_path / f"vol{v}.img"), v)
        for n in range(2):
            back_up(src, str(media / f"vol{v}-{n}.vpk"), catalog)
    (media / "notes.txt").write_text("not an archive")
    before = rows(catalog)
    assert len(before) == 6
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(catalog + suffix):
            os.unlink(catalog + suffix)
    with Catalog.open(catalog) as c:
        result = rebuild(c, str(media))
    assert len(result.recorded) == 6 and result.failed == ()
    assert result.ignored == (str(media / "notes.txt"),)
    assert rows(catalog) == before


def test_rebuild_reports_incomplete_archive_and_records_the_rest(tmp_path, caplog):
    media = tmp_path / "media"
    media.mkdir()
    catalog = str(tmp_path / "c.sqlite")
    src = make_volume(str(tmp_path / "v.img"), 1)
    back_up(src, str(media / "good.vpk"), catalog)
    back_up(src, str(media / "cut.vpk"), catalog)
    with open(media / "cut.vpk", "r+b") as f:
        f.truncate(os.path.getsize(media / "cut.vpk") - 100)
    os.unlink(catalog)
    with Catalog.open(catalog) as c:
        result = rebuild(c, str(media))
    assert len(result.recorded) == 1
    assert [u for u, _ in result.failed] == [str(media / "cut.vpk")]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{media / 'cut.vpk'}: skipped: ") and "incomplete" in warning


def test_restore_by_id_prefix_and_by_volume_time_round_trips(tmp_path):
    catalog = str(tmp_path / "c.sqlite")
    src = make_volume(str(tmp_path / "v.img"), 3)
    first = back_up(src, str(tmp_path / "first.vpk"), catalog)
    with open(src, "r+b") as f:
        f.write(b"changed" * 1000)
    second = back_up(src, str(tmp_path / "second.vpk"), catalog)
    url = resolve_archive_ref(second.archive_uuid[:8], catalog)
    assert url == str(tmp_path / "second.vpk")
    restore(url, str(tmp_path / "now.img"))
    assert filecmp.cmp(src, tmp_path / "now.img", shallow=False)
    between = f"@{(first.created_ns + second.created_ns) / 2e9}"
    assert resolve_volume_at(src, between, catalog) == str(tmp_path / "first.vpk")


# -- S3 (real SeaweedFS) -------------------------------------------------------------------------
class _Counting:
    """Counts the bytes the S3 reader returns, by wrapping its two read methods."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from volpack.media.s3.reader import S3Reader

        self.bytes = 0
        read_at, readinto = S3Reader.read_at, S3Reader.readinto

        def counted_read_at(reader, offset: int, length: int) -> bytes:
            data = read_at(reader, offset, length)
            self.bytes += len(data)
            return data

        def counted_readinto(reader, buf: memoryview) -> int:
            n = readinto(reader, buf)
            self.bytes += n
            return n

        monkeypatch.setattr(S3Reader, "read_at", counted_read_at)
        monkeypatch.setattr(S3Reader, "readinto", counted_readinto)


@pytest.mark.s3
def test_rebuild_from_s3_reads_only_headers_and_trailers(s3_bucket, tmp_path, monkeypatch):
    catalog = str(tmp_path / "c.sqlite")
    total = 0
    for v in range(3):
        src = make_volume(str(tmp_path / f"v{v}.img"), 10 + v, data_mib=6)
        total += back_up(src, f"s3://{s3_bucket}/hosts/h1/v{v}.vpk", catalog).archive_size
    before = rows(catalog)
    os.unlink(catalog)
    counter = _Counting(monkeypatch)
    with Catalog.open(catalog) as c:
        result = rebuild(c, f"s3://{s3_bucket}/hosts/")
    assert len(result.recorded) == 3
    assert rows(catalog) == before
    assert counter.bytes > 0
    # Header, footer, trailer with table copies and frame index: kilobytes per archive.
    assert counter.bytes < total / 100, f"fetched {counter.bytes} of {total} bytes"


@pytest.mark.s3
def test_prune_on_s3_deletes_objects_and_catalog_rows(s3_bucket, tmp_path):
    from volpack import media

    catalog = str(tmp_path / "c.sqlite")
    src = make_volume(str(tmp_path / "v.img"), 5, data_mib=1)
    results = [back_up(src, f"s3://{s3_bucket}/p/v-{n}.vpk", catalog) for n in range(4)]
    with Catalog.open(catalog, create=False) as c:
        p = plan(c, Policy(last=2))
        assert {e.uuid for e in p.remove} == {r.archive_uuid for r in results[:2]}
        outcome = execute(c, p, check(p))
        assert set(outcome.deleted) == {r.archive_uuid for r in results[:2]}
        assert {e.uuid for e in c.find()} == {r.archive_uuid for r in results[2:]}
    listed = [u for u, _, _ in media.list_archives(f"s3://{s3_bucket}/p/")]
    assert listed == [f"s3://{s3_bucket}/p/v-2.vpk", f"s3://{s3_bucket}/p/v-3.vpk"]
    url = resolve_archive_ref(results[3].archive_uuid, catalog)
    restore(url, str(tmp_path / "back.img"))
    assert filecmp.cmp(src, tmp_path / "back.img", shallow=False)


@pytest.mark.s3
def test_prune_aborts_with_nothing_deleted_when_bucket_listing_fails(
    s3_bucket, tmp_path, monkeypatch
):
    from volpack import media

    catalog = str(tmp_path / "c.sqlite")
    src = make_volume(str(tmp_path / "v.img"), 6, data_mib=1)
    for n in range(3):
        back_up(src, f"s3://{s3_bucket}/q/v-{n}.vpk", catalog)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test")
    with Catalog.open(catalog, create=False) as c:
        p = plan(c, Policy(last=1))
        with pytest.raises(MediumError, match="nothing deleted"):
            check(p)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert len(media.list_archives(f"s3://{s3_bucket}/q/")) == 3
    assert len(rows(catalog)) == 3


# -- one archive per location, through the CLI ---------------------------------------------------
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from volpack.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _nightly_force_then_prune(capsys, tmp_path, url: str) -> None:
    """Three nights of `backup disk.img URL --force`, then `prune --keep-last 1`: the archive
    kept must still be at URL, restore and verify; the two older ones are refused by id."""
    import json
    import shutil

    catalog = str(tmp_path / "c.sqlite")
    src = make_volume(str(tmp_path / "disk.img"), 1, data_mib=1)
    ids = []
    for night in range(3):
        with open(src, "r+b") as f:
            f.seek(night << 20)
            f.write(bytes([night + 1]) * 65536)
        code, out, err = _cli(
            capsys, "backup", "--allow-mounted", "--json", "--force", "--catalog", catalog, src, url
        )
        assert code == 0, err
        ids.append(json.loads(out)["archive_uuid"])
    shutil.copyfile(src, tmp_path / "last-night.img")
    code, out, err = _cli(capsys, "prune", "--keep-last", "1", "--catalog", catalog)
    assert code == 0, err
    assert "keep 1, delete 0, forget 2 superseded" in out
    code, out, _ = _cli(capsys, "list", "--json", "--catalog", catalog)
    assert [(e["uuid"], e["urls"]) for e in json.loads(out)] == [(ids[2], [url])]
    code, _, err = _cli(
        capsys, "restore", "--catalog", catalog, ids[2][:8], str(tmp_path / "r.img")
    )
    assert code == 0, err
    assert filecmp.cmp(tmp_path / "last-night.img", tmp_path / "r.img", shallow=False)
    code, _, err = _cli(capsys, "verify", "--catalog", catalog, url)
    assert code == 0, err
    code, _, err = _cli(capsys, "restore", "--catalog", catalog, ids[0], str(tmp_path / "o.img"))
    assert code == 9 and "no archive with id" in err  # forgotten by prune
    assert not (tmp_path / "o.img").exists()


def test_nightly_force_backups_and_prune_keep_the_archive_on_the_file_medium(tmp_path, capsys):
    _nightly_force_then_prune(capsys, tmp_path, str(tmp_path / "disk.vpk"))
    assert os.path.exists(tmp_path / "disk.vpk")


@pytest.mark.s3
def test_nightly_force_backups_and_prune_keep_the_archive_on_s3(s3_bucket, tmp_path, capsys):
    from volpack import media

    url = f"s3://{s3_bucket}/nightly/disk.vpk"
    _nightly_force_then_prune(capsys, tmp_path, url)
    assert [u for u, _, _ in media.list_archives(f"s3://{s3_bucket}/nightly/")] == [url]


@pytest.mark.s3
def test_prune_on_s3_spares_a_key_written_over_by_another_catalog(
    s3_bucket, tmp_path, capsys, caplog
):
    import json

    from volpack import media

    catalog, other = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    src = make_volume(str(tmp_path / "v.img"), 8, data_mib=1)
    urls = [f"s3://{s3_bucket}/o/v-{n}.vpk" for n in range(3)]
    ids = [back_up(src, u, catalog).archive_uuid for u in urls]
    code, out, err = _cli(
        capsys, "backup", "--allow-mounted", "--json", "--force", "--catalog", other, src, urls[0]
    )
    assert code == 0, err
    theirs = json.loads(out)["archive_uuid"]
    code, out, err = _cli(capsys, "prune", "--keep-last", "1", "--catalog", catalog)
    assert code == 1, err
    assert f"{urls[0]}: not deleted: it holds {theirs} now, not archive {ids[0]}" in (
        err + caplog.text
    )
    assert [u for u, _, _ in media.list_archives(f"s3://{s3_bucket}/o/")] == [urls[0], urls[2]]
    code, _, err = _cli(capsys, "restore", "--catalog", other, theirs, str(tmp_path / "t.img"))
    assert code == 0, err
    assert filecmp.cmp(src, tmp_path / "t.img", shallow=False)
