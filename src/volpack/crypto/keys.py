"""Typed key material: the per-archive data key, age X25519 identities and recipients,
passphrases and 32-byte key files.

Parses and formats text (age's bech32 encodings, age-keygen files) but reads no files (see
``files``). Secrets never show in ``repr``, so a key object in a log line or traceback leaks
nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

import bech32

from volpack.crypto import x25519
from volpack.errors import UsageError

DATA_KEY_SIZE = 16  # age's file key size: a slot age can unwrap must wrap exactly 16 bytes
X25519_SIZE = 32
KEY_FILE_SIZE = 32
IDENTITY_HRP = "age-secret-key-"
RECIPIENT_HRP = "age"


def _bech32_encode(hrp: str, payload: bytes) -> str:
    words = bech32.convertbits(list(payload), 8, 5, True)
    if words is None:  # only for values outside 0..255, which bytes cannot hold
        raise ValueError("bech32: cannot convert payload")
    return bech32.bech32_encode(hrp, words)


def _bech32_decode(text: str, hrp: str, what: str) -> bytes:
    """The 32-byte payload of ``text``; UsageError naming ``what`` when it is not valid bech32
    with human-readable part ``hrp`` and a 32-byte payload."""
    got_hrp, words = bech32.bech32_decode(text)
    if got_hrp is None or words is None:
        raise UsageError(
            f"{what}: not valid bech32 (bad character, mixed case or checksum); "
            "copy it again from age-keygen's output"
        )
    if got_hrp != hrp:
        raise UsageError(
            f"{what}: starts with {got_hrp.upper() if hrp.startswith('age-') else got_hrp}1…, "
            f"expected {hrp.upper() if hrp.startswith('age-') else hrp}1…"
        )
    data = bech32.convertbits(words, 5, 8, False)
    if data is None or len(data) != X25519_SIZE:
        n = "an invalid bit count" if data is None else f"{len(data)} bytes"
        raise UsageError(f"{what}: holds {n}, an X25519 key is {X25519_SIZE} bytes")
    return bytes(data)


@dataclass(frozen=True, slots=True)
class DataKey:
    """The random per-archive key every key slot wraps; subkeys come from it (``Subkeys``)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes, not {len(self.secret)}")

    @classmethod
    def generate(cls) -> DataKey:
        return cls(secrets.token_bytes(DATA_KEY_SIZE))


@dataclass(frozen=True, slots=True)
class Recipient:
    """An age X25519 public key (``age1…``): a backup host holding only this can seal archives
    it cannot open."""

    public: bytes

    def __post_init__(self) -> None:
        if len(self.public) != X25519_SIZE:
            raise ValueError(f"an X25519 public key is {X25519_SIZE} bytes")

    @classmethod
    def parse(cls, text: str) -> Recipient:
        text = text.strip()
        shown = text if len(text) <= 24 else text[:20] + "…"
        if not text.startswith("age1"):
            raise UsageError(
                f"recipient {shown!r}: not an age X25519 recipient (age1…); "
                "make one with 'volpack key generate' or age-keygen"
            )
        if text != text.lower():
            raise UsageError(f"recipient {shown!r}: must be lower case, as age-keygen prints it")
        return cls(_bech32_decode(text, RECIPIENT_HRP, f"recipient {shown!r}"))

    def __str__(self) -> str:
        return _bech32_encode(RECIPIENT_HRP, self.public)


@dataclass(frozen=True, slots=True)
class Identity:
    """An age X25519 secret key (``AGE-SECRET-KEY-1…``), as age-keygen writes it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != X25519_SIZE:
            raise ValueError(f"an X25519 secret key is {X25519_SIZE} bytes")

    @classmethod
    def parse(cls, text: str, where: str = "identity") -> Identity:
        text = text.strip()
        if not text.upper().startswith("AGE-SECRET-KEY-1"):
            raise UsageError(
                f"{where}: not an age X25519 identity (AGE-SECRET-KEY-1…); "
                "give a file made by 'volpack key generate' or age-keygen"
            )
        if text != text.upper():
            raise UsageError(f"{where}: must be upper case, as age-keygen writes it")
        return cls(_bech32_decode(text, IDENTITY_HRP, where))

    @property
    def recipient(self) -> Recipient:
        return Recipient(x25519.public_key(self.secret))

    def encoded(self) -> str:
        """``AGE-SECRET-KEY-1…``: the secret itself; for the identity file only."""
        return _bech32_encode(IDENTITY_HRP, self.secret).upper()

    def file_text(self, created: datetime | None = None) -> str:
        """The identity as age-keygen writes it: two comment lines, then the key."""
        when = (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"# created: {when}\n# public key: {self.recipient}\n{self.encoded()}\n"


def generate_identity() -> Identity:
    """A fresh X25519 identity from the operating system's random source."""
    return Identity(x25519.generate()[0])


def parse_identities(text: str, name: str) -> tuple[Identity, ...]:
    """Every identity in an age identity file's ``text``: one per line; empty lines and lines
    starting with ``#`` are skipped. ``name`` (the file) goes into messages."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found.append(Identity.parse(line, f"{name} line {number}"))
    if not found:
        raise UsageError(
            f"{name}: holds no identity (no AGE-SECRET-KEY-1… line); "
            "make one with 'volpack key generate -o FILE'"
        )
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Passphrase:
    """A passphrase as bytes (UTF-8 of what was typed or read; not normalised)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.secret:
            raise UsageError("the passphrase is empty; give a non-empty passphrase")


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A symmetric key: exactly 32 bytes, used as they are (never hashed or trimmed)."""

    secret: bytes = field(repr=False)
    name: str = "key file"

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_FILE_SIZE:
            raise UsageError(
                f"{self.name}: holds {len(self.secret)} bytes, a key file must hold exactly "
                f"{KEY_FILE_SIZE} (make one with: head -c {KEY_FILE_SIZE} /dev/urandom > FILE)"
            )
