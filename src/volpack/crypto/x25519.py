"""X25519 (RFC 7748) as age's recipients use it: a fresh key pair, the public key of a secret
key, the shared secret. The system libcrypto does it (``libcrypto``); `cryptography`, imported
only then, where there is none. Both give the same bytes (checked in the tests)."""

from __future__ import annotations

import secrets

from volpack.crypto import libcrypto

SIZE = 32


class LowOrderPoint(ValueError):
    """The peer's public key is a low-order point: the shared secret would be all zeros."""


def public_key(secret: bytes, lib: libcrypto.Lib | None | bool = True) -> bytes:
    """The public key of the 32-byte ``secret``."""
    found = _lib(lib)
    public = found.x25519_public(secret) if found is not None else None
    if public is not None:
        return public
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def generate() -> tuple[bytes, bytes]:
    """A fresh (secret, public) pair from the operating system's random source (X25519 clamps
    any 32 bytes into a valid secret key)."""
    secret = secrets.token_bytes(SIZE)
    return secret, public_key(secret)


def shared_secret(secret: bytes, peer: bytes, lib: libcrypto.Lib | None | bool = True) -> bytes:
    """X25519(secret, peer); LowOrderPoint when the result would be all zeros."""
    if len(secret) != SIZE or len(peer) != SIZE:
        raise ValueError(f"X25519 keys are {SIZE} bytes")
    found = _lib(lib)
    if found is not None:
        shared = found.x25519(secret, peer)
    else:
        from cryptography.hazmat.primitives.asymmetric.x25519 import (
            X25519PrivateKey,
            X25519PublicKey,
        )

        try:
            shared = X25519PrivateKey.from_private_bytes(secret).exchange(
                X25519PublicKey.from_public_bytes(peer)
            )
        except ValueError:
            shared = None
    if shared is None or shared == bytes(SIZE):
        raise LowOrderPoint("X25519 with a low-order point")
    return shared


def _lib(lib: libcrypto.Lib | None | bool) -> libcrypto.Lib | None:
    return libcrypto.load() if lib is True else (lib or None)
