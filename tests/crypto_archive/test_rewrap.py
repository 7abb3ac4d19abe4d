"""``volpack rewrap`` on real sealed archives: the result opens with the new keys and not with a
removed one, verifies and restores the volume; its frames, sealed tables and hash table are the
old bytes (nothing re-encrypted); slots of unknown kinds are carried over; a wrong old key is exit
12 with nothing written; a rewrapped archive is as tamper-evident as any other."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import forge
import pytest

from cli_helpers import one_error_line

VP = [sys.executable, "-m", "volpack"]


def vp(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VOLPACK_PASSPHRASE"}
    return subprocess.run([*VP, *args], capture_output=True, text=True, env=env)


@pytest.fixture
def rewrapped(sealed, test_keys, tmp_path) -> str:
    """``sealed`` (recipient + key file) rewrapped with the identity to the other key file."""
    out = str(tmp_path / "new.vpk")
    r = vp(
        "rewrap",
        sealed,
        out,
        "-i",
        test_keys.identity_file,
        "--key-file",
        test_keys.other_key_file,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    return out


def test_rewrapped_archive_opens_with_the_new_key_not_a_removed_one_and_verifies(
    rewrapped, test_keys, volume, tmp_path
):
    r = vp("verify", rewrapped, "--key-file", test_keys.other_key_file)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.img"
    r = vp("restore", rewrapped, str(out), "--key-file", test_keys.other_key_file)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()
    for removed in (("--key-file", test_keys.key_file), ("-i", test_keys.identity_file)):
        target = tmp_path / "no.img"
        r = vp("restore", rewrapped, str(target), *removed)
        one_error_line(r, 12, "key slots")
        assert not target.exists()


def test_rewrap_copies_frames_tables_and_hash_table_as_they_are(sealed, rewrapped):
    old = forge.split(pathlib.Path(sealed).read_bytes())
    new = forge.split(pathlib.Path(rewrapped).read_bytes())
    assert new.header == old.header
    assert new.frames == old.frames
    assert new.records[1:] == old.records[1:]  # DESC, PMAP, ATAB sealed bytes
    assert new.hash_part == old.hash_part
    assert new.records[0] != old.records[0]  # KEYS: new slots and MAC


def test_rewrap_with_a_wrong_old_key_is_exit_12_and_writes_nothing(sealed, test_keys, tmp_path):
    out = tmp_path / "new.vpk"
    r = vp(
        "rewrap",
        sealed,
        str(out),
        "--old-key-file",
        test_keys.other_key_file,
        "--key-file",
        test_keys.other_key_file,
    )
    one_error_line(r, 12, "key slots")
    assert not out.exists() and os.listdir(tmp_path) == []


def test_rewrap_to_a_passphrase_and_back_to_a_recipient(sealed, test_keys, volume, tmp_path):
    mid, last = str(tmp_path / "p.vpk"), str(tmp_path / "r.vpk")
    r = vp(
        "rewrap",
        sealed,
        mid,
        "--old-key-file",
        test_keys.key_file,
        "--passphrase-file",
        test_keys.passphrase_file,
    )
    assert r.returncode == 0, r.stderr
    r = vp(
        "rewrap",
        mid,
        last,
        "--old-passphrase-file",
        test_keys.passphrase_file,
        "--recipient",
        test_keys.recipient,
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.img"
    r = vp("restore", last, str(out), "-i", test_keys.identity_file)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()
    r = vp("verify", last, "--passphrase-file", test_keys.passphrase_file)
    one_error_line(r, 12, "key slots")


def test_a_tampered_rewrapped_archive_is_refused(rewrapped, test_keys, tmp_path):
    parts = forge.split(pathlib.Path(rewrapped).read_bytes())
    codec, raw, stored = parts.frames[3]
    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 0x10
    parts.frames[3] = (codec, raw, bytes(flipped))
    bad = tmp_path / "bad.vpk"
    bad.write_bytes(forge.build(parts))
    r = vp("verify", str(bad), "--key-file", test_keys.other_key_file)
    one_error_line(r, 12)
    # A slot added to the rewrapped list (checksums recomputed) fails the header MAC.
    parts = forge.split(pathlib.Path(rewrapped).read_bytes())
    keys = bytearray(parts.records[0][1])
    n = int.from_bytes(keys[4:8], "little")
    slots = bytes(keys[8 : 8 + n])
    count = int.from_bytes(slots[:2], "little")
    grown = (count + 1).to_bytes(2, "little") + slots[2:] + bytes([200, 0, 4, 0]) + b"evil"
    parts.records[0] = (
        b"KEYS",
        bytes(keys[:4]) + len(grown).to_bytes(4, "little") + grown + bytes(keys[8 + n :]),
    )
    bad.write_bytes(forge.build(parts))
    r = vp("restore", str(bad), str(tmp_path / "o.img"), "--key-file", test_keys.other_key_file)
    one_error_line(r, 12)
    assert not (tmp_path / "o.img").exists()


def test_rewrap_keeps_slots_of_kinds_it_does_not_know(sealed, test_keys, tmp_path):
    import uuid as uuidlib

    from volpack.crypto import Subkeys, decode_slots, encode_slots, header_mac
    from volpack.crypto.slots import UnknownSlot
    from volpack.format.sealing import KeysRecord

    # An archive a newer volpack might write: one more slot of kind 200, MAC made with the key.
    parts = forge.split(pathlib.Path(sealed).read_bytes())
    old = KeysRecord.decode(parts.records[0][1], "test")
    slots = decode_slots(old.slot_list)
    header = bytes(parts.header)
    uuid = forge.R.Header.decode(header).uuid
    data_key = test_keys.keyring(key_file=True).data_key(uuid, old.slot_list, slots, "test")
    future = UnknownSlot(200, b"a post-quantum share, say")
    grown = KeysRecord(old.cipher, encode_slots((*slots, future)), old.sealed_chain_key, b"")
    sub = Subkeys.derive(data_key, uuidlib.UUID(uuid).bytes)
    mac = header_mac(sub, header + grown.covered())
    parts.records[0] = (b"KEYS", grown.covered() + mac)
    src = tmp_path / "future.vpk"
    src.write_bytes(forge.build(parts))
    assert vp("verify", str(src), "--key-file", test_keys.key_file).returncode == 0
    out = tmp_path / "out.vpk"
    r = vp(
        "rewrap",
        str(src),
        str(out),
        "--old-key-file",
        test_keys.key_file,
        "--key-file",
        test_keys.other_key_file,
    )
    assert r.returncode == 0, r.stderr
    new = KeysRecord.decode(forge.split(out.read_bytes()).records[0][1], "test")
    kept = [s for s in decode_slots(new.slot_list) if isinstance(s, UnknownSlot)]
    assert kept == [future]
    assert vp("verify", str(out), "--key-file", test_keys.other_key_file).returncode == 0


def test_rewrap_of_an_unencrypted_archive_is_refused(volume, test_keys, tmp_path):
    plain = tmp_path / "plain.vpk"
    import volpack

    volpack.backup(volume, str(plain))
    r = vp(
        "rewrap",
        str(plain),
        str(tmp_path / "n.vpk"),
        "--old-key-file",
        test_keys.key_file,
        "--key-file",
        test_keys.other_key_file,
    )
    one_error_line(r, 12, "not encrypted")
    assert not (tmp_path / "n.vpk").exists()


@pytest.mark.parametrize("version", ["v1.3", "v1.4"])
def test_rewrap_keeps_the_archives_version_and_its_digest_rule(version, tmp_path):
    """A 1.3 archive stays 1.3 (digest over every byte), a 1.4 one 1.4 (the metadata stream):
    the result's digest, recomputed from the spec, is the one it records, and it verifies."""
    from spec_digest import spec_digest

    golden = pathlib.Path(__file__).parents[1] / "format" / "golden" / "encrypted"
    key_file = str(golden / f"{version}.keyfile")
    out = tmp_path / "new.vpk"
    old = str(golden / f"{version}.vpk")
    r = vp("rewrap", old, str(out), "--old-key-file", key_file, "--key-file", key_file)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert int.from_bytes(data[10:12], "little") == int(version.split(".")[1])
    toff = int.from_bytes(data[-56:-48], "little")
    assert data[-96:-64] == spec_digest(data[:toff], data[toff + 32 : -96])
    r = vp("verify", str(out), "--key-file", key_file)
    assert r.returncode == 0, r.stderr


