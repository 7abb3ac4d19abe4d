"""Byte layouts of archive format 1.4 (docs/format.md) and the 1.0 … 1.3 rules it still reads:
header, records, tables, frames, trailer, footer; sealed records are format.sealing's. Pure encode/decode with every bound checked; no I/O, no
knowledge of sources or media.
"""

from __future__ import annotations

import json
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from volpack.errors import CorruptArchive, IncompleteArchive, NotAnArchive, UnsupportedArchive
from volpack.extents import Extents

MAJOR, MINOR = 1, 4
MINOR_ENCRYPTED = MINOR  # 1.3 gave sealed archives a minor of their own; since 1.4 they share it
MAGIC = b"\x89VPK\r\n\x1a\n"
END_MAGIC = b"\x89VPKEND\n"

CODEC_NONE, CODEC_ZSTD = 0, 1
CODECS = {CODEC_NONE: "none", CODEC_ZSTD: "zstd"}
CHECKSUM_XXH3 = 1
DIGEST_BLAKE3 = 1

FEATURE_ENCRYPTED = 1 << 0
FEATURE_INCREMENTAL = 1 << 1
FEATURE_BOUND = 1 << 2  # 1.1: frame checksums bound to archive and position; head hash, digest
FEATURE_HASHED = 1 << 3  # 1.2: chain fields in the header, block hash table in the trailer
FEATURE_METADIGEST = 1 << 4  # 1.4: the digest covers head, frame headers and trailer only
FEATURE_FINE = 1 << 5  # 1.4: an incremental's covered blocks need not fill whole hash blocks
# bits this version implements
KNOWN_INCOMPAT = (
    FEATURE_BOUND
    | FEATURE_HASHED
    | FEATURE_INCREMENTAL
    | FEATURE_ENCRYPTED
    | FEATURE_METADIGEST
    | FEATURE_FINE
)
INCOMPAT_NAMES = {
    FEATURE_ENCRYPTED: "ENCRYPTED",
    FEATURE_INCREMENTAL: "INCREMENTAL",
    FEATURE_BOUND: "BOUND",
    FEATURE_HASHED: "HASHED",
    FEATURE_METADIGEST: "METADIGEST",
    FEATURE_FINE: "FINE",
}
# set on every archive this version writes
WRITTEN_INCOMPAT = FEATURE_BOUND | FEATURE_HASHED | FEATURE_METADIGEST
RECORD_FLAGS = 0  # known flag bits of records (none yet)
FRAME_FLAGS = 0  # known flag bits of frames (none yet)
PMAP_FLAGS = 0x3F  # UNKNOWN, UNWRITTEN, COMPRESSED, ZERO, SHARED, ENCODED
PMAP_UNKNOWN = 1  # the run's place is not known: device -1 (physmap.PM_UNKNOWN)

MIN_BLOCK, MAX_BLOCK = 512, 1 << 20
MIN_FRAME, MAX_FRAME = 64 << 10, 64 << 20
MAX_VOLUME = (1 << 63) - 1
MAX_DESC = 1 << 20
MAX_TABLE = 1 << 32
UNKNOWN_OFFSET = (1 << 64) - 1
MIN_HASH_BLOCK, MAX_HASH_BLOCK = 64 << 10, 64 << 20
DEFAULT_HASH_BLOCK = 1 << 20

# without the trailing checksum; the 1.2 chain fields sit in what 1.0 / 1.1 reserved
HEADER = struct.Struct("<8sHHIQQ16sIIQQQBbBBI16sQ16s32s32sQ48s")
RECORD = struct.Struct("<4sIQQ")  # + u64 header checksum
FRAME = struct.Struct("<4sBBHQQIIQ")  # + u64 header checksum
FOOTER = struct.Struct("<8sQQ16sHHIQ")  # + u64 footer checksum
TRAILER_FIXED = struct.Struct("<QQQQ32s")
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("stored", "<u4"), ("codec", "u1"), ("pad", "V3")])
ATAB_DTYPE = np.dtype([("volume_block", "<u8"), ("dense_block", "<u8"), ("count", "<u8")])
PMAP_DTYPE = np.dtype(
    [
        ("volume_offset", "<u8"),
        ("length", "<u8"),
        ("physical", "<u8"),
        ("device", "<i4"),
        ("flags", "<u4"),
    ]
)
HEADER_SIZE = HEADER.size + 8  # 256
RECORD_SIZE = RECORD.size + 8  # 32
FRAME_HEADER_SIZE = FRAME.size + 8  # 48
FOOTER_SIZE = FOOTER.size + 8  # 64

