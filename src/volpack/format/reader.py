"""Sequential archive reader for pipes, tapes, restore and verify: one pass, no seeking.

``read_head`` checks header and tables (a restore writes nothing before it returns), ``frames``
yields checked dense bytes in order, ``read_tail`` checks trailer, digest and footer and that the
stream ends there. Any shortfall is an IncompleteArchive; any mismatch a CorruptArchive.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np

from volpack.buffers import LINE, buffer, place
from volpack.compact.table import AddressTable
from volpack.errors import CorruptArchive, IncompleteArchive, TamperedArchive, UsageError
from volpack.extents import Extents
from volpack.format import records as R
from volpack.format.description import ArchiveDescription
from volpack.format.hashtable import HashBuilder, HashTable
from volpack.format.pmap import decode_pmap
from volpack.media.base import MediumReader
from volpack.physmap import PhysicalMap

if TYPE_CHECKING:
    from volpack.format.keyring import Keyring
    from volpack.format.sealing import Unsealer

_CHUNK = 8 << 20


@dataclass(frozen=True, slots=True, eq=False)
class Head:
    header: R.Header
    header_bytes: bytes
    desc: ArchiveDescription
    pmap: PhysicalMap
    table: AddressTable
    head_records: bytes
    # INCREMENTAL: blocks set to zero, and the hash blocks this archive covers (data or zero);
    # a full archive covers every hash block and its zeros are the blocks outside its table.
    zeros: Extents
    covered: Extents
    # ENCRYPTED: the opened archive, or None when read without keys (``sealed`` then says the
    # tables above are empty stand-ins: only the public checks ran)
    unsealer: Unsealer | None = None
    sealed: bool = False
    # FINE incrementals: the hash blocks every block of which is covered (their own frames hash
    # to those entries); None: all of ``covered``
    whole: Extents | None = None
    key_slots: tuple[str, ...] = ()  # ENCRYPTED: each slot's fingerprint (public)


def head_tags(header: R.Header) -> tuple[tuple[bytes, int], ...]:
    """The head's records in order, with their payload limits."""
    tag = header.seal_overhead
    tags: tuple[tuple[bytes, int], ...] = (
        (R.TAG_DESC, R.MAX_DESC + tag),
        (R.TAG_PMAP, R.MAX_TABLE + tag),
        (R.TAG_ATAB, R.MAX_TABLE + tag),
    )
    if header.incremental:
        tags += ((R.TAG_ZTAB, R.MAX_TABLE + tag),)
    if header.encrypted:
        from volpack.format.sealing import MAX_KEYS

        tags = ((R.TAG_KEYS, MAX_KEYS), *tags)
    return tags


def no_key(subject: str) -> UsageError:
    return UsageError(
        f"{subject}: the archive is encrypted and no key was given; add --identity FILE, "
        "--passphrase-file FILE, --key-file FILE or set VOLPACK_PASSPHRASE"
    )


@dataclass(frozen=True, slots=True, eq=False)
class HeadTables:
    desc: dict[str, Any]
    pmap: PhysicalMap
    table: AddressTable
    zeros: Extents
    covered: Extents
    length: int
    unsealer: Unsealer | None = None
    sealed: bool = False
    key_slots: tuple[str, ...] = ()  # ENCRYPTED: each slot's fingerprint (public)
    whole: Extents | None = None  # as Head.whole


