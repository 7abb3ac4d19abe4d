"""Key slots: every kind opens with its key and only with it; several slots per archive; the
slot list's layout round-trips and every malformed list is CorruptArchive; Argon2id parameters
are checked on read (weak: WeakKeySlot, exit 12; absurd: CorruptArchive, exit 4) before any
work is spent; fingerprints say nothing about keys; key files must be exactly 32 bytes."""

from __future__ import annotations

import os
import struct

import pytest

from volpack.crypto import (
    Argon2Params,
    DataKey,
    DecryptKeys,
    EncryptKeys,
    KeyFile,
    KeyFileSlot,
    Passphrase,
    PassphraseSlot,
    UnknownSlot,
    X25519Slot,
    decode_slots,
    encode_slots,
    generate_identity,
    make_slots,
    open_slots,
)
from volpack.crypto.files import read_key_file
from volpack.crypto.slots import fingerprint
from volpack.errors import (
    EXIT_CORRUPT,
    EXIT_KEY,
    EXIT_USAGE,
    CorruptArchive,
    UsageError,
    WeakKeySlot,
    WrongKey,
)


@pytest.fixture(scope="module")
def sealed(min_argon2):
    """One archive's data key and slots: two recipients, a passphrase, a key file."""
    a, b = generate_identity(), generate_identity()
    key_file = KeyFile(os.urandom(32))
    data_key = DataKey.generate()
    slots = make_slots(
        data_key,
        EncryptKeys(
            recipients=(a.recipient, b.recipient),
            passphrases=(Passphrase(b"correct horse"),),
            key_files=(key_file,),
            argon2=min_argon2,
        ),
    )
    return data_key, slots, a, b, key_file


def test_any_one_of_several_slots_opens_the_archive_with_its_own_key(sealed):
    data_key, slots, a, b, key_file = sealed
    assert [type(s) for s in slots] == [X25519Slot, X25519Slot, PassphraseSlot, KeyFileSlot]
    for keys in (
        DecryptKeys(identities=(a,)),
        DecryptKeys(identities=(b,)),
        DecryptKeys(passphrases=(Passphrase(b"correct horse"),)),
        DecryptKeys(key_files=(key_file,)),
        DecryptKeys(identities=(generate_identity(), b)),  # one wrong, one right
    ):
        assert open_slots(slots, keys) == data_key


def test_a_wrong_identity_passphrase_or_key_file_is_one_wrongkey_error_with_exit_12(sealed):
    _, slots, *_ = sealed
    for keys in (
        DecryptKeys(identities=(generate_identity(),)),
        DecryptKeys(passphrases=(Passphrase(b"correct horse "),)),
        DecryptKeys(key_files=(KeyFile(os.urandom(32)),)),
    ):
        with pytest.raises(WrongKey) as err:
            open_slots(slots, keys, "s3://b/d.vpk")
        assert err.value.exit_code == EXIT_KEY
        text = str(err.value)
        assert text.startswith("s3://b/d.vpk: none of its 4 key slots") and "\n" not in text
        assert "2 x25519" in text and "1 argon2id" in text and "1 key-file" in text


def test_no_key_at_all_is_a_usage_error_not_a_wrong_key(sealed):
    _, slots, *_ = sealed
    with pytest.raises(UsageError, match="is encrypted; give an identity"):
        open_slots(slots, DecryptKeys())


def test_the_slot_list_round_trips_through_its_bytes_and_the_layout_is_as_documented(sealed):
    _, slots, *_ = sealed
    data = encode_slots(slots)
    assert decode_slots(data) == slots
    assert struct.unpack_from("<HH", data) == (4, 0)
    assert struct.unpack_from("<BBH", data, 4) == (1, 0, 64)  # x25519: share + wrapped key
    sizes = [64, 64, 60, 48]
    assert len(data) == 4 + sum(4 + n for n in sizes)
    passphrase_at = 4 + 2 * (4 + 64)
    assert struct.unpack_from("<BBH16sIII", data, passphrase_at)[:2] == (2, 0)
    assert struct.unpack_from("<BBH16sIII", data, passphrase_at)[4:] == (65536, 3, 1)


def test_a_slot_of_an_unknown_kind_is_kept_byte_for_byte_and_never_opens(sealed):
    data_key, slots, a, *_ = sealed
    future = UnknownSlot(kind=9, raw=os.urandom(1100))
    data = encode_slots((future, *slots))
    decoded = decode_slots(data)
    assert decoded[0] == future and encode_slots(decoded) == data
    assert open_slots(decoded, DecryptKeys(identities=(a,))) == data_key
    with pytest.raises(WrongKey, match="1 kind-9"):
        open_slots(decoded[:1], DecryptKeys(identities=(a,)))


def test_every_truncation_and_every_trailing_byte_of_a_slot_list_is_corrupt(sealed):
    _, slots, *_ = sealed
    data = encode_slots(slots)
    for cut in range(len(data)):
        with pytest.raises(CorruptArchive, match="key slot list") as err:
            decode_slots(data[:cut], "d.vpk")
        assert err.value.exit_code == EXIT_CORRUPT
    with pytest.raises(CorruptArchive, match="1 bytes after the last of 4 slots"):
        decode_slots(data + b"\0")


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        (lambda d: struct.pack("<HH", 0, 0) + d[4:], "slot count 0"),
        (lambda d: struct.pack("<HH", 65, 0) + d[4:], "slot count 65"),
        (lambda d: d[:2] + b"\1\0" + d[4:], "reserved field is 1"),
        (lambda d: d[:5] + b"\7" + d[6:], "slot 1: reserved field is 7"),
        (lambda d: d[:6] + struct.pack("<H", 63) + d[8:], "kind 1 body is 63 bytes"),
        (lambda d: d[:4] + b"\0" + d[5:], "slot 1: kind 0 is reserved"),
        (lambda d: d[:6] + struct.pack("<H", 5000) + d[8:], "claims 5000 bytes"),
    ],
)
def test_malformed_slot_lists_are_corrupt_naming_the_byte(sealed, patch, problem):
    _, slots, *_ = sealed
    with pytest.raises(CorruptArchive, match=problem):
        decode_slots(patch(encode_slots(slots)), "d.vpk")


