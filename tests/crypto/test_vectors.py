"""Known answers for the primitives as volpack uses them: bech32 (BIP-173's vectors, through
the library volpack uses), the subkey labels, the nonce and associated-data layouts, one sealed
frame under each cipher, the header MAC and the keyed hash. A change to any of these bytes
would make every sealed archive unreadable, so each is pinned here and, where it can be,
recomputed from the spec (docs/encryption.md) with the standard library."""

from __future__ import annotations

import hashlib
import hmac
import struct

import bech32
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from volpack.crypto import (
    Cipher,
    DataKey,
    Identity,
    Recipient,
    RecordKind,
    RecordOpener,
    RecordPosition,
    Sealer,
    Subkeys,
    associated_data,
    header_mac,
    keyed_hash,
    nonce,
)
from volpack.errors import UsageError

DATA_KEY = DataKey(bytes(range(16)))
UUID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
FRAME5 = RecordPosition(RecordKind.FRAME, 5, 5 * 4194304, False)
PUBLIC = b"\x01\x02"
PLAIN = b"volpack frame 5\n"

SUBKEYS = {
    b"volpack/v1/frames": "4b36d8731640d3d85c05c19b0cedd7a06a53640f2b2b3f196c9c114e5c833e46",
    b"volpack/v1/tables": "307b09c3e1bafc0a4cc2b2ab46ed6dc9397f4417a9bc5a66d158d8cb90be8a85",
    b"volpack/v1/header-mac": "d613ea234ec85971346701b3e11ecfdfbcc3c5de14984b173e30fbd1f1ea7b55",
    b"volpack/v1/hash-table": "359bb01483ca85bf145d2d3260368a2992982a6eaa3a15c571e0d9060ab6dbd8",
}
AD_FRAME5 = (
    "56504b5345414c31"  # "VPKSEAL1"
    "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # archive UUID
    "01"  # kind: frame
    "00"  # final: no
    "0100"  # cipher: AES-256-GCM
    "0500000000000000"  # sequence 5
    "0000400100000000"  # dense offset 5 × 4 MiB
    "02000000"  # 2 bytes of public fields follow
    "0102"
)
SEALED_FRAME5 = {
    Cipher.AES_256_GCM: "29c97b26056bfdbd4c5afcfd9083ec489b2743929a55e610468a57dceb816663",
    Cipher.CHACHA20_POLY1305: "44d0e90b6ee38371a4f5a518acaf02d1ade3f51a9888b9b55b4b7912dec0ee91",
}


def _hkdf_rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


# BIP-173: valid strings, and invalid ones with the reason
BIP173_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BIP173_INVALID = [
    "\x201nwldj5",  # HRP character out of range
    "\x7f1axkwrx",
    "pzry9x0s0muk",  # no separator
    "1pzry9x0s0muk",  # empty HRP
    "x1b4n0q5v",  # invalid data character
    "li1dgmt3",  # too short checksum
    "de1lg7wt\xff",  # invalid character in checksum
    "A1G7SGD8",  # checksum calculated with uppercase form of HRP
    "10a06t8",  # empty HRP
    "1qzzfhee",  # empty HRP
    "A12UEL5l",  # mixed case
]


@pytest.mark.parametrize("text", BIP173_VALID)
def test_bech32_accepts_every_valid_bip173_vector(text):
    hrp, data = bech32.bech32_decode(text)
    assert hrp is not None and data is not None
    assert bech32.bech32_encode(hrp, data) == text.lower()


@pytest.mark.parametrize("text", BIP173_INVALID)
def test_bech32_rejects_every_invalid_bip173_vector(text):
    assert bech32.bech32_decode(text) == (None, None)


def test_age_identity_and_recipient_encodings_match_the_age_spec_example():
    # The X25519 identity of the age spec's test vector, and the recipient age-keygen -y gives
    identity = Identity.parse(
        "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
    )
    assert identity.secret == b"\x42" * 32
    assert str(identity.recipient) == (
        "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
    )
    assert Recipient.parse(str(identity.recipient)) == identity.recipient


def test_a_one_character_change_in_an_identity_or_recipient_is_refused():
    good = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
    with pytest.raises(UsageError, match="bech32"):
        Recipient.parse(good[:-1] + "q")
    with pytest.raises(UsageError, match="lower case"):
        Recipient.parse(good[:10] + good[10:].upper())
    with pytest.raises(UsageError, match="bech32"):
        Identity.parse("AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEQ")


