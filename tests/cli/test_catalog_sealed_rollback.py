"""The catalog and sealed archives, and rollback detection, through the console entry point on
real archives: backup and ``catalog rebuild`` (without a key) record "encrypted" and the key
slots' fingerprints, never a key; a version 3 catalog is migrated; a medium whose newest archive
of a chain was replaced by an older copy is reported by ``restore --volume`` and
``backup --base latest`` naming both sequences, and nothing is written."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from tests.cli.test_catalog_chains import Volume, backup, listed, nightly, one_line, run

from volpack.catalog import Catalog
from volpack.catalog.schema import SCHEMA_VERSION
from volpack.errors import EXIT_CHAIN, EXIT_OK

pytest.importorskip("cryptography")


@pytest.fixture
def env(tmp_path, monkeypatch):
    catalog = str(tmp_path / "cat" / "catalog.sqlite")
    monkeypatch.setenv("VOLPACK_CATALOG", catalog)
    media = tmp_path / "media"
    media.mkdir()
    key = tmp_path / "k.bin"
    key.write_bytes(os.urandom(32))
    return tmp_path, catalog, media, Volume(tmp_path / "vm.img"), str(key)


def test_backup_and_keyless_rebuild_record_encrypted_and_the_slot_fingerprints(
    env, capsys, monkeypatch
):
    tmp, catalog, media, vol, key = env
    sealed = backup(capsys, vol, media / "s.vpk", "--key-file", key, "--key-file", key)
    plain = backup(capsys, vol, media / "p.vpk")
    rows = listed(capsys)
    got = rows[sealed["archive_uuid"]]
    assert got["encrypted"] is True
    assert len(got["key_slots"]) == 2 and all(f.startswith("key-file:") for f in got["key_slots"])
    assert got["key_slots"] == list(sealed["key_slots"])
    assert rows[plain["archive_uuid"]]["encrypted"] is False
    assert rows[plain["archive_uuid"]]["key_slots"] == []
    # The catalog never holds the key: not its bytes, not its hex.
    secret = Path(key).read_bytes()
    raw = b"".join(
        Path(catalog + tail).read_bytes() for tail in ("", "-wal") if os.path.exists(catalog + tail)
    )
    assert secret not in raw and secret.hex().encode() not in raw
    # A fresh catalog rebuilt from the medium without any key reads the same fingerprints.
    monkeypatch.setenv("VOLPACK_CATALOG", str(tmp / "other.sqlite"))
    code, _, err = run(capsys, "catalog", "rebuild", str(media))
    assert code == EXIT_OK, err
    again = listed(capsys)
    assert again[sealed["archive_uuid"]]["key_slots"] == got["key_slots"]
    assert again[sealed["archive_uuid"]]["encrypted"] is True
    assert again[plain["archive_uuid"]]["encrypted"] is False
    code, out, err = run(capsys, "show", sealed["archive_uuid"][:8])
    assert code == EXIT_OK, err
    assert "yes, 2 key slot(s)" in out and got["key_slots"][0] in out
    code, out, err = run(capsys, "list")
    assert code == EXIT_OK and "SEALED" in out


def test_version_3_catalog_gains_sealing_columns_and_chain_heads(env, capsys):
    tmp, catalog, media, vol, key = env
    done = nightly(capsys, vol, f"{media}/", 3)
    conn = sqlite3.connect(catalog, isolation_level=None)
    conn.execute("DROP TABLE chain_heads")
    conn.execute("ALTER TABLE archives DROP COLUMN encrypted")
    conn.execute("ALTER TABLE archives DROP COLUMN key_slots")
    # What a version 3 catalog holds: archives of formats up to 1.3 (plain ones were 1.2).
    conn.execute("UPDATE archives SET format_version = '1.2'")
    conn.execute(
        "UPDATE archives SET format_version = '1.3' WHERE uuid = ?", (done[0]["archive_uuid"],)
    )
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with Catalog.open(catalog, create=False) as c:
        rows = {e.uuid: e for e in c.find()}
        head = c.chain_head(done[0]["chain_id"])
    assert rows[done[0]["archive_uuid"]].encrypted is None  # 1.3: not known until a rebuild
    assert rows[done[0]["archive_uuid"]].key_slots is None
    assert rows[done[1]["archive_uuid"]].encrypted is False
    assert head is not None and head.chain_seq == 2 and head.uuid == done[2]["archive_uuid"]
    check = sqlite3.connect(catalog)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    check.close()


def _roll_back(media, vol, capsys) -> list[dict]:
    """A chain d0 <- d1 <- d2; then d2's file replaced by a copy of d1 (an older state)."""
    done = nightly(capsys, vol, f"{media}/", 3)
    shutil.copyfile(media / "d1.vpk", media / "d2.vpk")
    return done


