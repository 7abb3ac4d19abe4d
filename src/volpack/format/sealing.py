"""Sealed archives in the format (ENCRYPTED, docs/format.md section 10): the KEYS record, and
sealing and opening head records, frames and the block hash table at the positions the format
gives them; positions always come from the caller's own place in the archive, never a record.
Imports volpack.crypto, so the format imports it only for sealed archives. No I/O, no printing.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass, field

from volpack.crypto import (
    Cipher,
    DataKey,
    EncryptKeys,
    RecordKind,
    RecordOpener,
    RecordPosition,
    Sealer,
    Subkeys,
    check_header_mac,
    decode_slots,
    encode_slots,
    header_mac,
    make_slots,
)
from volpack.errors import CorruptArchive, UnsupportedArchive
from volpack.format import records as R
from volpack.format.keyring import Keyring

KEYS_FIXED = struct.Struct("<HHI")  # cipher, reserved, slot list length
SEALED_CHAIN_KEY = 32 + R.SEAL_TAG
MAC_SIZE = 32
MAX_SLOT_LIST = 4 + 64 * (4 + 4096)
MAX_KEYS = KEYS_FIXED.size + MAX_SLOT_LIST + SEALED_CHAIN_KEY + MAC_SIZE

# Head records and the kind each is sealed as (docs/format.md section 10.5).
HEAD_KINDS = {
    R.TAG_DESC: RecordKind.DESCRIPTION,
    R.TAG_PMAP: RecordKind.PHYSICAL_MAP,
    R.TAG_ATAB: RecordKind.ADDRESS_TABLE,
    R.TAG_ZTAB: RecordKind.ZERO_TABLE,
}
_CHAIN_KEY_AT = RecordPosition(RecordKind.CHAIN_KEY, 0)


def _hash_table_at() -> RecordPosition:
    # The last sealed record of an archive: the final flag makes any truncation fail.
    return RecordPosition(RecordKind.HASH_TABLE, 0, final=True)


def _hash_table_public(count: int, state_digest: bytes) -> bytes:
    return count.to_bytes(8, "little") + state_digest


def _frame_position(seq: int, header: R.Header) -> RecordPosition:
    return RecordPosition(RecordKind.FRAME, seq, seq * header.frame_size)


@dataclass(frozen=True, slots=True)
class KeysRecord:
    """The public KEYS payload: cipher, slot list, the sealed chain hash key and the header MAC."""

    cipher: int
    slot_list: bytes
    sealed_chain_key: bytes
    mac: bytes

    def covered(self) -> bytes:
        """The payload bytes the header MAC covers (all but the MAC)."""
        head = KEYS_FIXED.pack(self.cipher, 0, len(self.slot_list))
        return head + self.slot_list + self.sealed_chain_key

    def encode(self) -> bytes:
        return R.encode_record(R.TAG_KEYS, self.covered() + self.mac)

    @staticmethod
    def decode(payload: bytes, where: str) -> KeysRecord:
        if len(payload) < KEYS_FIXED.size:
            raise CorruptArchive(f"{where}: KEYS record of {len(payload)} bytes is too short")
        cipher, reserved, n = KEYS_FIXED.unpack_from(payload)
        if cipher not in {c.value for c in Cipher}:
            raise UnsupportedArchive(
                f"{where}: cipher {cipher} that volpack {R.MAJOR}.{R.MINOR_ENCRYPTED} does not "
                "know; use a newer volpack"
            )
        expect = KEYS_FIXED.size + n + SEALED_CHAIN_KEY + MAC_SIZE
        if n > MAX_SLOT_LIST or len(payload) != expect:
            raise CorruptArchive(
                f"{where}: KEYS record of {len(payload)} bytes with a slot list of {n} bytes "
                f"(expected {expect} bytes, a list of at most {MAX_SLOT_LIST}); the archive is "
                "damaged"
            )
        at = KEYS_FIXED.size
        return KeysRecord(
            cipher,
            bytes(payload[at : at + n]),
            bytes(payload[at + n : at + n + SEALED_CHAIN_KEY]),
            bytes(payload[expect - MAC_SIZE : expect]),
        )


@dataclass(frozen=True, slots=True, eq=False)
class Unsealer:
    """An opened archive: its record opener and its chain hash key (after the header MAC)."""

    header: R.Header
    opener: RecordOpener
    chain_key: bytes = field(repr=False)
    slot_list: bytes = b""

    @staticmethod
    def open(
        header: R.Header, header_bytes: bytes, keys: KeysRecord, keyring: Keyring, subject: str
    ) -> Unsealer:
        """Open a slot, check the header MAC, open the chain hash key — in that order: nothing
        is decrypted before the MAC checked (docs/format.md section 10.8)."""
        slots = decode_slots(keys.slot_list, subject)
        data_key = keyring.data_key(header.uuid, keys.slot_list, slots, subject)
        subkeys = Subkeys.derive(data_key, uuidlib.UUID(header.uuid).bytes)
        check_header_mac(subkeys, header_bytes + keys.covered(), keys.mac, subject)
        opener = RecordOpener(subkeys, Cipher(keys.cipher), subject)
        chain_key = opener.open(_CHAIN_KEY_AT, keys.sealed_chain_key)
        return Unsealer(header, opener, chain_key, keys.slot_list)

    def open_record(self, tag: bytes, sealed: bytes) -> bytes:
        return self.opener.open(RecordPosition(HEAD_KINDS[tag], 0), sealed, tag)

    def open_frame(
        self, seq: int, fh: R.FrameHeader, sealed: bytes | bytearray | memoryview
    ) -> bytes:
        """The stored bytes of frame ``seq`` (sealed at its own position, codec and lengths)."""
        public = R.frame_public(
            fh.codec, seq, seq * self.header.frame_size, fh.raw_length, fh.stored_length
        )
        return self.opener.open(_frame_position(seq, self.header), sealed, public)

    def open_frame_into(
        self, seq: int, fh: R.FrameHeader, sealed: bytes | bytearray | memoryview, out: memoryview
    ) -> int:
        """``open_frame`` into ``out`` (a reused buffer); returns the stored length."""
        public = R.frame_public(
            fh.codec, seq, seq * self.header.frame_size, fh.raw_length, fh.stored_length
        )
        return self.opener.open_into(_frame_position(seq, self.header), sealed, out, public)

    def open_hash_table(self, t: R.Trailer) -> bytes:
        public = _hash_table_public(t.hash_count, t.state_digest)
        return self.opener.open(_hash_table_at(), t.hash_entries, public)


def check_keys_only(payload: bytes, where: str) -> KeysRecord:
    """The public checks of a KEYS payload (layout, cipher, slot list), for readers without keys."""
    keys = KeysRecord.decode(payload, where)
    decode_slots(keys.slot_list, where)
    return keys


def slot_fingerprints(slot_list: bytes, where: str) -> tuple[str, ...]:
    """Each slot's fingerprint from a slot list (public bytes: no key needed)."""
    from volpack.crypto.slots import fingerprint

    return tuple(fingerprint(s) for s in decode_slots(slot_list, where))