def test_subkeys_are_hkdf_sha256_of_the_data_key_salted_with_the_uuid_under_fixed_labels():
    keys = Subkeys.derive(DATA_KEY, UUID)
    got = {
        b"volpack/v1/frames": keys.frames,
        b"volpack/v1/tables": keys.tables,
        b"volpack/v1/header-mac": keys.header_mac,
        b"volpack/v1/hash-table": keys.hash_table,
    }
    for label, expected in SUBKEYS.items():
        assert got[label].hex() == expected, label
        assert _hkdf_rfc5869(DATA_KEY.secret, UUID, label).hex() == expected, label
    assert len(set(got.values())) == 4


def test_nonce_is_kind_three_zero_bytes_and_a_little_endian_64_bit_counter():
    assert nonce(FRAME5).hex() == "010000000500000000000000"
    last = RecordPosition(RecordKind.TRAILER, 0x0102030405060708, 0, True)
    assert nonce(last).hex() == "070000000807060504030201"
    assert len(nonce(FRAME5)) == 12


def test_associated_data_layout_binds_uuid_kind_final_cipher_sequence_offset_and_public_fields():
    ad = associated_data(UUID, Cipher.AES_256_GCM, FRAME5, PUBLIC)
    assert ad.hex() == AD_FRAME5
    assert struct.calcsize("<8s16sBBHQQI") == 48 == len(ad) - len(PUBLIC)


@pytest.mark.parametrize("cipher", list(Cipher))
def test_one_sealed_frame_is_byte_for_byte_the_known_answer(cipher):
    keys = Subkeys.derive(DATA_KEY, UUID)
    sealed = Sealer(keys, cipher).seal(FRAME5, PLAIN, PUBLIC)
    assert sealed.hex() == SEALED_FRAME5[cipher]
    # the same bytes from the primitive directly, with key, nonce and AD built from the spec
    aead = (AESGCM if cipher is Cipher.AES_256_GCM else ChaCha20Poly1305)(
        _hkdf_rfc5869(DATA_KEY.secret, UUID, b"volpack/v1/frames")
    )
    spec_ad = bytes.fromhex(AD_FRAME5) if cipher is Cipher.AES_256_GCM else None
    if spec_ad is not None:
        assert aead.encrypt(bytes.fromhex("010000000500000000000000"), PLAIN, spec_ad) == sealed
    assert RecordOpener(keys, cipher).open(FRAME5, sealed, PUBLIC) == PLAIN


@pytest.mark.parametrize("cipher", list(Cipher))
def test_a_frame_sealed_and_opened_into_reused_buffers_is_the_same_known_answer(cipher):
    keys = Subkeys.derive(DATA_KEY, UUID)
    out = bytearray(len(PLAIN) + 16 + 7)  # larger than needed: only the head is written
    n = Sealer(keys, cipher, frames=6).seal_into(FRAME5, PLAIN, memoryview(out), PUBLIC)
    assert n == len(PLAIN) + 16
    assert out[:n].hex() == SEALED_FRAME5[cipher]
    opened = bytearray(len(PLAIN))
    assert RecordOpener(keys, cipher).open_into(FRAME5, out[:n], memoryview(opened), PUBLIC) == (
        len(PLAIN)
    )
    assert bytes(opened) == PLAIN


def test_tables_are_sealed_with_the_tables_subkey_not_the_frames_subkey():
    keys = Subkeys.derive(DATA_KEY, UUID)
    table = RecordPosition(RecordKind.ADDRESS_TABLE, 0)
    sealed = Sealer(keys).seal(table, b"table")
    expected = AESGCM(keys.tables).encrypt(
        nonce(table), b"table", associated_data(UUID, Cipher.AES_256_GCM, table)
    )
    assert sealed == expected


def test_header_mac_is_hmac_sha256_under_the_header_mac_subkey():
    keys = Subkeys.derive(DATA_KEY, UUID)
    mac = header_mac(keys, b"header bytes")
    assert mac.hex() == "a05d49aedfce852824eb0f1302b29cfa63f3c3462c1eb645566e9ed6a497af65"
    mac_key = bytes.fromhex(SUBKEYS[b"volpack/v1/header-mac"])
    assert mac == hmac.new(mac_key, b"header bytes", hashlib.sha256).digest()


def test_keyed_hash_is_blake3_keyed_with_the_hash_table_subkey():
    import blake3

    h = keyed_hash(Subkeys.derive(DATA_KEY, UUID))
    h.update(b"block")
    assert h.hexdigest() == "83c9bb389db93cf19877fc306e31f15f116c013d5e07091ade67978ac0d8f3e2"
    assert h.hexdigest() != blake3.blake3(b"block").hexdigest()
