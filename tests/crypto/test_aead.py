"""The AEAD that seals records through libcrypto gives `cryptography`'s bytes exactly, in place or
not, and refuses what `cryptography` refuses; so do X25519 and HKDF-SHA256 done without it."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from volpack.crypto.aead import TAG_SIZE, Aead, InvalidTag

EVP_MIN = 64 << 10  # a frame's smallest usual size; records of every size go through libcrypto

LABELS = ("aes-256-gcm", "chacha20-poly1305")
REFERENCE = {"aes-256-gcm": AESGCM, "chacha20-poly1305": ChaCha20Poly1305}
SIZES = (0, 1, EVP_MIN - 1, EVP_MIN, EVP_MIN + 5, 1 << 20, (4 << 20) + 3)


def _fast(label: str, key: bytes) -> Aead:
    aead = Aead(label, key)
    if not aead.releases_gil:
        pytest.skip(f"no libcrypto offering {label} on this machine: only cryptography is used")
    return aead


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("size", SIZES)
def test_libcrypto_seals_and_opens_like_cryptography(label: str, size: int) -> None:
    key, nonce, ad = os.urandom(32), os.urandom(12), os.urandom(45)
    data = os.urandom(size)
    aead = _fast(label, key)
    expected = REFERENCE[label](key).encrypt(nonce, data, ad)

    out = bytearray(size + TAG_SIZE)
    assert aead.encrypt_into(nonce, data, ad, memoryview(out)) == size + TAG_SIZE
    assert bytes(out) == expected
    in_place = bytearray(data) + bytearray(TAG_SIZE)
    view = memoryview(in_place)
    aead.encrypt_into(nonce, view[:size], ad, view)
    assert in_place == expected

    opened = bytearray(size)
    assert aead.decrypt_into(nonce, expected, ad, memoryview(opened)) == size
    assert opened == data
    aead.decrypt_into(nonce, view, ad, view[:size])
    assert in_place[:size] == data
    assert aead.decrypt(nonce, expected, ad) == data


@pytest.mark.parametrize("label", LABELS)
def test_libcrypto_refuses_every_tampering(label: str) -> None:
    key, nonce, ad = os.urandom(32), os.urandom(12), b"associated"
    aead = _fast(label, key)
    size = EVP_MIN * 2
    sealed = REFERENCE[label](key).encrypt(nonce, os.urandom(size), ad)
    for where in (0, size // 2, size - 1, size, size + TAG_SIZE - 1):  # data and tag
        bad = bytearray(sealed)
        bad[where] ^= 0x01
        with pytest.raises(InvalidTag):
            aead.decrypt_into(nonce, bytes(bad), ad, memoryview(bytearray(size)))
    for other_nonce, other_ad in ((os.urandom(12), ad), (nonce, ad + b"x"), (nonce, b"")):
        with pytest.raises(InvalidTag):
            aead.decrypt_into(other_nonce, sealed, other_ad, memoryview(bytearray(size)))
    with pytest.raises(InvalidTag):  # a wrong key
        Aead(label, os.urandom(32)).decrypt_into(nonce, sealed, ad, memoryview(bytearray(size)))


@pytest.mark.parametrize("label", LABELS)
def test_buffers_libcrypto_cannot_take_go_to_cryptography(label: str) -> None:
    """A partial overlap or an output of another length is `cryptography`'s to handle (or
    refuse); the result never differs from it."""
    key, nonce = os.urandom(32), os.urandom(12)
    aead, reference = _fast(label, key), REFERENCE[label](key)
    size = EVP_MIN * 2
    data = os.urandom(size)
    buf = bytearray(size + TAG_SIZE + 8)
    view = memoryview(buf)
    view[8 : 8 + size] = data
    aead.encrypt_into(nonce, bytes(view[8 : 8 + size]), b"", view[: size + TAG_SIZE])
    assert bytes(view[: size + TAG_SIZE]) == reference.encrypt(nonce, data, b"")
    with pytest.raises(ValueError):
        aead.encrypt_into(nonce, data, b"", memoryview(bytearray(size + TAG_SIZE + 1)))
    with pytest.raises(ValueError):
        aead.decrypt_into(
            nonce, reference.encrypt(nonce, data, b""), b"", memoryview(bytearray(size - 1))
        )


def test_without_libcrypto_cryptography_does_it_all() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    aead = Aead("aes-256-gcm", key, evp=None)
    assert not aead.releases_gil
    data = os.urandom(EVP_MIN * 2)
    out = bytearray(len(data) + TAG_SIZE)
    aead.encrypt_into(nonce, data, b"ad", memoryview(out))
    assert bytes(out) == AESGCM(key).encrypt(nonce, data, b"ad")


def test_the_fallback_raises_volpacks_invalid_tag_too() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    for label in LABELS:
        sealed = REFERENCE[label](key).encrypt(nonce, b"data", b"ad")
        with pytest.raises(InvalidTag):
            Aead(label, key, evp=None).decrypt(nonce, sealed, b"other")
        with pytest.raises(InvalidTag):
            Aead(label, key).decrypt(nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"ad")
        with pytest.raises(InvalidTag):  # shorter than a tag
            Aead(label, key).decrypt(nonce, sealed[:5], b"ad")
        assert Aead(label, key).decrypt(nonce, sealed, b"ad") == b"data"
        assert Aead(label, key).encrypt(nonce, b"data", None) == REFERENCE[label](key).encrypt(
            nonce, b"data", None
        )


# RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret
_ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
_ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
_BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
_BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


@pytest.mark.parametrize("lib", [True, None], ids=["libcrypto", "cryptography"])
def test_x25519_gives_rfc_7748s_answers(lib) -> None:
    from volpack.crypto import libcrypto, x25519

    if lib is True and libcrypto.load() is None:
        pytest.skip("no libcrypto on this machine: only cryptography is used")
    assert x25519.public_key(_ALICE, lib) == _ALICE_PUB
    assert x25519.public_key(_BOB, lib) == _BOB_PUB
    assert x25519.shared_secret(_ALICE, _BOB_PUB, lib) == _SHARED
    assert x25519.shared_secret(_BOB, _ALICE_PUB, lib) == _SHARED
    # low-order points (RFC 7748 section 7; the all-zero and order-8 points): refused
    for point in (bytes(32), bytes([1]) + bytes(31)):
        with pytest.raises(x25519.LowOrderPoint):
            x25519.shared_secret(_ALICE, point, lib)


def test_x25519_keys_agree_with_cryptography() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from volpack.crypto import x25519

    for _ in range(20):
        secret, public = x25519.generate()
        theirs = X25519PrivateKey.from_private_bytes(secret)
        assert public == theirs.public_key().public_bytes_raw()
        other = X25519PrivateKey.generate()
        peer = other.public_key().public_bytes_raw()
        assert x25519.shared_secret(secret, peer) == other.exchange(theirs.public_key())


def test_hkdf_sha256_gives_rfc_5869s_answers_and_cryptographys() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from volpack.crypto.subkeys import hkdf_sha256

    # RFC 5869 A.1 (basic) and A.3 (no salt, no info)
    ikm = bytes([0x0B]) * 22
    okm = hkdf_sha256(ikm, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert hkdf_sha256(ikm, b"", b"", 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )
    for length in (1, 32, 33, 100):
        key, salt, info = os.urandom(32), os.urandom(16), os.urandom(20)
        reference = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info)
        assert hkdf_sha256(key, salt, info, length) == reference.derive(key)
    with pytest.raises(ValueError):
        hkdf_sha256(b"k", b"", b"", 0)


def test_a_sealed_backup_process_does_not_load_cryptography(tmp_path) -> None:
    """With a system libcrypto, sealing to a recipient and opening with an identity need no
    `cryptography` (its module costs about 7 MiB of memory); keyless reading needs neither."""
    import subprocess
    import sys

    from volpack.crypto import libcrypto

    if libcrypto.load() is None:
        pytest.skip("no libcrypto on this machine: cryptography does the work")
    code = """
import sys
from volpack.crypto import DataKey, DecryptKeys, EncryptKeys, generate_identity, make_slots, open_slots
from volpack.crypto.seal import Cipher
identity = generate_identity()
key = DataKey.generate()
slots = make_slots(key, EncryptKeys(recipients=(identity.recipient,), cipher=Cipher.AES_256_GCM))
assert open_slots(slots, DecryptKeys(identities=(identity,))) == key
print(sorted(m for m in sys.modules if m.startswith("cryptography.hazmat")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