def parse_head_records(
    data: bytes,
    header: R.Header,
    where: str,
    *,
    header_bytes: bytes = b"",
    keyring: Keyring | None = None,
    public: bool = False,
) -> HeadTables:
    """Decode DESC (the JSON object as recorded), PMAP, ATAB and (INCREMENTAL) ZTAB from ``data``
    (records back to back); returns them and the length used. ENCRYPTED: KEYS first, then with
    ``keyring`` the header MAC (over ``header_bytes`` and KEYS) and each record opened; with
    ``public`` and no keyring only the public checks run and the tables are empty stand-ins."""
    pos = 0
    out: list[bytes] = []
    for tag, limit in head_tags(header):
        if pos + R.RECORD_SIZE > len(data):
            raise CorruptArchive(f"{where}: {tag.decode()} record missing from the table copies")
        length, psum = R.decode_record_header(data[pos : pos + R.RECORD_SIZE], where, tag, limit)
        pos += R.RECORD_SIZE
        if pos + length > len(data):
            raise CorruptArchive(f"{where}: {tag.decode()} record runs past the table copies")
        payload = data[pos : pos + length]
        R.check_payload(payload, psum, where, tag)
        out.append(payload)
        pos += length
    unsealer = None
    key_slots: tuple[str, ...] = ()
    if not header.encrypted and keyring is not None and keyring.expect_sealed:
        raise TamperedArchive(
            f"{where}: the archive is not encrypted, but keys were given to open it: it may "
            "have been replaced by an unsealed copy; leave out the key options to read it as it is"
        )
    if header.encrypted:
        from volpack.format import sealing

        keys = sealing.check_keys_only(out.pop(0), where)
        key_slots = sealing.slot_fingerprints(keys.slot_list, where)
        if keyring is None:
            if not public:
                raise no_key(where)
            empty = AddressTable.from_arrays(
                header.block_size, np.zeros(0, np.int64), np.zeros(0, np.int64)
            )
            return HeadTables(
                {},
                PhysicalMap.build((), []),
                empty,
                Extents.empty(),
                Extents.empty(),
                pos,
                None,
                True,
                key_slots,
            )
        unsealer = sealing.Unsealer.open(header, header_bytes, keys, keyring, where)
        tags = [t for t, _ in head_tags(header)][1:]
        out = [unsealer.open_record(t, p) for t, p in zip(tags, out, strict=True)]
    desc = R.decode_desc(out[0], where)
    pmap = decode_pmap(out[1], header, where)
    table = table_from_atab(R.decode_atab(out[2], header, where), header)
    if header.incremental:
        zeros = R.decode_ztab(out[3], header, where)
        coverage = R.check_coverage(table.used(), zeros, header, where)
        covered, whole = coverage.touched, coverage.whole
    else:
        zeros = table.used().complement(0, header.volume_blocks)
        covered = whole = Extents.span(0, header.hash_blocks)
    return HeadTables(
        desc, pmap, table, zeros, covered, pos, unsealer, key_slots=key_slots, whole=whole
    )


def table_from_atab(runs: np.ndarray, header: R.Header) -> AddressTable:
    return AddressTable.from_arrays(
        header.block_size, runs["volume_block"].astype(np.int64), runs["count"].astype(np.int64)
    )


