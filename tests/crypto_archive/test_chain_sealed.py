"""Sealed chains: an incremental on a sealed base is sealed with the base's chain hash key and
restores, verifies and merges with the key; a base that the key does not open is refused (exit
12); an incremental pointed at another base fails its header MAC (exit 12) or finds no base
(exit 11); keys given for an unencrypted archive are refused (exit 12)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import forge
import pytest

from cli_helpers import one_error_line

VP = [sys.executable, "-m", "volpack"]


def vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VP, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)


def ok(*args: str) -> subprocess.CompletedProcess:
    r = vp(*args)
    assert r.returncode == 0, r.stderr
    return r


def _change(path: pathlib.Path) -> None:
    with open(path, "r+b") as f:
        f.seek(2 << 20)
        f.write(b"changed since the full " * 4000)
        f.seek(1 << 20)
        f.write(bytes(8192))  # data that became zeros


@pytest.fixture
def chain(tmp_path, volume, test_keys):
    """full.vpk sealed to the key file and recipient, the volume changed, inc.vpk on it."""
    vol = tmp_path / "v.img"
    shutil.copyfile(volume, vol)
    keys = ["--key-file", test_keys.key_file, "--recipient", test_keys.recipient]
    ok("backup", str(vol), str(tmp_path / "full.vpk"), "--no-catalog", *keys)
    _change(vol)
    ok(
        "backup",
        str(vol),
        str(tmp_path / "inc.vpk"),
        "--no-catalog",
        "--base",
        str(tmp_path / "full.vpk"),
        *keys,
    )
    return tmp_path, vol


def test_a_sealed_incremental_restores_applies_verifies_its_chain_and_merges_with_the_key(
    chain, test_keys
):
    d, vol = chain
    out = d / "out.img"
    ok("restore", str(d / "inc.vpk"), str(out), "-i", test_keys.identity_file)
    assert out.read_bytes() == vol.read_bytes()
    r = ok("verify", str(d / "inc.vpk"), "--chain", "--key-file", test_keys.key_file)
    assert "chain ok: 2 archives" in r.stdout
    ok(
        "merge",
        str(d / "inc.vpk"),
        str(d / "merged.vpk"),
        "--no-catalog",
        "--key-file",
        test_keys.key_file,
    )
    in_place = d / "in-place.img"
    ok("restore", str(d / "full.vpk"), str(in_place), "--key-file", test_keys.key_file)
    ok(
        "restore",
        str(d / "inc.vpk"),
        str(in_place),
        "--apply",
        "--force",
        "--key-file",
        test_keys.key_file,
    )
    assert in_place.read_bytes() == vol.read_bytes()
    merged = d / "merged.out"
    ok("restore", str(d / "merged.vpk"), str(merged), "--key-file", test_keys.key_file)
    assert merged.read_bytes() == vol.read_bytes()


def test_the_incremental_hash_table_is_keyed_with_the_chain_key_of_its_base(chain, test_keys):
    from volpack.format.hashtable import block_hash
    from volpack.format.random_access import open_archive

    d, vol = chain
    keyring = test_keys.keyring(key_file=True)
    with (
        open_archive(str(d / "full.vpk"), keyring=keyring) as full,
        open_archive(str(d / "inc.vpk"), keyring=keyring) as inc,
    ):
        assert full.unsealer.chain_key == inc.unsealer.chain_key
        assert full.hash_table.key == inc.hash_table.key == inc.unsealer.chain_key
        hbs = inc.header.hash_block_size
        index = int(inc.hash_table.entries["index"][0])
        block = vol.read_bytes()[index * hbs : (index + 1) * hbs]
        recorded = bytes(inc.hash_table.entries["hash"][0])
        assert recorded == block_hash(block, inc.unsealer.chain_key)
        assert recorded != block_hash(block)  # unkeyed, it would confirm guessed contents


def test_an_incremental_whose_base_the_key_does_not_open_is_refused(tmp_path, volume, test_keys):
    vol = tmp_path / "v.img"
    shutil.copyfile(volume, vol)
    ok(
        "backup",
        str(vol),
        str(tmp_path / "full.vpk"),
        "--no-catalog",
        "--key-file",
        test_keys.other_key_file,
    )
    _change(vol)
    r = vp(
        "backup",
        str(vol),
        str(tmp_path / "inc.vpk"),
        "--no-catalog",
        "--base",
        str(tmp_path / "full.vpk"),
        "--key-file",
        test_keys.key_file,
    )
    one_error_line(r, 12, "key slot")
    assert not (tmp_path / "inc.vpk").exists()
    # unsealed incremental on a sealed base, and sealed on an unsealed one: both refused
    r = vp(
        "backup",
        str(vol),
        str(tmp_path / "inc.vpk"),
        "--no-catalog",
        "--base",
        str(tmp_path / "full.vpk"),
    )
    one_error_line(r, 2, "encrypted")
    ok("backup", str(volume), str(tmp_path / "plain.vpk"), "--no-catalog")
    r = vp(
        "backup",
        str(vol),
        str(tmp_path / "inc.vpk"),
        "--no-catalog",
        "--base",
        str(tmp_path / "plain.vpk"),
        "--key-file",
        test_keys.key_file,
    )
    one_error_line(r, 2, "not encrypted")
    assert not (tmp_path / "inc.vpk").exists()


def test_restoring_a_chain_whose_base_the_key_does_not_open_is_exit_12(tmp_path, volume, test_keys):
    vol = tmp_path / "v.img"
    shutil.copyfile(volume, vol)
    both = ["--key-file", test_keys.key_file, "--recipient", test_keys.recipient]
    ok(
        "backup",
        str(vol),
        str(tmp_path / "full.vpk"),
        "--no-catalog",
        "--key-file",
        test_keys.key_file,
    )
    _change(vol)
    ok(
        "backup",
        str(vol),
        str(tmp_path / "inc.vpk"),
        "--no-catalog",
        "--base",
        str(tmp_path / "full.vpk"),
        *both,
    )
    r = vp(
        "restore",
        str(tmp_path / "inc.vpk"),
        str(tmp_path / "out.img"),
        "-i",
        test_keys.identity_file,
    )
    one_error_line(r, 12, "full.vpk")
    assert not (tmp_path / "out.img").exists()


def test_an_incremental_pointed_at_another_base_is_refused(chain, volume, test_keys):
    d, vol = chain
    keys = ["--key-file", test_keys.key_file]
    ok("backup", str(vol), str(d / "other.vpk"), "--no-catalog", *keys)
    data = (d / "inc.vpk").read_bytes()
    other = (d / "other.vpk").read_bytes()
    # The link rewritten to name the other full (UUID, digest, state): the header MAC fails.
    p = forge.split(data)
    o = forge.split(other)
    other_digest = other[-64 - 32 : -64]  # the last 32 bytes of its trailer
    p.header[112:128] = o.header[32:48]
    p.header[128:160] = other_digest
    p.header[160:192] = o.hash_part[-32:]
    p.header[88:104] = o.header[88:104]
    (d / "inc.vpk").write_bytes(forge.build(p))
    r = vp("restore", str(d / "inc.vpk"), str(d / "out.img"), *keys)
    one_error_line(r, 12, "header MAC")
    assert not (d / "out.img").exists()
    # The base itself replaced by the other full under its name: no base is found.
    (d / "inc.vpk").write_bytes(data)
    (d / "full.vpk").write_bytes(other)
    (d / "other.vpk").unlink()
    r = vp("restore", str(d / "inc.vpk"), str(d / "out.img"), *keys)
    one_error_line(r, 11, "not found")
    assert not (d / "out.img").exists()


def test_keys_given_for_an_unencrypted_archive_are_refused(volume, test_keys, tmp_path):
    ok("backup", str(volume), str(tmp_path / "plain.vpk"), "--no-catalog")
    r = vp(
        "restore",
        str(tmp_path / "plain.vpk"),
        str(tmp_path / "o.img"),
        "--key-file",
        test_keys.key_file,
    )
    one_error_line(r, 12, "not encrypted")
    assert not (tmp_path / "o.img").exists()
    ok("restore", str(tmp_path / "plain.vpk"), str(tmp_path / "o.img"))


def test_backup_and_catalog_rebuild_record_a_sealed_archive_without_any_key(
    volume, test_keys, tmp_path
):
    """The catalog learns format 1.4 and the used blocks from public fields; backup's result
    names each slot by its fingerprint, never by a key."""
    cat = tmp_path / "cat.db"
    media = tmp_path / "media"
    media.mkdir()
    r = ok(
        "backup",
        str(volume),
        str(media / "s.vpk"),
        "--catalog",
        str(cat),
        "--json",
        "--key-file",
        test_keys.key_file,
        "--recipient",
        test_keys.recipient,
    )
    result = json.loads(r.stdout)
    assert result["encrypted"] is True and result["format_version"] == "1.4"
    assert [s.split(":")[0] for s in result["key_slots"]] == ["x25519", "key-file"]
    assert pathlib.Path(test_keys.key_file).read_bytes().hex() not in r.stdout
    other = tmp_path / "rebuilt.db"
    ok("catalog", "rebuild", "--catalog", str(other), str(media))
    for db in (cat, other):
        listed = json.loads(ok("list", "--catalog", str(db), "--json").stdout)
        entries = listed if isinstance(listed, list) else listed.get("archives", listed)
        (entry,) = [e for e in entries if e["uuid"] == result["archive_uuid"]]
        assert entry["format_version"] == "1.4"
        assert entry["used_blocks"] == result["used_blocks"]
