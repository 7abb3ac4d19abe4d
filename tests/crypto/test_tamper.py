"""Tampering with sealed records and the header is always refused with TamperedArchive (exit
11): every bit flip of a sealed record, every field of its associated data changed, a record
moved to another position or spliced from another archive sealed to the same recipient, every
bit flip of a MAC'd header; and the sealer itself never reuses a nonce."""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest

from volpack.crypto import (
    Cipher,
    DataKey,
    DecryptKeys,
    EncryptKeys,
    RecordKind,
    RecordOpener,
    RecordPosition,
    Sealer,
    Subkeys,
    check_header_mac,
    generate_identity,
    header_mac,
    make_slots,
    open_slots,
)
from volpack.errors import EXIT_KEY, TamperedArchive


def _keys() -> Subkeys:
    return Subkeys.derive(DataKey.generate(), uuid.uuid4().bytes)


def _flips(data: bytes):
    for i in range(len(data) * 8):
        b = bytearray(data)
        b[i // 8] ^= 1 << (i % 8)
        yield i, bytes(b)


@pytest.mark.parametrize("cipher", list(Cipher))
def test_every_bit_flip_of_a_sealed_record_is_refused(cipher):
    keys = _keys()
    pos = RecordPosition(RecordKind.FRAME, 3, 3 * 65536)
    sealed = Sealer(keys, cipher).seal(pos, os.urandom(48), b"codec=zstd")
    opener = RecordOpener(keys, cipher, "d.vpk")
    refused = 0
    for _, bad in _flips(sealed):
        with pytest.raises(TamperedArchive) as err:
            opener.open(pos, bad, b"codec=zstd")
        refused += 1
        assert err.value.exit_code == EXIT_KEY
    assert refused == len(sealed) * 8
    # dropping or adding a byte is no better
    for bad in (sealed[:-1], sealed[1:], sealed + b"\0", b""):
        with pytest.raises(TamperedArchive):
            opener.open(pos, bad, b"codec=zstd")


def test_every_field_of_the_associated_data_changed_is_refused():
    keys = _keys()
    pos = RecordPosition(RecordKind.FRAME, 7, 7 * 65536, final=False)
    sealed = Sealer(keys).seal(pos, b"dense bytes", b"\x01")
    opener = RecordOpener(keys, Cipher.AES_256_GCM, "d.vpk")
    assert opener.open(pos, sealed, b"\x01") == b"dense bytes"
    moved = [
        RecordPosition(RecordKind.FRAME, 8, 7 * 65536),  # another sequence number
        RecordPosition(RecordKind.FRAME, 7, 8 * 65536),  # another dense offset
        RecordPosition(RecordKind.FRAME, 7, 7 * 65536, final=True),  # claimed last
        RecordPosition(RecordKind.ADDRESS_TABLE, 7, 7 * 65536),  # another kind
    ]
    for other in moved:
        with pytest.raises(TamperedArchive, match="does not authenticate"):
            opener.open(other, sealed, b"\x01")
    with pytest.raises(TamperedArchive):  # the record's public fields (e.g. its codec) changed
        opener.open(pos, sealed, b"\x00")
    elsewhere = dataclasses.replace(keys, archive_uuid=os.urandom(16))
    with pytest.raises(TamperedArchive):  # the same subkeys under another archive UUID
        RecordOpener(elsewhere, Cipher.AES_256_GCM).open(pos, sealed, b"\x01")
    with pytest.raises(TamperedArchive):  # the cipher named in the header swapped
        RecordOpener(keys, Cipher.CHACHA20_POLY1305).open(pos, sealed, b"\x01")


def test_swapped_and_duplicated_frames_are_refused_at_their_new_positions():
    keys = _keys()
    sealer = Sealer(keys)
    positions = [RecordPosition(RecordKind.FRAME, n, n * 4096) for n in range(4)]
    frames = [sealer.seal(p, bytes([n]) * 4096) for n, p in enumerate(positions)]
    opener = RecordOpener(keys, Cipher.AES_256_GCM)
    swapped = [frames[1], frames[0], frames[2], frames[2]]  # swap two, duplicate one
    for n, (p, f) in enumerate(zip(positions, swapped, strict=True)):
        if n == 2:
            assert opener.open(p, f) == bytes([2]) * 4096
        else:
            with pytest.raises(TamperedArchive):
                opener.open(p, f)


def test_truncation_is_seen_because_only_the_last_record_carries_the_final_flag():
    keys = _keys()
    sealer = Sealer(keys)
    body = sealer.seal(RecordPosition(RecordKind.FRAME, 0, 0), b"a")
    trailer = sealer.seal(RecordPosition(RecordKind.TRAILER, 0, final=True), b"trailer")
    opener = RecordOpener(keys, Cipher.AES_256_GCM)
    assert opener.open(RecordPosition(RecordKind.TRAILER, 0, final=True), trailer) == b"trailer"
    # a reader that finds the stream ending after the frame takes it for the last record: refused
    with pytest.raises(TamperedArchive, match="final"):
        opener.open(RecordPosition(RecordKind.FRAME, 0, 0, final=True), body)


def test_a_frame_spliced_from_another_archive_sealed_to_the_same_recipient_is_refused():
    identity = generate_identity()
    to = EncryptKeys(recipients=(identity.recipient,))
    archives = []
    for _ in range(2):
        data_key = DataKey.generate()
        slots = make_slots(data_key, to)
        archive_uuid = uuid.uuid4().bytes
        archives.append((slots, archive_uuid, Sealer(Subkeys.derive(data_key, archive_uuid))))
    pos = RecordPosition(RecordKind.FRAME, 0, 0)
    foreign = archives[1][2].seal(pos, b"block data")
    slots, archive_uuid, _ = archives[0]
    keys = Subkeys.derive(open_slots(slots, DecryptKeys(identities=(identity,))), archive_uuid)
    with pytest.raises(TamperedArchive):
        RecordOpener(keys, Cipher.AES_256_GCM).open(pos, foreign)


def test_every_bit_flip_of_a_macd_header_and_of_its_mac_is_refused():
    keys = _keys()
    header = os.urandom(40)
    mac = header_mac(keys, header)
    check_header_mac(keys, header, mac, "d.vpk")
    for _, bad in _flips(header):
        with pytest.raises(TamperedArchive, match="header MAC"):
            check_header_mac(keys, bad, mac, "d.vpk")
    for _, bad in _flips(mac):
        with pytest.raises(TamperedArchive):
            check_header_mac(keys, header, bad, "d.vpk")
    with pytest.raises(TamperedArchive):  # the right MAC under another archive's keys
        check_header_mac(_keys(), header, mac)


def test_the_sealer_refuses_a_sequence_number_that_does_not_rise_within_a_kind():
    sealer = Sealer(_keys())
    sealer.seal(RecordPosition(RecordKind.FRAME, 5, 0), b"x")
    sealer.seal(RecordPosition(RecordKind.ADDRESS_TABLE, 0), b"x")  # kinds count apart
    for again in (5, 4, 0):
        with pytest.raises(ValueError, match="nonce is never used twice"):
            sealer.seal(RecordPosition(RecordKind.FRAME, again, 0), b"y")
    sealer.seal(RecordPosition(RecordKind.FRAME, 6, 0), b"x")
