"""The catalog verbs through the console entry point, on real archives written by
``volpack backup``: list, show, restore by id / by volume and time, verify status, prune, and
catalog rebuild, with their exit codes."""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import subprocess

import pytest

from volpack.cli import main
from volpack.errors import EXIT_CATALOG, EXIT_OK, EXIT_USAGE, EXIT_WARNING
from volpack.format import records as R


def make_volume(path, seed: int) -> str:
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(16 << 20)
        for at in (0, 5 << 20, 15 << 20):
            f.seek(at + 4096 * seed)
            f.write(rnd.randbytes(256 << 10))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Two volumes, three backups (a twice, b once) recorded in a catalog named by the env."""
    catalog = str(tmp_path / "cat" / "catalog.sqlite")
    monkeypatch.setenv("VOLPACK_CATALOG", catalog)
    media = tmp_path / "media"
    media.mkdir()
    a = make_volume(tmp_path / "a.img", 1)
    b = make_volume(tmp_path / "b.img", 2)
    return tmp_path, catalog, media, a, b


def backup(capsys, src: str, dst, *extra: str) -> str:
    code, out, err = run(capsys, "backup", "--allow-mounted", "--json", *extra, src, str(dst))
    assert code == EXIT_OK, err
    return json.loads(out)["archive_uuid"]


def test_backup_records_and_list_shows_archives_oldest_first(env, capsys):
    tmp, catalog, media, a, b = env
    ids = [backup(capsys, a, media / "a1.vpk"), backup(capsys, b, media / "b1.vpk")]
    ids.append(backup(capsys, a, media / "a2.vpk"))
    code, out, _ = run(capsys, "list", "--json")
    assert code == EXIT_OK
    listed = json.loads(out)
    assert [e["uuid"] for e in listed] == ids
    assert listed[0]["source_path"] == a and listed[0]["urls"] == [str(media / "a1.vpk")]
    code, out, _ = run(capsys, "list", "--source", a)
    assert code == EXIT_OK
    assert ids[0][:8] in out and ids[2][:8] in out and ids[1][:8] not in out
    assert "2 archives" in out


def test_backup_with_no_catalog_records_nothing(env, capsys):
    tmp, catalog, media, a, b = env
    backup(capsys, a, media / "a1.vpk", "--no-catalog")
    assert not os.path.exists(catalog)
    code, _, err = run(capsys, "list")
    assert code == EXIT_CATALOG and "no catalog here" in err


def test_show_by_prefix_and_verify_status(env, capsys):
    tmp, catalog, media, a, b = env
    uid = backup(capsys, a, media / "a1.vpk")
    code, out, _ = run(capsys, "show", uid[:6])
    assert code == EXIT_OK and uid in out and "verified:" in out
    assert run(capsys, "verify", str(media / "a1.vpk"))[0] == EXIT_OK
    code, out, _ = run(capsys, "show", "--json", uid[:6])
    shown = json.loads(out)
    assert shown["verify_ok"] is True and shown["verified_at"] is not None
    assert shown["used_blocks"] > 0 and shown["format_version"] == f"{R.MAJOR}.{R.MINOR}"
    assert shown["kind"] == "full" and shown["chain_seq"] == 0 and shown["base_uuid"] is None


def test_show_unknown_id_exits_with_catalog_code(env, capsys):
    tmp, catalog, media, a, b = env
    backup(capsys, a, media / "a1.vpk")
    code, _, err = run(capsys, "show", "ffffffff")
    assert code == EXIT_CATALOG and "no archive with id ffffffff" in err


def test_restore_by_id_prefix_and_by_volume_at_time(env, capsys):
    tmp, catalog, media, a, b = env
    uid = backup(capsys, a, media / "a1.vpk")
    original = tmp / "a-original.img"
    with open(a, "rb") as f, open(original, "wb") as g:
        g.write(f.read())
    with open(a, "r+b") as f:
        f.write(b"new data" * 512)
    backup(capsys, a, media / "a2.vpk")
    code, _, err = run(capsys, "restore", uid[:10], str(tmp / "r1.img"))
    assert code == EXIT_OK, err
    assert filecmp.cmp(original, tmp / "r1.img", shallow=False)
    code, _, err = run(capsys, "restore", "--volume", a, str(tmp / "r2.img"))
    assert code == EXIT_OK, err
    assert filecmp.cmp(a, tmp / "r2.img", shallow=False)
    code, _, err = run(capsys, "restore", "--volume", a, "--at", "2000-01-01", str(tmp / "r3.img"))
    assert code == EXIT_CATALOG and "no archive at or before" in err
    assert not (tmp / "r3.img").exists()


def test_prune_dry_run_then_prune_deletes_archives_and_records(env, capsys):
    tmp, catalog, media, a, b = env
    ids = [backup(capsys, a, media / f"a{n}.vpk") for n in range(3)]
    b_id = backup(capsys, b, media / "b0.vpk")
    code, out, _ = run(capsys, "prune", "--keep-last", "1", "--dry-run")
    assert code == EXIT_OK
    assert "keep 1, would delete 2" in out and "keep 1, would delete 0" in out
    assert len(list(media.iterdir())) == 4
    code, out, _ = run(capsys, "prune", "--keep-last", "1", "--json")
    assert code == EXIT_OK
    report = json.loads(out)
    assert set(report["deleted"]) == set(ids[:2])
    assert sorted(p.name for p in media.iterdir()) == ["a2.vpk", "b0.vpk"]
    code, out, _ = run(capsys, "list", "--json")
    assert {e["uuid"] for e in json.loads(out)} == {ids[2], b_id}


def test_prune_without_rule_is_refused(env, capsys):
    tmp, catalog, media, a, b = env
    backup(capsys, a, media / "a1.vpk")
    code, _, err = run(capsys, "prune")
    assert code == EXIT_USAGE and "no retention rule" in err
    assert (media / "a1.vpk").exists()


def test_catalog_rebuild_restores_listing_and_warns_on_damaged_archive(env, capsys, caplog):
    tmp, catalog, media, a, b = env
    ids = {backup(capsys, a, media / "a1.vpk"), backup(capsys, b, media / "b1.vpk")}
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(catalog + suffix):
            os.unlink(catalog + suffix)
    code, out, _ = run(capsys, "catalog", "rebuild", str(media))
    assert code == EXIT_OK and "recorded 2 archives" in out
    code, out, _ = run(capsys, "list", "--json")
    assert {e["uuid"] for e in json.loads(out)} == ids
    with open(media / "b1.vpk", "r+b") as f:
        f.truncate(1000)
    other = str(tmp / "other.sqlite")
    code, out, _ = run(capsys, "catalog", "rebuild", "--catalog", other, str(media))
    assert code == EXIT_WARNING and "recorded 1 archives" in out and "failed:" in out
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{media / 'b1.vpk'}: skipped: ") and "incomplete" in warning


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
def test_catalog_records_filesystem_uuid_that_blkid_reports(env, capsys):
    tmp, catalog, media, a, b = env
    image = str(tmp / "ext4.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", image, "32M"], check=True, capture_output=True)
    expected = subprocess.run(
        ["blkid", "-o", "value", "-s", "UUID", image], check=True, capture_output=True, text=True
    ).stdout.strip()
    uid = backup(capsys, image, media / "ext4.vpk")
    code, out, _ = run(capsys, "show", "--json", uid)
    assert code == EXIT_OK and expected and json.loads(out)["fs_uuid"] == expected


def test_backup_succeeds_with_warning_when_catalog_cannot_be_written(env, capsys, caplog):
    tmp, catalog, media, a, b = env
    blocker = tmp / "not-a-dir"
    blocker.write_text("x")
    code, out, err = run(
        capsys, "backup", "--allow-mounted", "--catalog", str(blocker / "c.sqlite"), a,
        str(media / "a1.vpk"),
    )  # fmt: skip
    assert code == EXIT_OK and (media / "a1.vpk").exists()
    assert "not recorded in the catalog" in err + caplog.text