def _with_params(slot: PassphraseSlot, memory: int, iterations: int, lanes: int) -> bytes:
    body = struct.pack("<16sIII32s", slot.salt, memory, iterations, lanes, slot.wrapped)
    return struct.pack("<HHBBH", 1, 0, 2, 0, len(body)) + body


@pytest.mark.parametrize(
    ("memory", "iterations", "lanes", "problem"),
    [
        (8 * 1024, 3, 1, "memory 8192 KiB is below the minimum 65536 KiB"),
        (64 * 1024, 1, 1, "iterations × memory = 1 × 65536 KiB is below the minimum"),
        (96 * 1024, 1, 4, "iterations × memory = 1 × 98304 KiB is below the minimum"),
    ],
)
def test_weak_argon2_parameters_are_refused_on_read_before_any_work(
    sealed, memory, iterations, lanes, problem, monkeypatch
):
    _, slots, *_ = sealed
    (weak,) = decode_slots(_with_params(slots[2], memory, iterations, lanes))

    def never(*args):
        raise AssertionError("Argon2id ran for a weak slot")

    monkeypatch.setattr(Argon2Params, "kek", never)  # a probe: refused, not derived
    with pytest.raises(WeakKeySlot, match=problem) as err:
        open_slots((weak,), DecryptKeys(passphrases=(Passphrase(b"correct horse"),)), "d.vpk")
    assert err.value.exit_code == EXIT_KEY and "key slot 1 (argon2id)" in str(err.value)


@pytest.mark.parametrize(
    ("memory", "iterations", "lanes", "problem"),
    [
        (64 * 1024 * 1024, 3, 4, "memory 67108864 KiB is beyond the 4194304 KiB"),
        (64 * 1024, 1000, 4, "1000 iterations is outside 1..32"),
        (64 * 1024, 0, 4, "0 iterations is outside 1..32"),
        (64 * 1024, 3, 0, "0 lanes is outside 1..64"),
        (64 * 1024, 3, 2**24, "16777216 lanes is outside 1..64"),
        (8, 3, 4, "below Argon2's 8 KiB per lane"),
    ],
)
def test_absurd_argon2_parameters_are_a_corrupt_slot_list(
    sealed, memory, iterations, lanes, problem
):
    _, slots, *_ = sealed
    with pytest.raises(CorruptArchive, match=problem):
        decode_slots(_with_params(slots[2], memory, iterations, lanes), "d.vpk")


def test_a_weak_passphrase_slot_does_not_stop_another_slot_from_opening(sealed):
    data_key, slots, a, *_ = sealed
    (weak,) = decode_slots(_with_params(slots[2], 1024, 3, 1))
    keys = DecryptKeys(identities=(a,), passphrases=(Passphrase(b"x"),))
    assert open_slots((weak, slots[0]), keys) == data_key


def test_writing_weak_or_absurd_argon2_parameters_is_a_usage_error():
    for params in (Argon2Params(1024, 3, 1), Argon2Params(8 * 1024 * 1024, 3, 4)):
        with pytest.raises(UsageError, match="Argon2id parameters") as err:
            PassphraseSlot.wrap(DataKey.generate(), Passphrase(b"pw"), params)
        assert err.value.exit_code == EXIT_USAGE


def test_fingerprints_name_slots_and_reveal_nothing_about_the_key(sealed):
    data_key, slots, a, *_ = sealed
    prints = [fingerprint(s) for s in slots]
    assert prints[0].startswith("x25519:") and prints[2].startswith("argon2id:")
    assert len(set(prints)) == 4 and all(len(p.split(":")[1]) == 32 for p in prints)
    # the same recipient in another archive gets another fingerprint: nothing links the two
    (again,) = make_slots(DataKey.generate(), EncryptKeys(recipients=(a.recipient,)))
    assert fingerprint(again) not in prints
    material = [data_key.secret.hex(), a.secret.hex(), a.recipient.public.hex()]
    assert not any(m[:8] in p for m in material for p in prints)


def test_secrets_never_show_in_the_repr_of_keys_or_slots(sealed):
    data_key, _, a, _, key_file = sealed
    passphrase = Passphrase(b"correct horse")
    pairs = [(data_key, data_key.secret), (a, a.secret), (key_file, key_file.secret)]
    for obj, secret in [*pairs, (passphrase, passphrase.secret)]:
        assert secret.hex() not in repr(obj) and repr(secret) not in repr(obj)
    keys = DecryptKeys(identities=(a,), passphrases=(passphrase,), key_files=(key_file,))
    assert "correct horse" not in repr(keys) and a.encoded() not in repr(keys)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64, 1000])
def test_a_key_file_of_any_size_but_32_bytes_is_refused_naming_its_size(tmp_path, size):
    path = tmp_path / "k.bin"
    path.write_bytes(os.urandom(size))
    with pytest.raises(UsageError, match=f"holds {size} bytes, a key file must hold exactly 32"):
        read_key_file(str(path))
    path.write_bytes(os.urandom(32))
    assert len(read_key_file(str(path)).secret) == 32


def test_a_low_order_recipient_is_refused_when_sealing():
    from volpack.crypto import Recipient

    with pytest.raises(UsageError, match="low order"):
        make_slots(DataKey.generate(), EncryptKeys(recipients=(Recipient(bytes(32)),)))