class ArchiveStream:
    def __init__(
        self,
        medium: MediumReader,
        name: str | None = None,
        *,
        check_hashes: bool = False,
        keyring: Keyring | None = None,
        public: bool = False,
    ) -> None:
        """``check_hashes``: hash the frames read and check the trailer's block hash table
        against them (verify does; a restore relies on the frame checksums and digest).
        ``keyring`` opens an encrypted archive; without one, ``public`` reads it checking only
        what needs no key (frames then yield their sealed bytes), else it is refused."""
        self.medium = medium
        self.check_hashes = check_hashes
        self.keyring = keyring
        self.public = public
        self._hashes: HashBuilder | None = None
        self.hash_table: HashTable | None = None
        self.name = name or medium.url
        self._buf = bytearray(64 << 10)  # grows to the largest frame actually seen
        self._pos = self._end = 0
        self.offset = 0  # archive offset of the next unread byte
        self._digest = blake3.blake3(max_threads=1)
        self._hashing = True
        # Frames' stored bytes feed the digest before format 1.4 only (METADIGEST: they don't).
        self._hash_payloads = True
        self.head: Head | None = None
        self.stored_bytes = 0
        # What the frames read say the trailer's frame index must hold: offset, stored, codec.
        self._frame_offsets: list[int] = []
        self._frame_stored: list[int] = []
        self._frame_codecs: list[int] = []

    # -- buffered input ------------------------------------------------------------------------
    def _where(self, offset: int | None = None) -> str:
        return f"{self.name} at offset {self.offset if offset is None else offset}"

    def _read(self, n: int, what: str) -> memoryview:
        """Exactly ``n`` bytes (valid until the next call) or IncompleteArchive."""
        if self._end - self._pos < n:
            remaining = self._end - self._pos
            if len(self._buf) < n:
                grown = bytearray(max(n, min(2 * len(self._buf), _CHUNK)))
                grown[:remaining] = self._buf[self._pos : self._end]
                self._buf = grown
            else:
                self._buf[:remaining] = self._buf[self._pos : self._end]
            self._pos, self._end = 0, remaining
            view = memoryview(self._buf)
            while self._end < n:
                got = self.medium.readinto(view[self._end :])
                if got == 0:
                    raise IncompleteArchive(
                        f"{self.name}: incomplete archive: it ends at offset "
                        f"{self.offset + self._end} inside {what} (expected {n} bytes at "
                        f"offset {self.offset}); the backup was interrupted or the copy truncated"
                    )
                self._end += got
        out = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += n
        self.offset += n
        if self._hashing:
            self._digest.update(out)
        return out

    def _take(self, n: int, what: str, into: bytearray | None = None) -> memoryview:
        """Exactly ``n`` bytes of a frame's stored bytes in a buffer of their own (``into``, when
        it is large enough): what is buffered, then the rest read straight into it (a frame is
        copied from the medium once, not through the read buffer). They feed the digest only
        without METADIGEST."""
        # Placed at the archive offset's phase: the medium's copy runs at full speed
        # (volpack/buffers.py).
        if into is not None and len(into) >= n + LINE:
            view = place(into, n, self.offset)
        else:
            view = buffer(n, self.offset)
        have = min(n, self._end - self._pos)
        view[:have] = memoryview(self._buf)[self._pos : self._pos + have]
        self._pos += have
        got = have
        while got < n:
            r = self.medium.readinto(view[got:])
            if r == 0:
                raise IncompleteArchive(
                    f"{self.name}: incomplete archive: it ends at offset {self.offset + got} "
                    f"inside {what} (expected {n} bytes at offset {self.offset}); the backup "
                    "was interrupted or the copy truncated"
                )
            got += r
        self.offset += n
        if self._hashing and self._hash_payloads:
            self._digest.update(view)
        return view

    def _read_record(self, tag: bytes, limit: int) -> tuple[bytes, bytes]:
        where = self._where()
        hdr = bytes(self._read(R.RECORD_SIZE, f"the {tag.decode()} record header"))
        length, psum = R.decode_record_header(hdr, where, tag, limit)
        payload = self._read_large(length, f"the {tag.decode()} record")
        R.check_payload(payload, psum, where, tag)
        return hdr, payload

    def _read_large(self, length: int, what: str) -> bytes:
        # Grow with the data actually received, so a hostile length cannot allocate up front.
        parts, left = [], length
        while left:
            piece = min(left, _CHUNK)
            parts.append(bytes(self._read(piece, what)))
            left -= piece
        return b"".join(parts)

    # -- the three phases ----------------------------------------------------------------------
    def read_head(self) -> Head:
        first = self._read(8, "the header")
        header_bytes = bytes(first) + bytes(self._read(R.HEADER_SIZE - 8, "the header"))
        header = R.Header.decode(header_bytes, self._where(0))
        self._hash_payloads = not header.meta_digest
        records = [self._read_record(tag, limit) for tag, limit in head_tags(header)]
        head_records = b"".join(h + p for h, p in records)
        t = parse_head_records(
            head_records,
            header,
            self.name,
            header_bytes=header_bytes,
            keyring=self.keyring,
            public=self.public,
        )
        self.head = Head(
            header=header,
            header_bytes=header_bytes,
            desc=ArchiveDescription.from_json(t.desc),
            pmap=t.pmap,
            table=t.table,
            head_records=head_records,
            zeros=t.zeros,
            covered=t.covered,
            unsealer=t.unsealer,
            sealed=t.sealed,
            whole=t.whole,
            key_slots=t.key_slots,
        )
        if self.check_hashes and header.hashed and not t.sealed:
            key = t.unsealer.chain_key if t.unsealer is not None else None
            self._hashes = HashBuilder(t.table, header.volume_size, header.hash_block_size, key)
        return self.head

    def frames(self, threads: int = 2, reuse: bool = False) -> Iterator[tuple[int, memoryview]]:
        """(dense_offset, raw bytes) per frame, in order, each checked.

        A reader thread pulls frames off the medium (and feeds the digest: frame headers, and
        before format 1.4 the stored bytes too) while a small pool
        decompresses and checksums them, so reading, decoding and the caller's writes overlap.
        ``reuse``: a frame's bytes are valid only until the caller asks for the next one, and
        their buffers serve later frames (no fresh 4 MiB, no page faults, per frame).
        """
        if self.head is None:
            raise RuntimeError("read_head() first")
        h = self.head.header
        if h.frame_count == 0:
            return
        import zstandard

        local = threading.local()
        seed_uuid = h.seed_uuid
        unsealer = self.head.unsealer  # None only in a public read (read_head refused others)
        # Stored bytes (sealed: with the tag) and decompressed bytes fit one size; one spare
        # byte lets a decompression that runs long show.
        spare = _Buffers(h.frame_size + R.SEAL_TAG + 1) if reuse else None

        def decode(
            fh: R.FrameHeader, held: bytearray | None, stored: memoryview, where: str
        ) -> tuple[int, memoryview, bytearray | None]:
            """The frame's raw bytes and the buffer holding them (None: not from ``spare``)."""
            dec = getattr(local, "dec", None)
            if dec is None:
                dec = local.dec = zstandard.ZstdDecompressor()
            seed = R.frame_seed(seed_uuid, fh.seq, fh.dense_offset)
            out = spare.get() if spare is not None and fh.codec == R.CODEC_ZSTD else None
            if h.encrypted:
                # ``stored`` is a buffer of its own, so it is opened in place (no scratch).
                raw = open_frame(unsealer, dec, fh, stored, where, seed, None, out)
            else:
                raw = decode_frame_payload(dec, fh, stored, where, seed, out)
            if out is None:
                return fh.dense_offset, raw, held
            if held is not None and spare is not None:
                spare.put(held)  # decompressed: the stored bytes are done with
            return fh.dense_offset, raw, out

        pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="vp-decode")
        # A sealed frame is opened in place, but the cipher library itself takes a few MiB:
        # fewer frames wait decoded (the dense image's restore: 76 MiB with as many as a plain
        # one, 68 with threads + 1, plain 67), so memory stays within a tenth of a plain one's.
        ahead = threads + 1 if unsealer is not None else 2 * threads + 1
        ready: queue.Queue[Future | BaseException | None] = queue.Queue(maxsize=ahead)
        stop = threading.Event()

        def read_frames() -> None:
            try:
                for seq in range(h.frame_count):
                    if stop.is_set():
                        return
                    where = self._where()
                    self._frame_offsets.append(self.offset)
                    head = self._read(R.FRAME_HEADER_SIZE, f"frame {seq}'s header")
                    fh = R.decode_frame_header(head, h, seq, where)
                    self._frame_stored.append(fh.stored_length)
                    self._frame_codecs.append(fh.codec)
                    held = spare.get() if spare is not None else None
                    if held is not None and len(held) < fh.stored_length + LINE:
                        held = None  # too large for a spare buffer (a damaged header)
                    stored = self._take(fh.stored_length, f"frame {seq}", held)
                    self.stored_bytes += fh.stored_length
                    ready.put(pool.submit(decode, fh, held, stored, where))
            except BaseException as exc:  # handed to the consuming thread, in order
                ready.put(exc)
                return
            ready.put(None)

        reader = threading.Thread(target=read_frames, name="vp-read", daemon=True)
        reader.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                dense_offset, raw, held = item.result()
                if self._hashes is not None:
                    self._hashes.feed(dense_offset, raw)
                yield dense_offset, raw
                if held is not None and spare is not None:
                    spare.put(held)  # the caller asked for the next frame: done with this one
        finally:
            stop.set()
            while reader.is_alive():  # free a slot so a blocked reader sees the stop
                with contextlib.suppress(queue.Empty):
                    ready.get_nowait()
                reader.join(0.01)
            pool.shutdown(wait=True, cancel_futures=True)

    def read_tail(self) -> R.Trailer:
        """Check trailer, digest, footer and end of stream; returns the trailer."""
        if self.head is None:
            raise RuntimeError("read_head() first")
        h = self.head.header
        self._hashing = False
        offset = self.offset
        limit = R.trailer_payload_length(h, len(self.head.head_records))
        thdr, payload = self._read_record(R.TAG_TRLR, limit)
        where = self._where(offset)
        if h.bound:  # the digest also covers the trailer up to the digest itself
            self._digest.update(memoryview(payload)[: len(payload) - R.DIGEST_SIZE])
        digest = self._digest.digest()
        t = R.split_trailer(payload, where, h.bound, h.hashed, h.encrypted)
        expect = R.trailer_payload_length(h, len(self.head.head_records), t.hash_count)
        checks = [
            (t.frame_count, h.frame_count, "frame count"),
            (t.dense_size, h.dense_size, "dense size"),
            (t.stored_bytes, self.stored_bytes, "stored bytes"),
            (t.trailer_offset, offset, "trailer offset"),
            (len(payload), expect, "trailer length"),
        ]
        for actual, wanted, what in checks:
            if actual != wanted:
                raise CorruptArchive(f"{where}: trailer {what} {actual}, expected {wanted}")
        if t.header_bytes != self.head.header_bytes or t.head_records != self.head.head_records:
            raise CorruptArchive(
                f"{where}: the trailer's copy of header and tables differs from the head"
            )
        if h.bound:
            head_hash = blake3.blake3(self.head.header_bytes + self.head.head_records).digest()
            if t.head_hash != head_hash:
                raise CorruptArchive(
                    f"{where}: trailer head hash {t.head_hash.hex()} does not match the head's "
                    f"{head_hash.hex()}; the archive is damaged"
                )
        check_index_matches(
            t.index, self._frame_offsets, self._frame_stored, self._frame_codecs, where
        )
        if h.hashed and not self.head.sealed:
            self.hash_table = check_hash_table(t, h, where, self.head.unsealer)
            if self._hashes is not None:
                own = self.head.covered if self.head.whole is None else self.head.whole
                check_own_hashes(self.hash_table, self._hashes.result(), own, where)
        # The digest last: the checks above name the part that differs, it catches the rest.
        if t.digest != digest:
            raise CorruptArchive(
                f"{where}: archive digest {digest.hex()} does not match the "
                f"trailer's {t.digest.hex()}; the archive is damaged"
            )
        foot_at = self.offset
        footer = R.decode_footer(
            bytes(self._read(R.FOOTER_SIZE, "the footer")), self._where(foot_at), self.offset, True
        )
        if (
            footer.uuid != h.uuid
            or footer.trailer_offset != offset
            or (footer.trailer_length != len(thdr) + len(payload))
        ):
            raise CorruptArchive(
                f"{self._where(foot_at)}: footer does not match the trailer "
                f"(uuid {footer.uuid}, trailer at {footer.trailer_offset})"
            )
        if self._end > self._pos or self.medium.readinto(memoryview(bytearray(1))) != 0:
            raise CorruptArchive(
                f"{self._where()}: unexpected bytes after the footer; "
                "the medium holds more than one archive or trailing garbage"
            )
        return t


