"""A forger's toolkit for the tamper tests: split an archive into its parts and put parts back
together with every unkeyed check recomputed (record and frame checksums, table copies, frame
index, head hash, digest, footer), exactly what someone without the key can do. Whatever the
sealing binds must still fail; only the AEAD and the header MAC stand in the way."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field

import blake3

from spec_digest import spec_digest
from volpack.format import records as R


@dataclass
class Parts:
    header: bytearray
    records: list[tuple[bytes, bytes]]  # (tag, payload), KEYS first
    frames: list[tuple[int, int, bytes]]  # (codec, raw_length, stored bytes)
    hash_part: bytes  # sealed entries ‖ count ‖ state digest
    boundaries: list[int] = field(default_factory=list)  # offsets where each part starts


def split(data: bytes) -> Parts:
    header = bytearray(data[: R.HEADER_SIZE])
    h = R.Header.decode(bytes(header))
    pos, records, bounds = R.HEADER_SIZE, [], [0, R.HEADER_SIZE]
    tags = [R.TAG_KEYS, R.TAG_DESC, R.TAG_PMAP, R.TAG_ATAB] + ([R.TAG_ZTAB] * h.incremental)
    for tag in tags:
        n = int.from_bytes(data[pos + 8 : pos + 16], "little")
        assert data[pos : pos + 4] == tag
        records.append((tag, data[pos + 32 : pos + 32 + n]))
        pos += 32 + n
        bounds.append(pos)
    frames = []
    for _ in range(h.frame_count):
        codec, raw, stored = data[pos + 4], *R.FRAME.unpack_from(data, pos)[6:8]
        frames.append((codec, raw, data[pos + 48 : pos + 48 + stored]))
        pos += 48 + stored
        bounds.append(pos)
    toff = pos
    plen = int.from_bytes(data[toff + 8 : toff + 16], "little")
    payload = data[toff + 32 : toff + 32 + plen]
    count = int.from_bytes(payload[-72:-64], "little")
    hash_part = payload[-32 - 40 - count * 24 - R.SEAL_TAG : -32]
    bounds.append(toff + 32 + plen)
    return Parts(header, records, frames, hash_part, bounds)


def build(p: Parts) -> bytes:
    """The archive of ``p`` with every unkeyed check made to hold."""
    body = bytes(p.header[: R.HEADER.size])
    header = body + R.checksum(body).to_bytes(8, "little")
    h = R.Header.decode(header)
    uid = uuidlib.UUID(h.uuid).bytes
    head = header + b"".join(R.encode_record(t, pl) for t, pl in p.records)
    out, index, stored_total = [head], [], 0
    pos = len(head)
    for seq, (codec, raw, stored) in enumerate(p.frames):
        doff = seq * h.frame_size
        csum = R.checksum(stored, R.frame_seed(uid, seq, doff))
        out.append(R.encode_frame_header(codec, seq, doff, raw, len(stored), csum) + stored)
        index.append(
            pos.to_bytes(8, "little")
            + len(stored).to_bytes(4, "little")
            + bytes([codec])
            + bytes(3)
        )
        pos += 48 + len(stored)
        stored_total += len(stored)
    toff = pos
    fixed = R.TRAILER_FIXED.pack(
        len(p.frames), h.dense_size, stored_total, toff, blake3.blake3(head).digest()
    )
    tbody = fixed + head + b"".join(index) + p.hash_part
    digest = spec_digest(b"".join(out), tbody)
    trailer = R.encode_record(R.TAG_TRLR, tbody + digest)
    length = toff + len(trailer) + R.FOOTER_SIZE
    footer = R.encode_footer(R.Footer(toff, len(trailer), h.uuid, h.major, h.minor, length))
    return b"".join(out) + trailer + footer