def test_restore_volume_reports_a_medium_offering_an_older_link_of_the_chain(env, capsys):
    tmp, catalog, media, vol, key = env
    _roll_back(media, vol, capsys)
    target = tmp / "out.img"
    code, _, err = run(capsys, "restore", "--volume", vol.path, str(target))
    assert code == EXIT_CHAIN
    one_line(err, "sequence 1", "sequence 2", "d2.vpk", "nothing was written")
    assert not target.exists()


def test_backup_base_latest_refuses_a_rolled_back_chain_instead_of_using_an_older_base(env, capsys):
    tmp, catalog, media, vol, key = env
    _roll_back(media, vol, capsys)
    vol.change()
    code, _, err = run(
        capsys, "backup", "--allow-mounted", "--base", "latest", vol.path, str(media / "d3.vpk")
    )
    assert code == EXIT_CHAIN
    one_line(err, "sequence 1", "sequence 2", "rolled back")
    assert not (media / "d3.vpk").exists()


def test_the_chain_head_survives_a_rebuild_of_the_rolled_back_medium(env, capsys):
    tmp, catalog, media, vol, key = env
    done = _roll_back(media, vol, capsys)
    code, _, err = run(capsys, "catalog", "rebuild", str(media))
    assert code in (EXIT_OK, 1), err
    with Catalog.open(catalog, create=False) as c:
        assert c.chain_head(done[0]["chain_id"]).chain_seq == 2
    code, _, err = run(capsys, "restore", "--volume", vol.path, str(tmp / "out.img"))
    assert code == EXIT_CHAIN, err


@pytest.mark.s3
def test_a_rolled_back_s3_object_is_reported_by_restore_volume(env, capsys, s3_bucket):
    from volpack import media as M

    tmp, catalog, media, vol, key = env
    prefix = f"s3://{s3_bucket}/rb/"
    nightly(capsys, vol, prefix, 3)
    reader = M.open_reader(f"{prefix}d1.vpk")
    try:
        data = reader.read_at(0, reader.size)
    finally:
        reader.close()
    writer = M.open_writer(f"{prefix}d2.vpk", force=True)
    writer.write(data)
    writer.commit()
    target = tmp / "out.img"
    code, _, err = run(capsys, "restore", "--volume", vol.path, str(target))
    assert code == EXIT_CHAIN
    one_line(err, "sequence 1", "sequence 2", f"{prefix}d2.vpk")
    assert not target.exists()


def test_a_sealed_chain_rolled_back_is_reported_without_any_key(env, capsys):
    tmp, catalog, media, vol, key = env
    backup(capsys, vol, media / "s0.vpk", "--key-file", key)
    for n in (1, 2):
        vol.change()
        backup(capsys, vol, media / f"s{n}.vpk", "--key-file", key, "--base", "latest")
    shutil.copyfile(media / "s0.vpk", media / "s2.vpk")
    vol.change()
    code, _, err = run(
        capsys,
        "backup",
        "--allow-mounted",
        "--key-file",
        key,
        "--base",
        "latest",
        vol.path,
        str(media / "s3.vpk"),
    )
    assert code == EXIT_CHAIN
    one_line(err, "sequence 0", "sequence 2")
    assert not (media / "s3.vpk").exists()