def _listed(catalog: str) -> list[dict]:
    import json

    r = vp("list", "--json", "--catalog", catalog)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_rewrapped_archive_is_recorded_as_another_place_holding_the_catalogued_one(
    volume, test_keys, tmp_path
):
    import json

    catalog = str(tmp_path / "cat.sqlite")
    old, new = str(tmp_path / "old.vpk"), str(tmp_path / "new.vpk")
    seal = ("--key-file", test_keys.key_file, "--catalog", catalog)
    assert vp("backup", volume, old, *seal).returncode == 0
    r = vp(
        "rewrap", old, new, "--old-key-file", test_keys.key_file, "--key-file",
        test_keys.other_key_file, "--catalog", catalog, "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    [entry] = _listed(catalog)  # one archive (one id), no clash
    assert entry["uuid"] == result["archive_uuid"]
    assert sorted(entry["urls"]) == sorted([old, new])
    assert entry["digest"] == result["old_digest"] != result["digest"]  # what chain links name
    assert set(result["key_slots"]) <= set(entry["key_slots"])
    # restore by id reads the first place recorded, the old copy, with the old key
    out = tmp_path / "out.img"
    r = vp(
        "restore", entry["uuid"], str(out), "--key-file", test_keys.key_file, "--catalog", catalog
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()


def test_an_archive_rewrapped_in_place_keeps_its_catalog_row_with_only_the_new_slots(
    volume, test_keys, tmp_path
):
    catalog = str(tmp_path / "cat.sqlite")
    arch = str(tmp_path / "a.vpk")
    r = vp("backup", volume, arch, "--key-file", test_keys.key_file, "--catalog", catalog)
    assert r.returncode == 0, r.stderr
    [before] = _listed(catalog)
    r = vp(
        "rewrap", arch, arch, "--force", "--old-key-file", test_keys.key_file, "--key-file",
        test_keys.other_key_file, "--catalog", catalog,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    [after] = _listed(catalog)
    assert after["uuid"] == before["uuid"] and after["urls"] == [arch]
    assert len(after["key_slots"]) == 1 and after["key_slots"] != before["key_slots"]
    out = tmp_path / "out.img"
    r = vp(
        "restore", after["uuid"], str(out), "--key-file", test_keys.other_key_file,
        "--catalog", catalog,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()


def test_a_rewrap_of_an_archive_the_catalog_does_not_know_is_recorded_like_a_backup(
    sealed, test_keys, tmp_path
):
    catalog = str(tmp_path / "cat.sqlite")
    new = str(tmp_path / "new.vpk")
    r = vp(
        "rewrap", sealed, new, "-i", test_keys.identity_file, "--key-file",
        test_keys.other_key_file, "--catalog", catalog,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    [entry] = _listed(catalog)
    assert entry["urls"] == [new] and entry["encrypted"] == 1
    assert len(entry["key_slots"]) == 1 and entry["key_slots"][0].startswith("key-file:")
    other = tmp_path / "other.sqlite"
    r = vp(
        "rewrap", sealed, str(tmp_path / "x.vpk"), "-i", test_keys.identity_file, "--key-file",
        test_keys.other_key_file, "--catalog", str(other), "--no-catalog",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not other.exists()