def check_hash_table(
    t: R.Trailer, h: R.Header, where: str, unsealer: Unsealer | None = None
) -> HashTable:
    """Decode the trailer's block hash table (opened with ``unsealer`` when ENCRYPTED) and check
    its state digest (keyed with the chain hash key when ENCRYPTED)."""
    entries, key = t.hash_entries, None
    if h.encrypted:
        if unsealer is None:
            raise no_key(where)
        entries, key = unsealer.open_hash_table(t), unsealer.chain_key
    table = HashTable.decode(entries, h.hash_block_size, h.volume_size, where, key)
    actual = table.state_digest()
    if actual != t.state_digest:
        raise CorruptArchive(
            f"{where}: block hash table hashes to state digest {actual.hex()}, the trailer "
            f"records {t.state_digest.hex()}; the archive is damaged"
        )
    return table


def check_own_hashes(
    recorded: HashTable, computed: HashTable, covered: Extents, where: str
) -> None:
    """The hash blocks an archive covers hash, from its frames, as its table says."""
    want, got = recorded.select(covered), computed.select(covered)
    if not want.equals(got):
        at = want.first_difference(got)
        raise CorruptArchive(
            f"{where}: hash block {at} (volume offset {(at or 0) * recorded.hash_block_size}) "
            "does not hash as the block hash table records; the archive is damaged"
        )


