"""Interop with the real age CLI both ways: a volpack X25519 key slot, put in an age file, is
unwrapped by ``age -d -i``; a stanza age wrote is unwrapped by volpack; identities made by
age-keygen work in volpack and identities made by volpack work in age."""

from __future__ import annotations

import os
import subprocess

import age_format
import pytest

from volpack.crypto import (
    DataKey,
    DecryptKeys,
    EncryptKeys,
    Recipient,
    X25519Slot,
    make_slots,
    open_slots,
)
from volpack.crypto.files import read_identities
from volpack.errors import WrongKey


def _keygen(keygen: str, path) -> str:
    subprocess.run([keygen, "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(
        [keygen, "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


def _vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "volpack", *args], capture_output=True, text=True)


def test_volpack_reads_age_keygen_identities_and_derives_the_same_recipient(age_cli, tmp_path):
    _, keygen = age_cli
    expected = _keygen(keygen, tmp_path / "k.txt")
    (identity,) = read_identities(str(tmp_path / "k.txt"))
    assert str(identity.recipient) == expected
    assert Recipient.parse(expected) == identity.recipient


def test_age_decrypts_a_file_built_around_a_volpack_slot_for_an_age_keygen_identity(
    age_cli, tmp_path
):
    age, keygen = age_cli
    recipient = Recipient.parse(_keygen(keygen, tmp_path / "k.txt"))
    data_key = DataKey.generate()
    (slot,) = make_slots(data_key, EncryptKeys(recipients=(recipient,)))
    payload = os.urandom(200_000)  # four STREAM chunks, the last one short
    (tmp_path / "f.age").write_bytes(
        age_format.build([slot.age_stanza()], data_key.secret, payload)
    )
    out = subprocess.run(
        [age, "-d", "-i", str(tmp_path / "k.txt"), str(tmp_path / "f.age")],
        capture_output=True,
        check=True,
    )
    assert out.stdout == payload


def test_age_unwraps_each_of_several_volpack_slots_with_a_volpack_generated_identity(
    age_cli, tmp_path
):
    age, _ = age_cli
    recipients = []
    for name in ("a.key", "b.key"):
        r = _vp("key", "generate", "-o", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        recipients.append(Recipient.parse(r.stdout.strip()))
    data_key = DataKey.generate()
    slots = make_slots(data_key, EncryptKeys(recipients=tuple(recipients)))
    stanzas = [s.age_stanza() for s in slots if isinstance(s, X25519Slot)]
    (tmp_path / "f.age").write_bytes(age_format.build(stanzas, data_key.secret, b"volpack\n"))
    for name in ("a.key", "b.key"):
        out = subprocess.run(
            [age, "-d", "-i", str(tmp_path / name), str(tmp_path / "f.age")],
            capture_output=True,
            check=True,
        )
        assert out.stdout == b"volpack\n"


def test_age_refuses_a_volpack_slot_file_with_another_identity(age_cli, tmp_path):
    age, keygen = age_cli
    recipient = Recipient.parse(_keygen(keygen, tmp_path / "k.txt"))
    _keygen(keygen, tmp_path / "other.txt")
    data_key = DataKey.generate()
    (slot,) = make_slots(data_key, EncryptKeys(recipients=(recipient,)))
    (tmp_path / "f.age").write_bytes(age_format.build([slot.age_stanza()], data_key.secret, b"x"))
    out = subprocess.run(
        [age, "-d", "-i", str(tmp_path / "other.txt"), str(tmp_path / "f.age")],
        capture_output=True,
    )
    assert out.returncode != 0 and out.stdout == b""


def test_volpack_unwraps_the_file_key_of_a_file_age_encrypted_to_a_volpack_recipient(
    age_cli, tmp_path
):
    age, keygen = age_cli
    r = _vp("key", "generate", "-o", str(tmp_path / "v.key"))
    assert r.returncode == 0, r.stderr
    other = _keygen(keygen, tmp_path / "other.txt")
    payload = os.urandom(70_000)
    (tmp_path / "plain").write_bytes(payload)
    recipients = ["-r", other, "-r", r.stdout.strip()]
    out = str(tmp_path / "f.age")
    subprocess.run([age, "-e", *recipients, "-o", out, str(tmp_path / "plain")], check=True)
    stanzas, covered, mac, body = age_format.parse((tmp_path / "f.age").read_bytes())
    slots = [X25519Slot.from_age_stanza(args[1:], text) for args, text in stanzas]
    assert [args[0] for args, _ in stanzas] == ["X25519", "X25519"]
    identities = read_identities(str(tmp_path / "v.key"))
    file_key = open_slots(slots, DecryptKeys(identities=identities))
    assert age_format.check_mac(file_key.secret, covered, mac)
    assert age_format.decrypt_payload(file_key.secret, body) == payload
    # the age-keygen identity opens the other stanza to the same file key
    theirs = DecryptKeys(identities=read_identities(str(tmp_path / "other.txt")))
    assert open_slots(slots, theirs) == file_key
    with pytest.raises(WrongKey):
        open_slots(slots[1:], theirs)
