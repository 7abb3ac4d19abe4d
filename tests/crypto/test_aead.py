"""The AEAD that seals large records through libcrypto gives `cryptography`'s bytes exactly, in
place or not, and refuses what `cryptography` refuses."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from volpack.crypto.aead import EVP_MIN, TAG_SIZE, Aead

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
