"""Sealing records with an AEAD: the nonce layout, the associated data, the write-side sealer
that can never use a nonce twice, the read-side opener, the header MAC and the keyed hash.

One call per record (a frame, a table): no per-block work here. It never decides what a record
is or where it goes; the format passes each record's position in.
"""

from __future__ import annotations

import enum
import hmac
import struct
import threading
from dataclasses import dataclass
from hashlib import sha256

import blake3

from volpack.crypto.aead import Aead, InvalidTag
from volpack.crypto.subkeys import UUID_SIZE, Subkeys
from volpack.errors import TamperedArchive, UsageError

TAG_SIZE = 16
NONCE_SIZE = 12
MAC_SIZE = 32
MAX_COUNTER = (1 << 64) - 1
MAX_DENSE_OFFSET = (1 << 63) - 1
MAX_PUBLIC = (1 << 32) - 1
AD_MAGIC = b"VPKSEAL1"
# nonce: record kind, three zero bytes, 64-bit counter (docs/encryption.md, "Nonces")
NONCE = struct.Struct("<B3xQ")
# associated data: magic, archive UUID, kind, final flag, cipher, sequence, dense offset,
# length of the record's public fields (which follow)
AD = struct.Struct("<8s16sBBHQQI")
Buffer = bytes | bytearray | memoryview


class Cipher(enum.IntEnum):
    """The AEAD of an archive's records; the number is what the archive records."""

    AES_256_GCM = 1
    CHACHA20_POLY1305 = 2

    @property
    def label(self) -> str:
        return {1: "aes-256-gcm", 2: "chacha20-poly1305"}[self.value]

    @classmethod
    def parse(cls, text: str) -> Cipher:
        for c in cls:
            if c.label == text.strip().lower():
                return c
        names = ", ".join(c.label for c in cls)
        raise UsageError(f"cipher {text!r}: unknown; choose one of {names}")


class RecordKind(enum.IntEnum):
    """What a sealed record is; part of its nonce and its associated data. Frames are sealed
    with the frames subkey, every other kind with the tables subkey."""

    FRAME = 1
    ADDRESS_TABLE = 2
    PHYSICAL_MAP = 3
    DESCRIPTION = 4
    HASH_TABLE = 5
    FRAME_INDEX = 6  # reserved: the frame index stays public (docs/format.md section 10.5)
    TRAILER = 7  # reserved: the trailer stays public
    CHAIN_KEY = 8  # the chain hash key in the KEYS record
    ZERO_TABLE = 9


@dataclass(frozen=True, slots=True)
class RecordPosition:
    """Where a record sits in its archive: its kind, its sequence number among records of that
    kind (the nonce counter), its dense offset (0 where none applies) and whether it is the
    archive's last sealed record (``final``, which makes truncation detectable)."""

    kind: RecordKind
    sequence: int
    dense_offset: int = 0
    final: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.sequence <= MAX_COUNTER:
            raise ValueError(f"sequence {self.sequence} outside 0..2^64-1")
        if not 0 <= self.dense_offset <= MAX_DENSE_OFFSET:
            raise ValueError(f"dense offset {self.dense_offset} outside 0..2^63-1")


def nonce(position: RecordPosition) -> bytes:
    """The 96-bit nonce of a record: unique per (kind, sequence) under one data key."""
    return NONCE.pack(position.kind, position.sequence)


def associated_data(
    archive_uuid: bytes, cipher: Cipher, position: RecordPosition, public: bytes = b""
) -> bytes:
    """What the AEAD binds besides the ciphertext: the archive, the record's kind, position,
    final flag and cipher, and ``public``, the record's own clear fields (codec, lengths)."""
    if len(archive_uuid) != UUID_SIZE:
        raise ValueError(f"an archive UUID is {UUID_SIZE} bytes")
    if len(public) > MAX_PUBLIC:
        raise ValueError("public fields longer than 2^32-1 bytes")
    head = AD.pack(
        AD_MAGIC,
        archive_uuid,
        position.kind,
        1 if position.final else 0,
        cipher,
        position.sequence,
        position.dense_offset,
        len(public),
    )
    return head + public


def _aeads(keys: Subkeys, cipher: Cipher) -> tuple[Aead, Aead]:
    return Aead(cipher.label, keys.frames), Aead(cipher.label, keys.tables)


