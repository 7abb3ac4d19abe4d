"""The age v1 file format, written out from its specification (C2SP age.md) for the interop
tests: header with stanzas and HMAC, then the ChaCha20-Poly1305 STREAM payload in 64 KiB chunks.

A test oracle, independent of volpack.crypto except for the X25519 stanza text under test.
"""

from __future__ import annotations

import base64
import hmac
import os
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INTRO = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def build(stanzas: list[str], file_key: bytes, payload: bytes) -> bytes:
    """An age file: the given stanza texts, the header MAC under ``file_key``, the payload."""
    header = INTRO + "".join(stanzas).encode() + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, sha256).digest()
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    pieces = [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
    body = b"".join(
        aead.encrypt(_nonce(n, n == len(pieces) - 1), piece, None) for n, piece in enumerate(pieces)
    )
    return header + b" " + b64(mac).encode() + b"\n" + nonce + body


def parse(data: bytes) -> tuple[list[tuple[list[str], str]], bytes, bytes, bytes]:
    """(stanzas as (arguments, body text), the bytes the MAC covers, the MAC, the payload)."""
    if not data.startswith(INTRO):
        raise ValueError("not an age v1 file")
    pos, stanzas = len(INTRO), []
    while True:
        end = data.index(b"\n", pos)
        line = data[pos:end].decode()
        if line.startswith("--- "):
            return stanzas, data[: pos + 3], unb64(line[4:]), data[end + 1 :]
        if not line.startswith("-> "):
            raise ValueError(f"unexpected header line {line!r}")
        args, body, pos = line[3:].split(" "), "", end + 1
        while True:  # body lines are 64 columns; a shorter one ends the body
            end = data.index(b"\n", pos)
            piece = data[pos:end].decode()
            body, pos = body + piece, end + 1
            if len(piece) < 64:
                break
        stanzas.append((args, body))


def check_mac(file_key: bytes, covered: bytes, mac: bytes) -> bool:
    expected = hmac.new(_hkdf(file_key, b"", b"header"), covered, sha256).digest()
    return hmac.compare_digest(expected, mac)


def decrypt_payload(file_key: bytes, payload: bytes) -> bytes:
    nonce, rest = payload[:16], payload[16:]
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    sealed = [rest[i : i + CHUNK + 16] for i in range(0, len(rest), CHUNK + 16)]
    return b"".join(
        aead.decrypt(_nonce(n, n == len(sealed) - 1), piece, None) for n, piece in enumerate(sealed)
    )
