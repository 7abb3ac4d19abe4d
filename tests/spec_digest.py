"""The archive digest as docs/format.md section 5 defines it, computed here from the bytes alone
(never through volpack's reader or writer), for the tests that decode golden archives or forge
edited ones: 1.4 (METADIGEST) over the metadata stream, 1.1 … 1.3 over every byte."""

from __future__ import annotations

import blake3

METADIGEST = 1 << 4
HEADER, RECORD, FRAME = 256, 32, 48
TAGS = (b"KEYS", b"DESC", b"PMAP", b"ATAB", b"ZTAB", b"FRAM")


def metadata_stream(before_trailer: bytes) -> bytes:
    """Header, head records and every frame's 48-byte header of the archive bytes that precede
    the TRLR record, in order; the parts follow each other with no gaps (section 1), else
    ValueError."""
    parts, pos = [before_trailer[:HEADER]], HEADER
    while pos < len(before_trailer):
        tag = before_trailer[pos : pos + 4]
        if tag not in TAGS:
            raise ValueError(f"no record or frame at offset {pos} (tag {tag!r})")
        if tag == b"FRAM":
            stored = int.from_bytes(before_trailer[pos + 28 : pos + 32], "little")
            parts.append(before_trailer[pos : pos + FRAME])
            pos += FRAME + stored
        else:
            length = int.from_bytes(before_trailer[pos + 8 : pos + 16], "little")
            parts.append(before_trailer[pos : pos + RECORD + length])
            pos += RECORD + length
    if pos != len(before_trailer):
        raise ValueError(
            f"the last part ends at {pos}, the trailer starts at {len(before_trailer)}"
        )
    return b"".join(parts)


def spec_digest(
    before_trailer: bytes, trailer_body: bytes, *, metadigest: bool | None = None
) -> bytes:
    """The digest of an archive whose bytes before the TRLR record are ``before_trailer`` and
    whose trailer payload up to the digest is ``trailer_body`` (BOUND archives), by the rule its
    header's METADIGEST bit names, or by the rule ``metadigest`` forces (to forge with the wrong
    one)."""
    if metadigest is None:
        metadigest = bool(int.from_bytes(before_trailer[16:24], "little") & METADIGEST)
    if metadigest:
        return blake3.blake3(metadata_stream(before_trailer) + trailer_body).digest()
    return blake3.blake3(before_trailer + trailer_body).digest()
