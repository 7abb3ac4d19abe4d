"""One location, one spelling: a file reached as a path, a relative path, ``file:///…%20…`` or
``file://localhost/…`` is recorded once, as its absolute path, so list, restore by id, catalog
rebuild, prune and the marking of overwritten archives all agree with the file the medium wrote.
Through the console entry point on real archives."""

from __future__ import annotations

import filecmp
import json
import os
from urllib.parse import quote

import pytest

from volpack.cli import main
from volpack.errors import EXIT_CATALOG, EXIT_OK, EXIT_USAGE
from volpack.media import canonical_url


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def backup(capsys, src: str, dst: str, *extra: str) -> str:
    code, out, err = run(capsys, "backup", "--allow-mounted", "--json", *extra, src, dst)
    assert code == EXIT_OK, err
    return json.loads(out)["archive_uuid"]


def listed(capsys) -> dict[str, dict]:
    code, out, err = run(capsys, "list", "--json")
    assert code == EXIT_OK, err
    return {row["uuid"]: row for row in json.loads(out)}


def restores_by_id(capsys, uuid: str, original: str, target) -> None:
    code, _, err = run(capsys, "restore", uuid[:8], str(target))
    assert code == EXIT_OK, err
    assert filecmp.cmp(original, target, shallow=False)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLPACK_CATALOG", str(tmp_path / "catalog.sqlite"))
    media = tmp_path / "my media"  # a space, so file URLs must be percent-encoded
    media.mkdir()
    src = tmp_path / "disk.img"
    with open(src, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"volume data " * 5000)
    return tmp_path, media, str(src)


def file_url(path, host: str = "") -> str:
    return f"file://{host}{quote(str(path))}"


def test_backup_to_a_percent_encoded_file_url_is_listed_and_restored_by_id(env, capsys):
    tmp, media, src = env
    url = file_url(media / "a b.vpk")
    assert "%20" in url
    uuid = backup(capsys, src, url)
    assert sorted(p.name for p in media.iterdir()) == ["a b.vpk"]
    assert listed(capsys)[uuid]["urls"] == [str(media / "a b.vpk")]
    restores_by_id(capsys, uuid, src, tmp / "back.img")


def test_backup_to_a_localhost_file_url_is_recorded_as_its_path_not_under_the_cwd(
    env, capsys, monkeypatch
):
    tmp, media, src = env
    elsewhere = tmp / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uuid = backup(capsys, src, file_url(media / "x.vpk", "localhost"))
    assert listed(capsys)[uuid]["urls"] == [str(media / "x.vpk")]
    assert not any(elsewhere.iterdir())
    restores_by_id(capsys, uuid, src, tmp / "back.img")


def test_backup_to_a_relative_path_is_restored_by_id_from_another_directory(
    env, capsys, monkeypatch
):
    tmp, media, src = env
    monkeypatch.chdir(media)
    uuid = backup(capsys, src, "rel.vpk")
    assert listed(capsys)[uuid]["urls"] == [str(media / "rel.vpk")]
    monkeypatch.chdir(tmp)
    restores_by_id(capsys, uuid, src, tmp / "back.img")


@pytest.mark.parametrize("second", ["percent-encoded", "localhost", "relative", "dotted"])
def test_backups_to_two_spellings_of_one_file_mark_the_older_superseded(
    env, capsys, monkeypatch, second
):
    tmp, media, src = env
    path = media / "d b.vpk"
    first = backup(capsys, src, str(path))
    with open(src, "r+b") as f:
        f.write(b"changed")
    monkeypatch.chdir(media)
    spelling = {
        "percent-encoded": file_url(path),
        "localhost": file_url(path, "localhost"),
        "relative": "d b.vpk",
        "dotted": str(media / ".." / media.name / "d b.vpk"),
    }[second]
    newer = backup(capsys, src, spelling, "--force")
    rows = listed(capsys)
    assert rows[first]["is_superseded"] and rows[first]["superseded"][0]["by"] == newer
    assert rows[newer]["urls"] == [str(path)] and not rows[newer]["is_superseded"]
    code, _, err = run(capsys, "restore", first[:8], str(tmp / "old.img"))
    assert code == EXIT_CATALOG and f"overwritten by archive {newer}" in err
    restores_by_id(capsys, newer, src, tmp / "new.img")


def test_catalog_rebuild_through_file_urls_records_the_same_locations(env, capsys):
    tmp, media, src = env
    one = backup(capsys, src, file_url(media / "a b.vpk"))
    two = backup(capsys, src, str(media / "c.vpk"))
    before = listed(capsys)
    os.unlink(tmp / "catalog.sqlite")
    code, _, err = run(capsys, "catalog", "rebuild", file_url(media / "a b.vpk", "localhost"))
    assert code == EXIT_OK, err
    assert list(listed(capsys)) == [one]
    code, _, err = run(capsys, "catalog", "rebuild", file_url(media) + "/")
    assert code == EXIT_OK, err
    after = listed(capsys)
    assert {u: r["urls"] for u, r in after.items()} == {u: r["urls"] for u, r in before.items()}
    assert after[one]["urls"] == [str(media / "a b.vpk")]
    restores_by_id(capsys, one, src, tmp / "one.img")
    restores_by_id(capsys, two, src, tmp / "two.img")


def test_prune_deletes_an_archive_written_through_a_percent_encoded_file_url(env, capsys):
    tmp, media, src = env
    old = backup(capsys, src, file_url(media / "old one.vpk"))
    backup(capsys, src, str(media / "new.vpk"))
    code, out, err = run(capsys, "prune", "--keep-last", "1")
    assert code == EXIT_OK, err
    assert sorted(p.name for p in media.iterdir()) == ["new.vpk"]
    assert old not in listed(capsys)


@pytest.mark.parametrize(
    "url, canonical",
    [
        ("file:///srv/a%20b.vpk", "/srv/a b.vpk"),
        ("FILE://localhost/srv/x.vpk", "/srv/x.vpk"),
        ("file:/srv/../srv/x.vpk", "/srv/x.vpk"),
        ("file:///srv/a;b.vpk", "/srv/a;b.vpk"),
        ("/srv/a%20b.vpk", "/srv/a%20b.vpk"),  # a path is taken literally
        ("S3://bucket/dir/A%20B.vpk", "s3://bucket/dir/A%20B.vpk"),  # keys are literal
        ("TAPE+EMU:/drive?record-size=4096#2", "tape+emu:/drive?record-size=4096#2"),
        ("-", "-"),
    ],
)
def test_each_scheme_has_one_canonical_spelling(url, canonical):
    assert canonical_url(url) == canonical
    assert canonical_url(canonical) == canonical


@pytest.mark.parametrize(
    "url", ["file:///srv/a#1.vpk", "file:///srv/a?.vpk", "file://", "file:///srv/a%00.vpk"]
)
def test_a_file_url_that_would_lose_part_of_its_name_is_refused_in_one_line(env, capsys, url):
    tmp, media, src = env
    code, _, err = run(capsys, "backup", "--allow-mounted", src, url)
    assert code == EXIT_USAGE
    lines = [line for line in err.splitlines() if line.startswith("volpack: error:")]
    assert len(lines) == 1 and url in lines[0] and "Traceback" not in err