TAG_DESC, TAG_PMAP, TAG_ATAB, TAG_TRLR, TAG_FRAME = b"DESC", b"PMAP", b"ATAB", b"TRLR", b"FRAM"
TAG_ZTAB = b"ZTAB"
TAG_KEYS = b"KEYS"
SEAL_TAG = 16  # bytes an AEAD adds to a sealed payload (ENCRYPTED)
ZTAB_DTYPE = np.dtype([("volume_block", "<u8"), ("count", "<u8")])
_NIL_UUID = bytes(16)


def checksum(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    return xxhash.xxh3_64_intdigest(data, seed)


_SEED_INPUT = struct.Struct("<16sQQ")


def frame_seed(uuid_bytes: bytes | None, seq: int, dense_offset: int) -> int:
    """Seed of frame ``seq``'s raw checksum: binds it to its archive and position (BOUND); 0, the
    unseeded checksum of format 1.0, when ``uuid_bytes`` is None."""
    if uuid_bytes is None:
        return 0
    return checksum(_SEED_INPUT.pack(uuid_bytes, seq, dense_offset))


def _unsupported(where: str, what: str) -> UnsupportedArchive:
    return UnsupportedArchive(
        f"{where}: {what} that volpack {MAJOR}.{MINOR} does not know; use a newer volpack"
    )


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise CorruptArchive(f"{where}: {what}; the archive is damaged, restore from another copy")


# -- header -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BaseLink:
    """What an incremental archive applies to: the base archive by UUID and digest, and the base's
    state (state digest and volume size), which any archive of the same state can stand in for."""

    uuid: str
    digest: bytes
    state_digest: bytes
    volume_size: int


@dataclass(frozen=True, slots=True)
class Header:
    uuid: str
    block_size: int
    frame_size: int
    volume_size: int
    used_blocks: int
    created_ns: int
    codec: int = CODEC_ZSTD
    codec_level: int = 1
    incompat_features: int = WRITTEN_INCOMPAT
    compat_features: int = 0
    major: int = MAJOR
    minor: int = MINOR
    # HASHED (1.2): hash block of the trailer's block hash table, the chain and the link in it
    hash_block_size: int = DEFAULT_HASH_BLOCK
    chain_id: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    chain_seq: int = 0
    base: BaseLink | None = None  # with INCREMENTAL only

    @property
    def dense_size(self) -> int:
        return self.used_blocks * self.block_size

    @property
    def frame_count(self) -> int:
        return -(-self.dense_size // self.frame_size)

    @property
    def volume_blocks(self) -> int:
        return -(-self.volume_size // self.block_size)

    def frame_length(self, seq: int) -> int:
        return min(self.frame_size, self.dense_size - seq * self.frame_size)

    @property
    def bound(self) -> bool:
        """Format 1.1 rules: bound frame checksums, head hash, digest over the trailer."""
        return bool(self.incompat_features & FEATURE_BOUND)

    @property
    def hashed(self) -> bool:
        """Format 1.2: chain fields, and a block hash table and state digest in the trailer."""
        return bool(self.incompat_features & FEATURE_HASHED)

    @property
    def incremental(self) -> bool:
        return bool(self.incompat_features & FEATURE_INCREMENTAL)

    @property
    def fine(self) -> bool:
        """FINE: this incremental covers blocks, not whole hash blocks (section 3.4)."""
        return bool(self.incompat_features & FEATURE_FINE)

    @property
    def encrypted(self) -> bool:
        """Format 1.3 ENCRYPTED: tables, frames and hash table sealed (docs/format.md 10)."""
        return bool(self.incompat_features & FEATURE_ENCRYPTED)

    @property
    def meta_digest(self) -> bool:
        """Format 1.4 METADIGEST: the digest covers the metadata stream (head, frame headers,
        trailer), not the frames' stored bytes (docs/format.md 5)."""
        return bool(self.incompat_features & FEATURE_METADIGEST)

    @property
    def seal_overhead(self) -> int:
        """Bytes sealing adds to a payload (0 unless ENCRYPTED)."""
        return SEAL_TAG if self.encrypted else 0

    @property
    def hash_blocks(self) -> int:
        return -(-self.volume_size // self.hash_block_size) if self.hashed else 0

    @property
    def seed_uuid(self) -> bytes | None:
        """The UUID bytes that seed frame checksums, or None for a 1.0 archive (unseeded)."""
        return uuidlib.UUID(self.uuid).bytes if self.bound else None

    def encode(self) -> bytes:
        base = self.base if self.incremental else None
        body = HEADER.pack(
            MAGIC,
            self.major,
            self.minor,
            HEADER_SIZE,
            self.incompat_features,
            self.compat_features,
            uuidlib.UUID(self.uuid).bytes,
            self.block_size,
            self.frame_size,
            self.volume_size,
            self.used_blocks,
            self.created_ns,
            self.codec,
            self.codec_level,
            CHECKSUM_XXH3,
            DIGEST_BLAKE3,
            self.hash_block_size if self.hashed else 0,
            uuidlib.UUID(self.chain_id).bytes if self.hashed else _NIL_UUID,
            self.chain_seq if self.hashed else 0,
            uuidlib.UUID(base.uuid).bytes if base else _NIL_UUID,
            base.digest if base else bytes(32),
            base.state_digest if base else bytes(32),
            base.volume_size if base else 0,
            bytes(48),
        )
        return body + checksum(body).to_bytes(8, "little")

    @staticmethod
    def decode(data: bytes, where: str = "header at offset 0") -> Header:
        if len(data) < 8 or data[:8] != MAGIC:
            raise NotAnArchive(
                f"{where}: not a volpack archive (magic {bytes(data[:8])!r}); check the path or URL"
            )
        _check(len(data) >= HEADER_SIZE, where, f"only {len(data)} of {HEADER_SIZE} header bytes")
        (
            _,
            major,
            minor,
            hlen,
            incompat,
            compat,
            uid,
            bs,
            fs,
            vsize,
            used,
            created,
            codec,
            level,
            csum,
            dig,
            hbs,
            chain_id,
            chain_seq,
            base_uuid,
            base_digest,
            base_state,
            base_size,
            _,
        ) = HEADER.unpack_from(data)
        if major != MAJOR:
            raise UnsupportedArchive(
                f"{where}: archive format version {major}.{minor}, this volpack reads "
                f"{MAJOR}.x; use a volpack release that supports format {major}"
            )
        stored = int.from_bytes(data[HEADER.size : HEADER_SIZE], "little")
        actual = checksum(data[: HEADER.size])
        _check(
            stored == actual, where, f"header checksum {stored:#018x} != computed {actual:#018x}"
        )
        # Order of the checks: docs/format.md 2.2.
        unknown = incompat & ~KNOWN_INCOMPAT
        if unknown:
            names = [INCOMPAT_NAMES.get(1 << b, f"bit {b}") for b in range(64) if unknown >> b & 1]
            raise UnsupportedArchive(
                f"{where}: archive needs feature(s) {', '.join(names)} that volpack "
                f"{MAJOR}.{MINOR} does not implement; use a newer volpack"
            )
        _check(
            minor == 0 or bool(incompat & FEATURE_BOUND),
            where,
            f"format {major}.{minor} archive without the BOUND feature bit",
        )
        hashed = bool(incompat & FEATURE_HASHED)
        _check(
            minor < 2 or hashed,
            where,
            f"format {major}.{minor} archive without the HASHED feature bit",
        )
        _check(
            not incompat & FEATURE_INCREMENTAL or hashed,
            where,
            "INCREMENTAL feature bit without HASHED",
        )
        _check(
            not incompat & FEATURE_FINE or bool(incompat & FEATURE_INCREMENTAL),
            where,
            "FINE feature bit without INCREMENTAL",
        )
        _check(
            not incompat & FEATURE_ENCRYPTED or (hashed and bool(incompat & FEATURE_BOUND)),
            where,
            "ENCRYPTED feature bit without BOUND and HASHED",
        )
        meta = bool(incompat & FEATURE_METADIGEST)
        _check(
            minor < 4 or meta,
            where,
            f"format {major}.{minor} archive without the METADIGEST feature bit",
        )
        _check(
            not meta or (hashed and bool(incompat & FEATURE_BOUND)),
            where,
            "METADIGEST feature bit without BOUND and HASHED",
        )
        if csum != CHECKSUM_XXH3 or dig != DIGEST_BLAKE3:
            raise _unsupported(where, f"checksum algorithm {csum} / digest algorithm {dig}")
        if codec not in CODECS:
            raise _unsupported(where, f"default codec {codec}")
        _check(hlen == HEADER_SIZE, where, f"header_length {hlen}, expected {HEADER_SIZE}")
        _check(
            _power_of_two(bs) and MIN_BLOCK <= bs <= MAX_BLOCK,
            where,
            f"block_size {bs} is not a power of two in {MIN_BLOCK}..{MAX_BLOCK}",
        )
        _check(
            _power_of_two(fs) and MIN_FRAME <= fs <= MAX_FRAME and fs >= bs,
            where,
            f"frame_size {fs} is not a power of two in {MIN_FRAME}..{MAX_FRAME} and >= block_size",
        )
        _check(vsize <= MAX_VOLUME, where, f"volume_size {vsize} exceeds {MAX_VOLUME}")
        base = None
        if hashed:
            _check(
                _power_of_two(hbs) and MIN_HASH_BLOCK <= hbs <= MAX_HASH_BLOCK and hbs >= bs,
                where,
                f"hash_block_size {hbs} is not a power of two in {MIN_HASH_BLOCK}.."
                f"{MAX_HASH_BLOCK} and >= block_size",
            )
            _check(chain_id != _NIL_UUID, where, "chain_id is zero")
        if incompat & FEATURE_INCREMENTAL:
            _check(
                base_uuid != _NIL_UUID and base_uuid != uid,
                where,
                "incremental archive with a zero base UUID or itself as base",
            )
            _check(chain_seq >= 1, where, f"incremental archive with chain sequence {chain_seq}")
            _check(base_size <= MAX_VOLUME, where, f"base volume_size {base_size} too large")
            base = BaseLink(str(uuidlib.UUID(bytes=base_uuid)), base_digest, base_state, base_size)
        _check(
            used <= -(-vsize // bs),
            where,
            f"used_blocks {used} exceeds the volume's {-(-vsize // bs)} blocks",
        )
        return Header(
            uuid=str(uuidlib.UUID(bytes=uid)),
            block_size=bs,
            frame_size=fs,
            volume_size=vsize,
            used_blocks=used,
            created_ns=created,
            codec=codec,
            codec_level=level,
            incompat_features=incompat,
            compat_features=compat,
            major=major,
            minor=minor,
            hash_block_size=hbs if hashed else 0,
            chain_id=str(uuidlib.UUID(bytes=chain_id)) if hashed else "",
            chain_seq=chain_seq if hashed else 0,
            base=base,
        )


# -- generic records ----------------------------------------------------------------------------
def encode_record(tag: bytes, payload: bytes) -> bytes:
    head = RECORD.pack(tag, 0, len(payload), checksum(payload))
    return head + checksum(head).to_bytes(8, "little") + payload


def decode_record_header(data: bytes, where: str, expect: bytes, limit: int) -> tuple[int, int]:
    """Check a record header; returns (payload_length, payload_checksum)."""
    _check(len(data) == RECORD_SIZE, where, f"short record header ({len(data)} bytes)")
    tag, flags, length, psum = RECORD.unpack_from(data)
    stored = int.from_bytes(data[RECORD.size :], "little")
    actual = checksum(data[: RECORD.size])
    _check(stored == actual, where, f"record header checksum {stored:#018x} != {actual:#018x}")
    _check(tag == expect, where, f"record tag {tag!r}, expected {expect!r}")
    if flags & ~RECORD_FLAGS:
        raise _unsupported(where, f"{expect.decode()} record flags {flags:#x}")
    _check(length <= limit, where, f"{expect.decode()} payload of {length} bytes exceeds {limit}")
    return length, psum


def check_payload(payload: bytes, psum: int, where: str, tag: bytes) -> None:
    actual = checksum(payload)
    _check(
        actual == psum,
        where,
        f"{tag.decode()} payload checksum {actual:#018x}, recorded {psum:#018x}",
    )


def encode_desc(desc: dict[str, Any], pad: int = 0) -> bytes:
    """The DESC record; ``pad`` spaces after the JSON (whitespace JSON allows) let a writer that
    learns its tables last make its head exactly the room it left (docs/format.md section 3.1)."""
    text = json.dumps(desc, sort_keys=True, separators=(",", ":")).encode()
    if len(text) + pad > MAX_DESC:
        raise ValueError(f"DESC of {len(text)} + {pad} bytes passes {MAX_DESC}")
    return encode_record(TAG_DESC, text + b" " * pad)


def decode_desc(payload: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptArchive(f"{where}: description is not UTF-8 JSON ({exc})") from None
    _check(isinstance(value, dict), where, "description is not a JSON object")
    return value


# -- address table ------------------------------------------------------------------------------
def encode_atab(volume_block: np.ndarray, count: np.ndarray) -> bytes:
    runs = np.empty(len(count), ATAB_DTYPE)
    runs["volume_block"] = volume_block
    runs["count"] = count
    runs["dense_block"] = np.concatenate([[0], np.cumsum(count)[:-1]]) if len(count) else []
    return encode_record(TAG_ATAB, len(count).to_bytes(8, "little") + runs.tobytes())


def decode_atab(payload: bytes, header: Header, where: str) -> np.ndarray:
    """Validated ATAB runs (structured array with volume_block, dense_block, count)."""
    _check(len(payload) >= 8, where, "address table shorter than its count")
    n = int.from_bytes(payload[:8], "little")
    _check(
        len(payload) == 8 + n * ATAB_DTYPE.itemsize,
        where,
        f"address table of {len(payload)} bytes does not hold {n} runs",
    )
    runs = np.frombuffer(payload, ATAB_DTYPE, count=n, offset=8)
    if n == 0:
        _check(header.used_blocks == 0, where, f"no runs but used_blocks {header.used_blocks}")
        return runs
    counts = runs["count"]
    starts = runs["volume_block"]
    vblocks = header.volume_blocks
    # Bound each field first so that the sums below cannot wrap around 2^64.
    _check(
        bool((counts > 0).all()) and bool((counts <= vblocks).all()),
        where,
        f"address table run with a block count of 0 or above the volume's {vblocks} blocks",
    )
    _check(bool((starts <= vblocks).all()), where, f"address table run starts past block {vblocks}")
    ends = starts + counts
    _check(
        bool((starts[1:] > ends[:-1]).all()),
        where,
        "address table runs out of order, overlapping or touching",
    )
    _check(
        int(ends[-1]) <= vblocks,
        where,
        f"address table reaches block {int(ends[-1])}, volume has {vblocks}",
    )
    # Disjoint runs inside the volume: the sum is at most vblocks and cannot wrap.
    total = int(counts.sum(dtype=np.uint64))
    _check(
        total == header.used_blocks,
        where,
        f"address table holds {total} blocks, header says used_blocks {header.used_blocks}",
    )
    dense = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint64)
    _check(
        bool((runs["dense_block"] == dense).all()), where, "address table dense blocks have gaps"
    )
    return runs


# -- zero table (INCREMENTAL) -------------------------------------------------------------------
def encode_ztab(zeros: Extents) -> bytes:
    """Block runs an incremental archive sets to zero (trimmed, zeroed or newly unused)."""
    runs = np.empty(len(zeros), ZTAB_DTYPE)
    runs["volume_block"] = zeros.starts
    runs["count"] = zeros.ends - zeros.starts
    return encode_record(TAG_ZTAB, len(zeros).to_bytes(8, "little") + runs.tobytes())


def decode_ztab(payload: bytes, header: Header, where: str) -> Extents:
    _check(len(payload) >= 8, where, "zero table shorter than its count")
    n = int.from_bytes(payload[:8], "little")
    _check(
        len(payload) == 8 + n * ZTAB_DTYPE.itemsize,
        where,
        f"zero table of {len(payload)} bytes does not hold {n} runs",
    )
    runs = np.frombuffer(payload, ZTAB_DTYPE, count=n, offset=8)
    if n == 0:
        return Extents.empty()
    vblocks = header.volume_blocks
    starts, counts = runs["volume_block"], runs["count"]
    _check(
        bool((counts > 0).all() and (counts <= vblocks).all() and (starts <= vblocks).all()),
        where,
        f"zero table run with a block count of 0 or outside the volume's {vblocks} blocks",
    )
    ends = starts + counts
    _check(bool((starts[1:] > ends[:-1]).all()), where, "zero table runs out of order or touching")
    _check(int(ends[-1]) <= vblocks, where, f"zero table reaches block {int(ends[-1])}")
    return Extents(starts.astype(np.int64), ends.astype(np.int64))


@dataclass(frozen=True, slots=True)
class Coverage:
    """What an incremental covers, in hash blocks: ``touched`` (holding a covered block: their
    hash table entries are this archive's) and ``whole`` (every block covered: the archive's own
    frames hash to those entries). The same unless FINE."""

    touched: Extents
    whole: Extents


def check_coverage(data: Extents, zeros: Extents, header: Header, where: str) -> Coverage:
    """An incremental's data and zero runs (blocks) are disjoint and together cover whole hash
    blocks (any blocks when FINE), including every hash block the size change touches
    (docs/format.md section 3.4)."""
    _check(data.intersect(zeros).total() == 0, where, "zero table overlaps the address table")
    covered = data.union(zeros)
    per = header.hash_block_size // header.block_size
    touched = covered.scale_out(per)
    # A touched hash block with a block left out is not whole (the volume's last one is short).
    gaps = touched.scale_in(per).clip(0, header.volume_blocks).subtract(covered)
    whole = touched.subtract(gaps.scale_out(per))
    _check(
        header.fine or whole == touched,
        where,
        f"address and zero tables do not cover whole hash blocks of {header.hash_block_size} B",
    )
    base = header.base
    if base is not None:
        resized = min(base.volume_size, header.volume_size) // header.hash_block_size
        changed = Extents.span(resized, header.hash_blocks)
        if base.volume_size == header.volume_size:
            changed = Extents.empty()
        _check(
            whole.contains(changed),
            where,
            f"the volume size changed from {base.volume_size} to {header.volume_size} B but "
            "the hash blocks at the old or new end are not all covered",
        )
    return Coverage(touched, whole)


# -- physical map -------------------------------------------------------------------------------
def encode_pmap(devices: tuple[str, ...], runs: np.ndarray) -> bytes:
    """``runs``: PMAP_DTYPE array (physical = UNKNOWN_OFFSET where unknown)."""
    names = b"".join(len(d.encode()).to_bytes(2, "little") + d.encode() for d in devices)
    head = struct.pack("<IIQ", len(devices), 0, len(runs)) + names
    head += bytes(-len(head) % 8)
    return encode_record(TAG_PMAP, head + runs.astype(PMAP_DTYPE).tobytes())


def decode_pmap(payload: bytes, header: Header, where: str) -> tuple[tuple[str, ...], np.ndarray]:
    _check(len(payload) >= 16, where, "physical map shorter than its counts")
    ndev, _, nruns = struct.unpack_from("<IIQ", payload)
    _check(ndev <= 65536, where, f"physical map names {ndev} devices (limit 65536)")
    pos, devices = 16, []
    for i in range(ndev):
        _check(pos + 2 <= len(payload), where, f"device name {i} past the record end")
        n = int.from_bytes(payload[pos : pos + 2], "little")
        _check(n <= 4096 and pos + 2 + n <= len(payload), where, f"device name {i} of {n} bytes")
        try:
            devices.append(bytes(payload[pos + 2 : pos + 2 + n]).decode("utf-8"))
        except UnicodeDecodeError:
            raise CorruptArchive(f"{where}: device name {i} is not UTF-8") from None
        pos += 2 + n
    pos += -pos % 8
    _check(
        len(payload) == pos + nruns * PMAP_DTYPE.itemsize,
        where,
        f"physical map of {len(payload)} bytes does not hold {nruns} runs",
    )
    runs = np.frombuffer(payload, PMAP_DTYPE, count=nruns, offset=pos)
    if nruns:
        starts, lengths = runs["volume_offset"], runs["length"]
        _check(bool((lengths > 0).all()), where, "physical map run of length 0")
        _check(
            bool((starts <= header.volume_size).all())
            and bool((lengths <= header.volume_size).all()),
            where,
            "physical map run outside the volume",
        )
        ends = starts + lengths
        _check(bool((ends <= header.volume_size).all()), where, "physical map run past the volume")
        _check(
            bool((starts[1:] >= ends[:-1]).all()), where, "physical map runs overlap or unsorted"
        )
        dev = runs["device"]
        _check(
            bool(((dev >= -1) & (dev < ndev)).all()),
            where,
            "physical map device index out of range",
        )
        flags = np.bitwise_or.reduce(runs["flags"])
        if int(flags) & ~PMAP_FLAGS:
            raise _unsupported(where, f"physical map run flags {int(flags):#x}")
        # The UNKNOWN flag and device -1 say the same thing (no known place): they must agree.
        # The physical offset of such a run means nothing (writers put 2^64 - 1).
        unknown = (runs["flags"] & PMAP_UNKNOWN) != 0
        for i in np.flatnonzero(unknown != (dev == -1))[:1].tolist():
            flag = "set" if unknown[i] else "clear"
            _check(False, where, f"physical map run {i}: device {dev[i]} and UNKNOWN flag {flag}")
    return tuple(devices), runs


# -- frames -------------------------------------------------------------------------------------
def encode_frame_header(
    codec: int, seq: int, dense_offset: int, raw_len: int, stored_len: int, raw_sum: int
) -> bytes:
    body = FRAME.pack(TAG_FRAME, codec, 0, 0, seq, dense_offset, raw_len, stored_len, raw_sum)
    return body + checksum(body).to_bytes(8, "little")


FRAME_PUBLIC = 32  # frame header bytes a sealed frame binds as public fields (docs/format.md 10.5)


def frame_public(codec: int, seq: int, dense_offset: int, raw_len: int, stored_len: int) -> bytes:
    """Frame header bytes 0 … 31 (up to the checksum), the public fields of a sealed frame."""
    packed = FRAME.pack(TAG_FRAME, codec, 0, 0, seq, dense_offset, raw_len, stored_len, 0)
    return packed[:FRAME_PUBLIC]


@dataclass(frozen=True, slots=True)
class FrameHeader:
    codec: int
    seq: int
    dense_offset: int
    raw_length: int
    stored_length: int
    raw_checksum: int


def decode_frame_header(
    data: bytes | memoryview, header: Header, seq: int, where: str
) -> FrameHeader:
    _check(len(data) == FRAME_HEADER_SIZE, where, f"short frame header ({len(data)} bytes)")
    tag, codec, flags, _r, fseq, doff, raw, stored, rsum = FRAME.unpack_from(data)
    hsum = int.from_bytes(data[FRAME.size : FRAME_HEADER_SIZE], "little")
    actual = checksum(data[: FRAME.size])
    _check(tag == TAG_FRAME, where, f"frame {seq}: tag {bytes(tag)!r}, expected b'FRAM'")
    _check(hsum == actual, where, f"frame {seq}: header checksum {hsum:#018x} != {actual:#018x}")
    if codec not in CODECS:
        raise _unsupported(where, f"frame {seq}: codec {codec}")
    if flags & ~FRAME_FLAGS:
        raise _unsupported(where, f"frame {seq}: flags {flags:#x}")
    _check(fseq == seq, where, f"frame sequence {fseq}, expected {seq}")
    _check(
        doff == seq * header.frame_size,
        where,
        f"frame {seq}: dense offset {doff}, expected {seq * header.frame_size}",
    )
    expect = header.frame_length(seq)
    _check(raw == expect, where, f"frame {seq}: raw length {raw}, expected {expect}")
    tag = header.seal_overhead  # a sealed frame stores its plaintext and the AEAD tag
    _check(
        tag < stored <= raw + tag and (codec != CODEC_NONE or stored == raw + tag)
        if tag
        else stored <= raw and (codec != CODEC_NONE or stored == raw),
        where,
        f"frame {seq}: stored length {stored} with codec {codec} for {raw} raw bytes",
    )
    return FrameHeader(codec, fseq, doff, raw, stored, rsum)


# -- trailer and footer -------------------------------------------------------------------------
DIGEST_SIZE = 32


@dataclass(frozen=True, slots=True, eq=False)
class Trailer:
    frame_count: int
    dense_size: int
    stored_bytes: int
    trailer_offset: int
    digest: bytes
    header_bytes: bytes
    head_records: bytes  # DESC + PMAP + ATAB records, byte for byte
    index: np.ndarray  # INDEX_DTYPE
    head_hash: bytes = b""  # BOUND: blake3 of header + head records; empty for 1.0
    hash_entries: bytes = b""  # HASHED: the block hash table's entries (24 bytes each)
    state_digest: bytes = b""  # HASHED: blake3 over the state the hash table describes
    entries_sealed: bool = False  # ENCRYPTED: hash_entries are sealed (16 bytes longer)

    @property
    def hash_count(self) -> int:
        return (len(self.hash_entries) - (SEAL_TAG if self.entries_sealed else 0)) // 24


HASH_ENTRY_SIZE = 24  # u64 hash block index + 16-byte hash


def trailer_payload_length(
    header: Header, head_records_length: int, hash_entries: int | None = None
) -> int:
    """The exact TRLR payload length (docs/format.md section 5); with HASHED and
    ``hash_entries`` None, the longest one possible (every hash block with an entry)."""
    hashed = 0
    if header.hashed:
        n = header.hash_blocks if hash_entries is None else hash_entries
        hashed = n * HASH_ENTRY_SIZE + header.seal_overhead + 8 + DIGEST_SIZE
    return (
        TRAILER_FIXED.size
        + HEADER_SIZE
        + head_records_length
        + header.frame_count * INDEX_DTYPE.itemsize
        + hashed
        + (DIGEST_SIZE if header.bound else 0)
    )


def trailer_body(t: Trailer) -> bytes:
    """A BOUND trailer's payload without its final digest: the last bytes the digest covers."""
    fixed = TRAILER_FIXED.pack(
        t.frame_count, t.dense_size, t.stored_bytes, t.trailer_offset, t.head_hash
    )
    body = fixed + t.header_bytes + t.head_records + t.index.tobytes()
    if t.state_digest:
        body += t.hash_entries + t.hash_count.to_bytes(8, "little") + t.state_digest
    return body


def split_trailer(
    payload: bytes, where: str, bound: bool, hashed: bool = False, sealed: bool = False
) -> Trailer:
    """Parse the trailer payload (1.2 layout when ``hashed``, 1.1 when ``bound``, else 1.0; with
    ``sealed`` the hash entries are sealed, ENCRYPTED); the head records are split and checked by
    the caller, the digest compared by whoever computed it, the hash table decoded by
    format.hashtable."""
    tail = DIGEST_SIZE if bound else 0
    _check(len(payload) >= TRAILER_FIXED.size + HEADER_SIZE + tail, where, "trailer too short")
    frames, dense, stored, toff, first_hash = TRAILER_FIXED.unpack_from(payload)
    index_len = frames * INDEX_DTYPE.itemsize
    rest = TRAILER_FIXED.size + HEADER_SIZE
    end = len(payload) - tail
    last = bytes(payload[end:])
    hash_entries = state_digest = b""
    if hashed:
        _check(end - rest >= 8 + DIGEST_SIZE, where, "trailer too short for its hash table")
        state_digest = bytes(payload[end - DIGEST_SIZE : end])
        end -= DIGEST_SIZE + 8
        count = int.from_bytes(payload[end : end + 8], "little")
        tag = SEAL_TAG if sealed else 0
        _check(
            count <= (end - rest - tag) // HASH_ENTRY_SIZE,
            where,
            f"trailer names {count} hash table entries but has no room for them",
        )
        hash_entries = bytes(payload[end - count * HASH_ENTRY_SIZE - tag : end])
        end -= count * HASH_ENTRY_SIZE + tag
    _check(
        index_len <= end - rest,
        where,
        f"trailer names {frames} frames but has room for {(end - rest) // 16}",
    )
    hdr = bytes(payload[TRAILER_FIXED.size : rest])
    records = bytes(payload[rest : end - index_len])
    index = np.frombuffer(payload, INDEX_DTYPE, count=frames, offset=end - index_len)
    if bound:
        digest, head_hash = last, bytes(first_hash)
    else:
        digest, head_hash = bytes(first_hash), b""
    return Trailer(
        frame_count=frames,
        dense_size=dense,
        stored_bytes=stored,
        trailer_offset=toff,
        digest=digest,
        header_bytes=hdr,
        head_records=records,
        index=index,
        head_hash=head_hash,
        hash_entries=hash_entries,
        state_digest=state_digest,
        entries_sealed=sealed,
    )


@dataclass(frozen=True, slots=True)
class Footer:
    trailer_offset: int
    trailer_length: int
    uuid: str
    major: int
    minor: int
    archive_length: int


def encode_footer(f: Footer) -> bytes:
    body = FOOTER.pack(
        END_MAGIC,
        f.trailer_offset,
        f.trailer_length,
        uuidlib.UUID(f.uuid).bytes,
        f.major,
        f.minor,
        0,
        f.archive_length,
    )
    return body + checksum(body).to_bytes(8, "little")


def decode_footer(
    data: bytes, where: str, archive_length: int | None, full_length: bool = False
) -> Footer:
    """Check a footer: magic, major, checksum, then fields (docs/format.md sections 2.2 and 6).
    ``full_length``: the caller knows these are the 64 bytes after a checked trailer."""
    if len(data) < FOOTER_SIZE or data[:8] != END_MAGIC:
        # A footer whose checksum holds with the magic restored is a damaged footer on a
        # full-length archive, not the end of a truncated copy.
        if len(data) == FOOTER_SIZE and (
            full_length
            or checksum(END_MAGIC + data[8 : FOOTER.size])
            == int.from_bytes(data[FOOTER.size :], "little")
        ):
            _check(False, where, f"footer magic {bytes(data[:8])!r} is damaged")
        raise IncompleteArchive(
            f"{where}: incomplete archive: no footer at the end (the backup was interrupted or "
            "the copy truncated); use a complete copy"
        )
    _, toff, tlen, uid, major, minor, _, alen = FOOTER.unpack_from(data)
    if major != MAJOR:
        raise UnsupportedArchive(
            f"{where}: archive format version {major}.{minor}, this volpack "
            f"reads {MAJOR}.x; use a volpack release that supports it"
        )
    stored = int.from_bytes(data[FOOTER.size : FOOTER_SIZE], "little")
    actual = checksum(data[: FOOTER.size])
    _check(stored == actual, where, f"footer checksum {stored:#018x} != {actual:#018x}")
    if archive_length is not None:
        _check(
            alen == archive_length,
            where,
            f"footer says archive length {alen}, medium has {archive_length} bytes",
        )
    _check(
        toff + tlen + FOOTER_SIZE == alen and tlen >= RECORD_SIZE,
        where,
        f"footer trailer offset {toff} + length {tlen} + {FOOTER_SIZE} != length {alen}",
    )
    return Footer(toff, tlen, str(uuidlib.UUID(bytes=uid)), major, minor, alen)


def encode_tail(header: Header, trailer_offset: int, body: bytes, digest: bytes) -> bytes:
    """The archive's last bytes: the TRLR record (``body`` then ``digest``) and the footer that
    points back to it."""
    trailer = encode_record(TAG_TRLR, body + digest)
    footer = Footer(
        trailer_offset=trailer_offset,
        trailer_length=len(trailer),
        uuid=header.uuid,
        major=header.major,
        minor=header.minor,
        archive_length=trailer_offset + len(trailer) + FOOTER_SIZE,
    )
    return trailer + encode_footer(footer)