def check_index_matches(
    index: np.ndarray, offsets: list[int], stored: list[int], codecs: list[int], where: str
) -> None:
    """The trailer's frame index names each frame as read: offset, stored length and codec."""
    for field, actual in (("offset", offsets), ("stored", stored), ("codec", codecs)):
        recorded = index[field].tolist()
        if recorded != actual:
            seq = next(i for i, (a, b) in enumerate(zip(recorded, actual, strict=True)) if a != b)
            name = {"offset": "archive offset", "stored": "stored length", "codec": "codec"}[field]
            raise CorruptArchive(
                f"{where}: the trailer's frame index gives frame {seq} {name} {recorded[seq]}, "
                f"the frame read has {actual[seq]}; the archive is damaged"
            )


class _Buffers:
    """Equal buffers handed out and back by several threads (``frames(reuse=True)``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def get(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size + LINE)  # room to place a read (volpack/buffers.py)

    def put(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)


class Scratch(threading.local):
    """Per thread, the buffer a sealed frame given as immutable bytes is opened into (reused: a
    fresh 4 MiB per frame costs a page fault per 4 KiB)."""

    buf: bytearray | None = None


def open_frame(
    unsealer: Unsealer | None,
    dec: Any,
    fh: R.FrameHeader,
    stored: bytes | bytearray | memoryview,
    where: str,
    seed: int,
    scratch: Scratch | None = None,
    out: memoryview | bytearray | None = None,
) -> memoryview:
    """An ENCRYPTED frame: its checksum over the sealed bytes (damage, no key needed), then with
    ``unsealer`` its tag at its own position and its raw bytes; without (a public read) the
    sealed bytes as they are. Writable ``stored`` bytes are handed over: they are opened in
    place (no second buffer), so the caller must not reuse them. Read-only bytes are opened
    into ``scratch`` (see Scratch) or a fresh buffer. A zstd frame decompresses into ``out``
    (see decode_frame_payload) when given."""
    actual = R.checksum(stored, seed)
    if actual != fh.raw_checksum:
        raise CorruptArchive(
            f"{where}: frame {fh.seq} checksum of its sealed bytes {actual:#018x}, recorded "
            f"{fh.raw_checksum:#018x}; the archive is damaged (or the frame was moved from "
            "another position or archive)"
        )
    if unsealer is None:
        return memoryview(stored)
    n = max(len(stored) - R.SEAL_TAG, 0)
    buf: bytes | bytearray | memoryview
    if not memoryview(stored).readonly:
        buf = stored  # both ciphers are stream ciphers: opened in place, byte by byte
    else:
        buf = scratch.buf if scratch is not None and scratch.buf is not None else bytearray(0)
        if len(buf) < n:
            buf = bytearray(n)
    plain = memoryview(buf)[:n]
    unsealer.open_frame_into(fh.seq, fh, stored, plain)
    if fh.codec == R.CODEC_ZSTD:
        raw: bytes | memoryview = _decompress(dec, fh, plain, where, out)
        if scratch is not None and isinstance(buf, bytearray) and buf is not stored:
            scratch.buf = buf  # only read from: the thread's next frame opens into it
    else:
        raw = plain  # handed to the caller: the thread takes another buffer next time
        if scratch is not None and buf is not stored:
            scratch.buf = None
    if len(raw) != fh.raw_length:
        raise CorruptArchive(
            f"{where}: frame {fh.seq} holds {len(raw)} bytes, expected {fh.raw_length}"
        )
    return memoryview(raw)


def _decompress(
    dec: Any,
    fh: R.FrameHeader,
    stored: memoryview | bytes | bytearray,
    where: str,
    out: memoryview | bytearray | None,
) -> bytes | memoryview:
    """zstd frame ``stored`` decompressed: into ``out`` (more than ``fh.raw_length`` bytes long,
    so that output running long shows) when given, else into new bytes."""
    import zstandard

    try:
        if out is None:
            data: bytes = dec.decompress(stored, max_output_size=fh.raw_length)
            return data
        view = memoryview(out)[: fh.raw_length + 1]
        done = 0
        with dec.stream_reader(stored, read_size=max(len(stored), 1)) as stream:
            while done < len(view) and (got := stream.readinto(view[done:])):
                done += got
        return view[:done]
    except zstandard.ZstdError as exc:
        raise CorruptArchive(
            f"{where}: frame {fh.seq} does not decompress ({exc}); the archive is damaged"
        ) from None


def decode_frame_payload(
    dec: Any,
    fh: R.FrameHeader,
    stored: memoryview | bytes | bytearray,
    where: str,
    seed: int,
    out: memoryview | bytearray | None = None,
) -> memoryview:
    """Decompress (when needed; into ``out`` when given, see _decompress) and check a frame's
    raw bytes against its checksum, computed with ``seed`` (R.frame_seed: its archive and
    position; 0 in a 1.0 archive)."""
    if fh.codec == R.CODEC_ZSTD:
        raw: memoryview | bytes | bytearray = _decompress(dec, fh, stored, where, out)
    else:
        raw = stored
    if len(raw) != fh.raw_length:
        raise CorruptArchive(
            f"{where}: frame {fh.seq} holds {len(raw)} bytes, expected {fh.raw_length}"
        )
    actual = R.checksum(raw, seed)
    if actual != fh.raw_checksum:
        raise CorruptArchive(
            f"{where}: frame {fh.seq} checksum {actual:#018x}, recorded "
            f"{fh.raw_checksum:#018x}; the archive is damaged (or the frame was moved from another "
            "position or archive)"
        )
    return memoryview(raw)
