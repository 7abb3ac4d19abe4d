"""Key slots: each wraps an archive's data key for one X25519 recipient (exactly age's X25519
stanza), one passphrase (Argon2id) or one key file; and the slot list's byte layout.

Works on bytes in memory only. Argon2 parameters read from an archive are bounded before any
memory is spent on them. docs/encryption.md, "Key slots", is the spec of every byte here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from volpack.crypto import x25519
from volpack.crypto.aead import Aead, InvalidTag
from volpack.crypto.keys import (
    DATA_KEY_SIZE,
    DataKey,
    Identity,
    KeyFile,
    Passphrase,
    Recipient,
)
from volpack.crypto.seal import Cipher
from volpack.crypto.subkeys import hkdf_sha256
from volpack.errors import CorruptArchive, UsageError, WeakKeySlot, WrongKey

X25519_INFO = b"age-encryption.org/v1/X25519"
KEY_FILE_INFO = b"volpack/v1/slot/key-file"
ARGON2_AD = b"volpack/v1/slot/argon2id"
KEY_FILE_AD = b"volpack/v1/slot/key-file"
FINGERPRINT_LABEL = b"volpack/v1/slot-fingerprint"
ZERO_NONCE = bytes(12)  # each wrapping key is used once: fresh ephemeral share or fresh salt
WRAPPED_SIZE = DATA_KEY_SIZE + 16
SALT_SIZE = 16

KIND_X25519 = 1
KIND_ARGON2ID = 2
KIND_KEY_FILE = 3
LIST_HEAD = struct.Struct("<HH")  # slot count, reserved (0)
SLOT_HEAD = struct.Struct("<BBH")  # kind, reserved (0), body length
X25519_BODY = struct.Struct(f"<32s{WRAPPED_SIZE}s")  # ephemeral share, wrapped data key
ARGON2_BODY = struct.Struct(f"<{SALT_SIZE}sIII{WRAPPED_SIZE}s")  # salt, m KiB, t, p, wrapped
KEY_FILE_BODY = struct.Struct(f"<{SALT_SIZE}s{WRAPPED_SIZE}s")  # salt, wrapped
MAX_SLOTS = 64
MAX_SLOT_BODY = 4096  # room for future kinds (a post-quantum share is about 1.1 KiB)

# Argon2id bounds (docs/encryption.md): below MIN it is weak (RFC 9106's second recommended
# setting is t=3, m=64 MiB); beyond MAX no volpack writes it and reading it would let an archive
# make a restore host spend gigabytes or minutes before anything is checked.
MIN_MEMORY_KIB = 64 * 1024
MIN_WORK_KIB = 3 * 64 * 1024  # iterations × memory
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_ITERATIONS = 32
MAX_LANES = 64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    # age's base64: standard alphabet, no padding; re-encoding must give the same text back
    data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    if _b64(data) != text:
        raise ValueError("non-canonical base64")
    return data


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost: memory in KiB, iterations (passes), lanes. Default t=3, m=256 MiB, p=4."""

    memory_kib: int = 256 * 1024
    iterations: int = 3
    lanes: int = 4

    def __str__(self) -> str:
        return f"t={self.iterations}, m={self.memory_kib // 1024} MiB, p={self.lanes}"

    def beyond_bounds(self) -> str | None:
        """Why no volpack would write these parameters, or None."""
        if not 1 <= self.lanes <= MAX_LANES:
            return f"{self.lanes} lanes is outside 1..{MAX_LANES}"
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            return f"{self.iterations} iterations is outside 1..{MAX_ITERATIONS}"
        if self.memory_kib > MAX_MEMORY_KIB:
            return f"memory {self.memory_kib} KiB is beyond the {MAX_MEMORY_KIB} KiB (4 GiB) bound"
        if self.memory_kib < 8 * self.lanes:
            return f"memory {self.memory_kib} KiB is below Argon2's 8 KiB per lane"
        return None

    def weakness(self) -> str | None:
        """Why these parameters are too weak, or None."""
        if self.memory_kib < MIN_MEMORY_KIB:
            return (
                f"memory {self.memory_kib} KiB is below the minimum {MIN_MEMORY_KIB} KiB (64 MiB)"
            )
        if self.iterations * self.memory_kib < MIN_WORK_KIB:
            return (
                f"iterations × memory = {self.iterations} × {self.memory_kib} KiB is below the "
                f"minimum 3 × {MIN_MEMORY_KIB} KiB"
            )
        return None

    def kek(self, passphrase: Passphrase, salt: bytes) -> bytes:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # only for passphrases

        kdf = Argon2id(
            salt=salt,
            length=32,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(passphrase.secret)


@dataclass(frozen=True, slots=True)
class X25519Slot:
    """age's X25519 stanza: an ephemeral share and the data key wrapped to one recipient."""

    share: bytes
    wrapped: bytes

    kind = KIND_X25519
    label = "x25519"

    def body(self) -> bytes:
        return X25519_BODY.pack(self.share, self.wrapped)

    def age_stanza(self) -> str:
        """The slot as an age v1 header stanza (``-> X25519 …`` and its body line)."""
        return f"-> X25519 {_b64(self.share)}\n{_b64(self.wrapped)}\n"

    @classmethod
    def from_age_stanza(cls, args: Sequence[str], body: str) -> X25519Slot:
        """A slot from an age file's X25519 stanza (its arguments after ``X25519``, its body)."""
        if len(args) != 1:
            raise ValueError(f"an X25519 stanza has one argument, not {len(args)}")
        share, wrapped = _unb64(args[0]), _unb64(body)
        if len(share) != 32 or len(wrapped) != WRAPPED_SIZE:
            raise ValueError("an X25519 stanza holds a 32-byte share and a 32-byte body")
        return cls(share, wrapped)

    @classmethod
    def wrap(cls, data_key: DataKey, recipient: Recipient) -> X25519Slot:
        ephemeral, share = x25519.generate()
        try:
            shared = x25519.shared_secret(ephemeral, recipient.public)
        except x25519.LowOrderPoint:
            raise UsageError(
                f"recipient {recipient}: not a usable X25519 public key (low order); "
                "use a recipient printed by age-keygen or 'volpack key recipient'"
            ) from None
        wrapped = _wrap(_x25519_key(shared, share, recipient.public), data_key, None)
        return cls(share, wrapped)

    def unwrap(self, identity: Identity) -> DataKey | None:
        try:
            shared = x25519.shared_secret(identity.secret, self.share)
        except x25519.LowOrderPoint:
            return None
        key = _x25519_key(shared, self.share, identity.recipient.public)
        return _open_wrapped(key, self.wrapped, None)


def _x25519_key(shared: bytes, share: bytes, recipient: bytes) -> bytes:
    return hkdf_sha256(shared, share + recipient, X25519_INFO)


def _wrap(key: bytes, data_key: DataKey, ad: bytes | None) -> bytes:
    return Aead("chacha20-poly1305", key).encrypt(ZERO_NONCE, data_key.secret, ad)


def _open_wrapped(key: bytes, wrapped: bytes, ad: bytes | None) -> DataKey | None:
    try:
        return DataKey(Aead("chacha20-poly1305", key).decrypt(ZERO_NONCE, wrapped, ad))
    except (InvalidTag, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class PassphraseSlot:
    """The data key wrapped under an Argon2id key from a passphrase; the parameters recorded."""

    salt: bytes
    params: Argon2Params
    wrapped: bytes

    kind = KIND_ARGON2ID
    label = "argon2id"

    def body(self) -> bytes:
        p = self.params
        return ARGON2_BODY.pack(self.salt, p.memory_kib, p.iterations, p.lanes, self.wrapped)

    @classmethod
    def wrap(
        cls, data_key: DataKey, passphrase: Passphrase, params: Argon2Params
    ) -> PassphraseSlot:
        problem = params.beyond_bounds() or params.weakness()
        if problem:
            raise UsageError(
                f"Argon2id parameters {params}: {problem}; use the defaults (t=3, m=256 MiB, p=4)"
            )
        salt = secrets.token_bytes(SALT_SIZE)
        kek = params.kek(passphrase, salt)
        wrapped = _wrap(kek, data_key, ARGON2_AD)
        return cls(salt, params, wrapped)

    def unwrap(self, passphrase: Passphrase) -> DataKey | None:
        return _open_wrapped(self.params.kek(passphrase, self.salt), self.wrapped, ARGON2_AD)


@dataclass(frozen=True, slots=True)
class KeyFileSlot:
    """The data key wrapped under HKDF-SHA256 of a 32-byte key file and a fresh salt."""

    salt: bytes
    wrapped: bytes

    kind = KIND_KEY_FILE
    label = "key-file"

    def body(self) -> bytes:
        return KEY_FILE_BODY.pack(self.salt, self.wrapped)

    @classmethod
    def wrap(cls, data_key: DataKey, key_file: KeyFile) -> KeyFileSlot:
        salt = secrets.token_bytes(SALT_SIZE)
        wrapped = _wrap(_key_file_kek(key_file, salt), data_key, KEY_FILE_AD)
        return cls(salt, wrapped)

    def unwrap(self, key_file: KeyFile) -> DataKey | None:
        return _open_wrapped(_key_file_kek(key_file, self.salt), self.wrapped, KEY_FILE_AD)


def _key_file_kek(key_file: KeyFile, salt: bytes) -> bytes:
    return hkdf_sha256(key_file.secret, salt, KEY_FILE_INFO)


@dataclass(frozen=True, slots=True)
class UnknownSlot:
    """A slot of a kind this volpack does not know (made by a newer one): kept as it is, so a
    rewrap carries it over, and never opened."""

    kind: int
    raw: bytes

    @property
    def label(self) -> str:
        return f"kind-{self.kind}"

    def body(self) -> bytes:
        return self.raw


KeySlot = X25519Slot | PassphraseSlot | KeyFileSlot | UnknownSlot


def encode_slot(slot: KeySlot) -> bytes:
    body = slot.body()
    return SLOT_HEAD.pack(slot.kind, 0, len(body)) + body


def fingerprint(slot: KeySlot) -> str:
    """``LABEL:32 hex digits``: names one slot (for the catalog) and says nothing about the key
    behind it; it is a hash of the slot's public bytes, which differ in every archive."""
    digest = hashlib.sha256(FINGERPRINT_LABEL + encode_slot(slot)).hexdigest()[:32]
    return f"{slot.label}:{digest}"


def encode_slots(slots: Sequence[KeySlot]) -> bytes:
    """The slot list's bytes: a count, then each slot as kind, length and body."""
    if not 1 <= len(slots) <= MAX_SLOTS:
        raise ValueError(f"an archive has 1..{MAX_SLOTS} key slots, not {len(slots)}")
    return LIST_HEAD.pack(len(slots), 0) + b"".join(encode_slot(s) for s in slots)


def decode_slots(data: bytes, subject: str = "archive") -> tuple[KeySlot, ...]:
    """The slots in ``data``, which must be exactly one slot list; CorruptArchive naming the
    offset for anything that does not fit the layout or its bounds."""

    def bad(offset: int, problem: str) -> CorruptArchive:
        return CorruptArchive(
            f"{subject}: key slot list, byte {offset}: {problem}; "
            "the header is damaged or was not written by volpack"
        )

    if len(data) < LIST_HEAD.size:
        raise bad(0, f"{len(data)} bytes, shorter than the {LIST_HEAD.size}-byte list head")
    count, reserved = LIST_HEAD.unpack_from(data)
    if reserved:
        raise bad(2, f"reserved field is {reserved}, expected 0")
    if not 1 <= count <= MAX_SLOTS:
        raise bad(0, f"slot count {count} outside 1..{MAX_SLOTS}")
    slots: list[KeySlot] = []
    pos = LIST_HEAD.size
    for number in range(1, count + 1):
        if len(data) - pos < SLOT_HEAD.size:
            raise bad(pos, f"slot {number} of {count} starts past the end ({len(data)} bytes)")
        kind, reserved, length = SLOT_HEAD.unpack_from(data, pos)
        if reserved:
            raise bad(pos + 1, f"slot {number}: reserved field is {reserved}, expected 0")
        if length > MAX_SLOT_BODY or length > len(data) - pos - SLOT_HEAD.size:
            raise bad(
                pos + 2,
                f"slot {number} claims {length} bytes, "
                f"{len(data) - pos - SLOT_HEAD.size} remain (at most {MAX_SLOT_BODY})",
            )
        body = data[pos + SLOT_HEAD.size : pos + SLOT_HEAD.size + length]
        try:
            slots.append(_decode_body(kind, body))
        except ValueError as exc:
            raise bad(pos, f"slot {number}: {exc}") from None
        pos += SLOT_HEAD.size + length
    if pos != len(data):
        raise bad(pos, f"{len(data) - pos} bytes after the last of {count} slots")
    return tuple(slots)


def _decode_body(kind: int, body: bytes) -> KeySlot:
    """One slot from its kind and body; ValueError saying what does not fit."""
    sizes = {KIND_X25519: X25519_BODY, KIND_ARGON2ID: ARGON2_BODY, KIND_KEY_FILE: KEY_FILE_BODY}
    layout = sizes.get(kind)
    if kind == 0:
        raise ValueError("kind 0 is reserved")
    if layout is None:
        return UnknownSlot(kind, body)
    if len(body) != layout.size:
        raise ValueError(f"kind {kind} body is {len(body)} bytes, expected {layout.size}")
    if kind == KIND_X25519:
        return X25519Slot(*X25519_BODY.unpack(body))
    if kind == KIND_KEY_FILE:
        return KeyFileSlot(*KEY_FILE_BODY.unpack(body))
    salt, memory, iterations, lanes, wrapped = ARGON2_BODY.unpack(body)
    params = Argon2Params(memory_kib=memory, iterations=iterations, lanes=lanes)
    problem = params.beyond_bounds()
    if problem:
        raise ValueError(f"Argon2id {problem}")
    return PassphraseSlot(salt, params, wrapped)


@dataclass(frozen=True, slots=True)
class EncryptKeys:
    """Whom a new archive is sealed to (one slot per recipient, passphrase and key file), and
    the AEAD its records are sealed with."""

    recipients: tuple[Recipient, ...] = ()
    passphrases: tuple[Passphrase, ...] = field(default=(), repr=False)
    key_files: tuple[KeyFile, ...] = field(default=(), repr=False)
    argon2: Argon2Params = Argon2Params()
    cipher: Cipher = Cipher.AES_256_GCM

    @property
    def count(self) -> int:
        return len(self.recipients) + len(self.passphrases) + len(self.key_files)


@dataclass(frozen=True, slots=True)
class DecryptKeys:
    """What may open an archive: any one slot that opens is enough."""

    identities: tuple[Identity, ...] = ()
    passphrases: tuple[Passphrase, ...] = field(default=(), repr=False)
    key_files: tuple[KeyFile, ...] = field(default=(), repr=False)

    @property
    def count(self) -> int:
        return len(self.identities) + len(self.passphrases) + len(self.key_files)


def make_slots(data_key: DataKey, keys: EncryptKeys) -> tuple[KeySlot, ...]:
    """One slot per key in ``keys``, recipients first."""
    if not 1 <= keys.count <= MAX_SLOTS:
        raise UsageError(
            f"{keys.count} keys given to seal to; give 1..{MAX_SLOTS} recipients, "
            "passphrases and key files"
        )
    slots: list[KeySlot] = [X25519Slot.wrap(data_key, r) for r in keys.recipients]
    slots += [PassphraseSlot.wrap(data_key, p, keys.argon2) for p in keys.passphrases]
    slots += [KeyFileSlot.wrap(data_key, k) for k in keys.key_files]
    return tuple(slots)


def open_slots(slots: Sequence[KeySlot], keys: DecryptKeys, subject: str = "archive") -> DataKey:
    """The data key from the first slot that one of ``keys`` opens. Cheap kinds are tried first;
    a passphrase slot with weak parameters is never tried. WrongKey when nothing opens."""
    if keys.count == 0:
        raise UsageError(
            f"{subject}: is encrypted; give an identity, a passphrase or a key file to open it"
        )
    for slot in slots:
        if isinstance(slot, X25519Slot):
            for identity in keys.identities:
                if (found := slot.unwrap(identity)) is not None:
                    return found
        elif isinstance(slot, KeyFileSlot):
            for key_file in keys.key_files:
                if (found := slot.unwrap(key_file)) is not None:
                    return found
    weak = []
    for number, slot in enumerate(slots, 1):
        if isinstance(slot, PassphraseSlot) and keys.passphrases:
            problem = slot.params.weakness()
            if problem:
                weak.append((number, problem))
                continue
            for passphrase in keys.passphrases:
                if (found := slot.unwrap(passphrase)) is not None:
                    return found
    if weak:
        number, problem = weak[0]
        raise WeakKeySlot(
            f"{subject}: key slot {number} (argon2id) {problem}; it was not made by volpack "
            "or was altered, so it is not used; open the archive with another key"
        )
    kinds = Counter(s.label for s in slots)
    have = ", ".join(f"{n} {label}" for label, n in sorted(kinds.items()))
    given = []
    if keys.identities:
        shown = ", ".join(str(i.recipient)[:12] + "…" for i in keys.identities[:3])
        given.append(f"{len(keys.identities)} identity(ies) ({shown})")
    if keys.passphrases:
        given.append("the passphrase")
    if keys.key_files:
        given.append(f"{len(keys.key_files)} key file(s)")
    raise WrongKey(
        f"{subject}: none of its {len(slots)} key slots ({have}) opens with "
        f"{' and '.join(given)}; give a key the archive was sealed to"
    )