class Sealer:
    """Seals the records of one archive being written, never one position twice (a nonce would
    repeat). Within a kind, sequence numbers must rise: the check needs no memory per record.
    With ``frames`` (the archive's frame count) frames are the exception: they may be sealed in
    any order and from several threads, and a bitmap of ``frames`` bits refuses a repeat."""

    def __init__(
        self, keys: Subkeys, cipher: Cipher = Cipher.AES_256_GCM, frames: int | None = None
    ) -> None:
        self.keys = keys
        self.cipher = Cipher(cipher)
        self._frames, self._tables = _aeads(keys, self.cipher)
        self._last: dict[RecordKind, int] = {}
        self._frame_count = frames
        self._sealed_frames = bytearray(-(-frames // 8)) if frames is not None else None
        self._lock = threading.Lock()

    def _claim(self, position: RecordPosition) -> None:
        """Refuse a position sealed before (a programming error in the caller, never bad input:
        sealing it would reuse a nonce); else remember it."""
        with self._lock:
            if self._sealed_frames is not None and position.kind is RecordKind.FRAME:
                seq = position.sequence
                if seq >= (self._frame_count or 0):
                    raise ValueError(
                        f"frame record {seq} sealed in an archive of {self._frame_count} frames"
                    )
                byte, bit = divmod(seq, 8)
                if self._sealed_frames[byte] >> bit & 1:
                    raise ValueError(
                        f"frame record {seq} sealed twice: a nonce is never used twice"
                    )
                self._sealed_frames[byte] |= 1 << bit
                return
            last = self._last.get(position.kind)
            if last is not None and position.sequence <= last:
                raise ValueError(
                    f"{position.kind.name} record {position.sequence} sealed after record "
                    f"{last}: sequence numbers must rise, a nonce is never used twice"
                )
            self._last[position.kind] = position.sequence

    def seal(self, position: RecordPosition, plaintext: Buffer, public: bytes = b"") -> bytes:
        """Ciphertext followed by the 16-byte tag."""
        self._claim(position)
        aead = self._frames if position.kind is RecordKind.FRAME else self._tables
        ad = associated_data(self.keys.archive_uuid, self.cipher, position, public)
        return aead.encrypt(nonce(position), plaintext, ad)

    def seal_into(
        self, position: RecordPosition, plaintext: Buffer, out: memoryview, public: bytes = b""
    ) -> int:
        """``seal`` into ``out[:len(plaintext) + 16]`` (a reused buffer: no allocation, no page
        faults per record); returns that length."""
        n = len(memoryview(plaintext)) + TAG_SIZE
        if len(out) < n:
            raise ValueError(f"a buffer of {len(out)} bytes cannot hold {n} sealed bytes")
        self._claim(position)
        aead = self._frames if position.kind is RecordKind.FRAME else self._tables
        ad = associated_data(self.keys.archive_uuid, self.cipher, position, public)
        return aead.encrypt_into(nonce(position), plaintext, ad, out[:n])


class RecordOpener:
    """Opens sealed records of one archive in any order (restore, serve, verify)."""

    def __init__(self, keys: Subkeys, cipher: Cipher, subject: str = "archive") -> None:
        self.keys = keys
        self.cipher = Cipher(cipher)
        self.subject = subject
        self._frames, self._tables = _aeads(keys, self.cipher)

    def open(self, position: RecordPosition, sealed: Buffer, public: bytes = b"") -> bytes:
        """The plaintext, or TamperedArchive when the record is not the one ``position`` says,
        or was altered, or belongs to another archive."""
        aead = self._frames if position.kind is RecordKind.FRAME else self._tables
        ad = associated_data(self.keys.archive_uuid, self.cipher, position, public)
        try:
            return aead.decrypt(nonce(position), sealed, ad)
        except InvalidTag:
            raise self._tampered(position, len(memoryview(sealed))) from None

    def open_into(
        self, position: RecordPosition, sealed: Buffer, out: memoryview, public: bytes = b""
    ) -> int:
        """``open`` into ``out[:len(sealed) - 16]`` (a reused buffer); returns that length.
        On TamperedArchive ``out`` holds nothing to use."""
        n = len(memoryview(sealed)) - TAG_SIZE
        if n < 0:
            raise self._tampered(position, n + TAG_SIZE)
        if len(out) < n:
            raise ValueError(f"a buffer of {len(out)} bytes cannot hold {n} opened bytes")
        aead = self._frames if position.kind is RecordKind.FRAME else self._tables
        ad = associated_data(self.keys.archive_uuid, self.cipher, position, public)
        try:
            return aead.decrypt_into(nonce(position), sealed, ad, out[:n])
        except InvalidTag:
            raise self._tampered(position, n + TAG_SIZE) from None

    def _tampered(self, position: RecordPosition, length: int) -> TamperedArchive:
        what = f"{position.kind.name.lower().replace('_', ' ')} {position.sequence}"
        final = ", final" if position.final else ""
        return TamperedArchive(
            f"{self.subject}: sealed {what} (dense offset {position.dense_offset}{final}, "
            f"{length} bytes) does not authenticate: it was altered, moved or taken "
            "from another archive; restore from another copy"
        )


def header_mac(keys: Subkeys, header: bytes) -> bytes:
    """HMAC-SHA256 of the header bytes under the header-MAC subkey (32 bytes)."""
    return hmac.new(keys.header_mac, header, sha256).digest()


def check_header_mac(keys: Subkeys, header: bytes, mac: bytes, subject: str = "archive") -> None:
    """TamperedArchive unless ``mac`` is the header MAC of ``header``; constant time."""
    if not hmac.compare_digest(header_mac(keys, header), mac):
        raise TamperedArchive(
            f"{subject}: the header MAC does not match the header's {len(header)} bytes "
            "(key slots, cipher, base or chain fields were changed); restore from another copy"
        )


def keyed_hash(keys: Subkeys) -> blake3.blake3:
    """A BLAKE3 hasher keyed with the hash-table subkey: hashes of an encrypted archive's blocks
    say nothing to whoever lacks the key (an unkeyed hash would confirm guessed contents)."""
    return blake3.blake3(key=keys.hash_table)
