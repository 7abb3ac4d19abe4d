"""Rewrap a sealed archive: new key slots for the same data key and a new header MAC, with every
sealed record (DESC, PMAP, ATAB, ZTAB, frames, hash table) and the sealed chain hash key copied
byte for byte — nothing is re-encrypted. Slots of kinds this volpack does not know are kept.
It opens the old archive with the old keys first (nothing is written before they open it) and
commits the new one only when every copied frame authenticated and the old digest matched.
Library code: never prints; the medium is given by the caller's URLs.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import numpy as np

from volpack import media
from volpack.errors import CorruptArchive, UsageError
from volpack.format import records as R
from volpack.format.keyring import Keyring
from volpack.format.random_access import Archive

if TYPE_CHECKING:
    from volpack.crypto import EncryptKeys

_FH = R.FRAME_HEADER_SIZE


@dataclass(frozen=True, slots=True)
class RewrapResult:
    archive_uuid: str  # the same archive: its records are bound to this uuid
    url: str
    archive_size: int
    digest: str  # the new archive's digest (the old one's differs: its KEYS record changed)
    old_digest: str  # the digest of the archive it was made from (the catalog finds it by it)
    key_slots: tuple[str, ...]  # fingerprints of the new slot list
    kept_unknown: int  # slots of unknown kinds carried over as they were
    elapsed: float


def rewrap(
    archive_url: str,
    out_url: str,
    *,
    keyring: Keyring,
    encrypt: EncryptKeys,
    force: bool = False,
    mode: int | None = None,
) -> RewrapResult:
    """Write ``out_url``: the archive at ``archive_url`` (opened with ``keyring``) with its key
    slots replaced by one per key of ``encrypt`` (an ``EncryptKeys``; its cipher is ignored: the
    records keep theirs). WrongKey (exit 12) when the old keys open no slot — nothing written."""
    from volpack.crypto import Subkeys, decode_slots, encode_slots, header_mac
    from volpack.crypto.slots import UnknownSlot, fingerprint, make_slots
    from volpack.format.sealing import KeysRecord

    if encrypt.count == 0:
        raise UsageError(
            "rewrap: no new key given; add --recipient age1…, --passphrase-file FILE or "
            "--key-file FILE"
        )
    t0 = time.perf_counter()
    reader = media.open_reader(archive_url, random_access=True)
    medium = None
    try:
        archive = Archive(reader, keyring=keyring, cache_bytes=0)
        header, t = archive.header, archive.trailer
        if not header.encrypted or archive.unsealer is None:
            raise UsageError(
                f"{archive_url}: the archive is not encrypted, so it has no key slots to "
                "rewrap; seal a new backup with --recipient or the other key options"
            )
        where = f"{archive_url} KEYS record"
        keys_len = R.RECORD_SIZE + int.from_bytes(t.head_records[8:16], "little")
        old = KeysRecord.decode(t.head_records[R.RECORD_SIZE : keys_len], where)
        old_slots = decode_slots(old.slot_list, where)
        data_key = keyring.data_key(header.uuid, old.slot_list, old_slots, archive_url)
        kept = tuple(s for s in old_slots if isinstance(s, UnknownSlot))
        slots = make_slots(data_key, encrypt) + kept
        subkeys = Subkeys.derive(data_key, uuidlib.UUID(header.uuid).bytes)
        unmaced = KeysRecord(old.cipher, encode_slots(slots), old.sealed_chain_key, b"")
        mac = header_mac(subkeys, t.header_bytes + unmaced.covered())
        keys = KeysRecord(old.cipher, unmaced.slot_list, old.sealed_chain_key, mac)
        head_records = keys.encode() + t.head_records[keys_len:]
        shift = len(head_records) - len(t.head_records)

        medium = media.open_writer(out_url, force=force, mode=mode)
        new_digest = blake3.blake3(max_threads=1)
        old_digest = blake3.blake3(max_threads=1)

        def emit(data: bytes | memoryview, *, same: bool = True, hashed: int | None = None) -> None:
            """Write ``data``; its first ``hashed`` bytes (all by default) feed the digests."""
            assert medium is not None
            part = data if hashed is None else memoryview(data)[:hashed]
            new_digest.update(part)
            if same:
                old_digest.update(part)
            medium.write(data)

        # The output keeps the archive's header, so its version and digest rule: with
        # METADIGEST (1.4) a frame's header feeds the digest and its sealed bytes do not.
        frame_hashed = _FH if header.meta_digest else None

        emit(t.header_bytes)
        old_digest.update(t.head_records)
        emit(head_records, same=False)
        medium.mark_head_end()
        index = t.index.copy()
        # The new slot list may be shorter than the old one: shift in signed arithmetic.
        moved = t.index["offset"].astype(np.int64) + shift
        index["offset"] = moved.astype(index["offset"].dtype)
        opened = bytearray(header.frame_size)  # each frame is opened into it, then dropped
        for seq in range(t.frame_count):
            # One frame at a time (memory bounded by the frame size); checked, authenticated
            # with the old data key, then copied as it is.
            off = int(t.index["offset"][seq])
            stored = int(t.index["stored"][seq])
            data = reader.read_at(off, _FH + stored)
            at = f"{archive_url} at offset {off}"
            fh = R.decode_frame_header(data[:_FH], header, seq, at)
            if fh.stored_length != stored:
                raise CorruptArchive(
                    f"{at}: frame {seq} stored length {fh.stored_length}, index says {stored}"
                )
            sealed = memoryview(data)[_FH:]
            seed = R.frame_seed(header.seed_uuid, seq, fh.dense_offset)
            if R.checksum(sealed, seed) != fh.raw_checksum:
                raise CorruptArchive(
                    f"{at}: frame {seq} checksum of its sealed bytes does not match; the "
                    "archive is damaged: rewrap a good copy"
                )
            # TamperedArchive if forged
            archive.unsealer.open_frame_into(seq, fh, sealed, memoryview(opened))
            emit(data, hashed=frame_hashed)
        trailer_offset = t.trailer_offset + shift
        new_t = R.Trailer(
            frame_count=t.frame_count,
            dense_size=t.dense_size,
            stored_bytes=t.stored_bytes,
            trailer_offset=trailer_offset,
            digest=b"",
            header_bytes=t.header_bytes,
            head_records=head_records,
            index=index,
            head_hash=blake3.blake3(t.header_bytes + head_records).digest(),
            hash_entries=t.hash_entries,
            state_digest=t.state_digest,
            entries_sealed=t.entries_sealed,
        )
        old_body = R.trailer_body(
            R.Trailer(
                t.frame_count,
                t.dense_size,
                t.stored_bytes,
                t.trailer_offset,
                b"",
                t.header_bytes,
                t.head_records,
                t.index,
                t.head_hash,
                t.hash_entries,
                t.state_digest,
                t.entries_sealed,
            )
        )
        old_digest.update(old_body)
        if old_digest.digest() != t.digest:
            raise CorruptArchive(
                f"{archive_url}: its bytes hash to {old_digest.hexdigest()[:16]}…, its digest is "
                f"{t.digest.hex()[:16]}…; the archive is damaged: rewrap a good copy"
            )
        body = R.trailer_body(new_t)
        new_digest.update(body)
        digest = new_digest.digest()
        tail = R.encode_tail(header, trailer_offset, body, digest)
        medium.write(tail)
        length = trailer_offset + len(tail)
        medium.commit()
    except BaseException:
        if medium is not None:
            medium.abort()
        raise
    finally:
        reader.close()
    return RewrapResult(
        archive_uuid=header.uuid,
        url=medium.location,
        archive_size=length,
        digest=digest.hex(),
        old_digest=t.digest.hex(),
        key_slots=tuple(fingerprint(s) for s in slots),
        kept_unknown=len(kept),
        elapsed=time.perf_counter() - t0,
    )