class Sealing:
    """Seals one archive being written: a fresh data key in slots for ``keys``, the subkeys, and
    a sealer that refuses to reuse a nonce. ``chain_key`` is the base's chain hash key for an
    incremental (or a merge), None to start a chain with this archive's own."""

    def __init__(self, header: R.Header, keys: EncryptKeys, chain_key: bytes | None = None) -> None:
        if not header.encrypted:
            raise ValueError("Sealing needs a header with the ENCRYPTED bit")
        self.header = header
        data_key = DataKey.generate()
        self.cipher = Cipher(keys.cipher)
        self.slots = make_slots(data_key, keys)
        self._subkeys = Subkeys.derive(data_key, uuidlib.UUID(header.uuid).bytes)
        # Frames are sealed in the encoding pool, in any order; the sealer still refuses any
        # frame sealed twice (a nonce used twice).
        self._sealer = Sealer(self._subkeys, self.cipher, frames=header.frame_count)
        self.chain_key = chain_key if chain_key is not None else self._subkeys.hash_table

    def fingerprints(self) -> tuple[str, ...]:
        """Each slot's fingerprint: a hash of public bytes, for the catalog and results."""
        from volpack.crypto.slots import fingerprint

        return tuple(fingerprint(s) for s in self.slots)

    def seal_head(self, header_bytes: bytes, head_records: bytes) -> bytes:
        """The KEYS record (with the MAC over ``header_bytes``), then each head record of
        ``head_records`` (DESC, PMAP, ATAB, ZTAB as ``records`` encodes them) sealed."""
        sealed_key = self._sealer.seal(_CHAIN_KEY_AT, self.chain_key)
        keys = KeysRecord(self.cipher.value, encode_slots(self.slots), sealed_key, b"")
        mac = header_mac(self._subkeys, header_bytes + keys.covered())
        out = [KeysRecord(keys.cipher, keys.slot_list, keys.sealed_chain_key, mac).encode()]
        pos = 0
        while pos < len(head_records):
            tag = head_records[pos : pos + 4]
            length = int.from_bytes(head_records[pos + 8 : pos + 16], "little")
            payload = head_records[pos + R.RECORD_SIZE : pos + R.RECORD_SIZE + length]
            sealed = self._sealer.seal(RecordPosition(HEAD_KINDS[tag], 0), payload, tag)
            out.append(R.encode_record(tag, sealed))
            pos += R.RECORD_SIZE + length
        return b"".join(out)

    def seal_frame_into(
        self, seq: int, codec: int, raw_len: int, stored: bytes | memoryview, out: memoryview
    ) -> int:
        """Frame ``seq``'s stored bytes sealed into ``out`` (a reused buffer); returns the sealed
        length. Frames may be sealed in any order, from several threads, each once."""
        public = R.frame_public(
            codec, seq, seq * self.header.frame_size, raw_len, len(stored) + R.SEAL_TAG
        )
        return self._sealer.seal_into(_frame_position(seq, self.header), stored, out, public)

    def seal_hash_table(self, entries: bytes, count: int, state_digest: bytes) -> bytes:
        public = _hash_table_public(count, state_digest)
        return self._sealer.seal(_hash_table_at(), entries, public)
