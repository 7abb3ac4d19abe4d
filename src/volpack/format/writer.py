"""ArchiveWriter: header and tables, then the whole dense volume as frames, then trailer and footer.

It never looks at block usage: it asks a producer for dense bytes frame by frame, or (a head
written last, into room the medium left) takes frames from a filler that learns the address
table as it goes. Producing (reading the source) with encoding (checksum + zstd), a few frames at
once in a small thread pool, and writing (medium, in order) overlap over a fixed ring of
buffers, so memory stays bounded. The digest covers the metadata stream only (format 1.4,
METADIGEST): head, frame headers, trailer; the frames' data is hashed once, for the block hash table.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import numpy as np

from volpack.buffers import LINE, buffer
from volpack.format import records as R
from volpack.format.hashtable import HashBuilder, HashTable
from volpack.media.base import MediumWriter

if TYPE_CHECKING:
    from volpack.format.sealing import Sealing

# produce(seq, view): fill ``view`` (exactly the frame's raw length) with dense bytes. Called
# from several threads at once, for different frames.
Producer = Callable[[int, memoryview], None]
Progress = Callable[[int], None]  # called with dense bytes done so far
# fill(raw) fills the next frame's raw bytes from its start, in frame order, from one thread: its
# length (0: no frame left) and the volume runs in it for the hash table, as (volume offsets,
# lengths, offsets in ``raw``). A frame shorter than ``raw`` is the last one.
Filler = Callable[[memoryview], tuple[int, tuple[list[int], list[int], list[int]]]]

_HDR = R.FRAME_HEADER_SIZE


class _Turns:
    """Lets pool threads take one step per frame in frame order (frames are handed to the hash
    table in order). A failed frame breaks the line: every later waiter raises its error."""

    def __init__(self) -> None:
        self._next = 0
        self._failure: BaseException | None = None
        self._cond = threading.Condition()

    def wait(self, seq: int) -> None:
        with self._cond:
            while self._next != seq and self._failure is None:
                self._cond.wait()
            if self._failure is not None:
                raise self._failure

    def done(self, seq: int) -> None:
        with self._cond:
            self._next = seq + 1
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = exc
            self._cond.notify_all()


# (frame header and stored bytes to write, codec) of one encoded frame
_Encoded = tuple[memoryview, int]


@dataclass(frozen=True, slots=True)
class WriteResult:
    archive_size: int
    stored_bytes: int
    frame_count: int
    digest: str
    state_digest: str


class _Encoder:
    """Per-thread zstd compressors (a ZstdCompressor must not be shared between threads), each
    compressing into a buffer of its thread: a fresh output per frame cost page faults, and
    outputs of every size left the heap fragmented (RSS)."""

    def __init__(self, codec: int, level: int, seed_uuid: bytes | None, frame_size: int) -> None:
        self.codec, self.level = codec, level
        self.seed_uuid = seed_uuid
        self.frame_size = frame_size
        self._local = threading.local()

    def encode(self, seq: int, buf: memoryview, raw_len: int, hashed: Future) -> _Encoded:
        """Frame ``seq`` from its raw bytes in ``buf[48:]``: its header in ``buf[:48]`` and,
        when zstd shrinks it, its compressed bytes over the raw ones once ``hashed`` is done."""
        view = memoryview(buf)
        raw = view[_HDR : _HDR + raw_len]
        doff = seq * self.frame_size
        raw_sum = R.checksum(raw, R.frame_seed(self.seed_uuid, seq, doff))
        packed = self.compress(raw)
        if packed is None:
            view[:_HDR] = R.encode_frame_header(R.CODEC_NONE, seq, doff, raw_len, raw_len, raw_sum)
            return view[: _HDR + raw_len], R.CODEC_NONE
        n = len(packed)
        hashed.result()  # the raw bytes are hashed: they may be overwritten now
        view[_HDR : _HDR + n] = packed
        view[:_HDR] = R.encode_frame_header(R.CODEC_ZSTD, seq, doff, raw_len, n, raw_sum)
        return view[: _HDR + n], R.CODEC_ZSTD

    def compress(self, raw: memoryview) -> memoryview | None:
        """zstd of ``raw`` in this thread's buffer when the codec is zstd and it shrinks, else
        None (stored raw). Valid until this thread's next call."""
        if self.codec != R.CODEC_ZSTD or not len(raw):
            return None
        local = self._local
        comp = getattr(local, "c", None)
        if comp is None:
            import zstandard

            comp = local.c = zstandard.ZstdCompressor(level=self.level)
            local.out = bytearray(self.frame_size)
        # Output that reaches the raw length does not shrink it: stop there (docs/format.md
        # section 4: zstd only when the stored bytes are fewer than the raw ones).
        out = memoryview(local.out)[: len(raw)]
        done = 0
        with comp.stream_reader(raw, size=len(raw), read_size=len(raw)) as stream:
            while done < len(out):
                got = stream.readinto(out[done:])
                if not got:
                    return out[:done]
                done += got
        return None


class ArchiveWriter:
    def __init__(
        self,
        medium: MediumWriter,
        header: R.Header,
        head_records: bytes,
        threads: int = 2,
        *,
        hashes: HashBuilder,
        state: Callable[[HashTable], HashTable] | None = None,
        sealing: Sealing | None = None,
        room: int = 0,
    ) -> None:
        """``hashes`` is fed every frame in order; ``state`` turns the table of this archive's
        own data into the table of the state it leaves (an incremental applies it to its base's).
        ``sealing`` seals head records, frames and hash table (an ENCRYPTED ``header``).

        With ``room`` (bytes the medium left at its start, ``MediumWriter.leave_room``) the head
        is written last: ``header`` is provisional, its ``used_blocks`` an upper bound, and
        ``head_records`` are given to :meth:`settle_head` after :meth:`write_stream`."""
        minor = R.MINOR_ENCRYPTED if header.encrypted else R.MINOR
        if (
            not header.bound
            or not header.hashed
            or not header.meta_digest
            or header.minor != minor
            or header.encrypted != (sealing is not None)
        ):
            # A programming error, not bad input: the writer implements only the newest rules.
            raise ValueError(f"ArchiveWriter writes format {R.MAJOR}.{R.MINOR} only")
        self.hashes = hashes
        self.state = state
        self.hash_table: HashTable | None = None
        self.medium = medium
        self.header = header
        self.sealing = sealing
        self.threads = max(1, threads)
        self._digest = blake3.blake3(max_threads=1)
        self.room = room
        self._offset = room
        self._stored = 0
        self._index = np.zeros(header.frame_count, R.INDEX_DTYPE)
        # With the head written last, the digest takes the frame headers only once the head is
        # known: each frame's checksum is kept to rebuild its header then (8 bytes a frame).
        self._sums = np.zeros(header.frame_count if room else 0, np.uint64)
        self._frames = 0  # frames written
        self._header_bytes = header.encode()
        # DESC + PMAP + ATAB (+ ZTAB) records; sealed behind a KEYS record when ENCRYPTED
        self.head_records = (
            head_records if sealing is None else sealing.seal_head(self._header_bytes, head_records)
        )

    def _emit(self, data: memoryview | bytes) -> None:
        self._digest.update(data)
        self.medium.write(data)
        self._offset += len(data)

    def write_head(self) -> None:
        self._emit(self._header_bytes)
        self._emit(self.head_records)
        # Media that repeat the tables (each tape volume) learn here where they end.
        self.medium.mark_head_end()

    def write_frames(self, produce: Producer, progress: Progress | None = None) -> None:
        """Every frame of the header's dense volume, ``produce`` called in the pool (frames are
        read two at a time)."""
        h = self.header
        turns = _Turns()

        def make(seq: int, raw: memoryview, tabler: ThreadPoolExecutor) -> Future:
            try:
                produce(seq, raw)
                turns.wait(seq)
                hashed = tabler.submit(self.hashes.feed, seq * h.frame_size, raw)
                turns.done(seq)
            except BaseException as exc:
                turns.fail(exc)  # later frames must not wait for this one's turn
                raise
            return hashed

        self._pump(lambda seq, raw, tabler: h.frame_length(seq), make, progress)

    def write_stream(self, fill: Filler, progress: Progress | None = None) -> int:
        """Frames from ``fill`` until it has none left, at most the provisional header's
        ``frame_count``; the number written. ``fill`` runs in the calling thread, in order."""
        hashing: dict[int, Future] = {}
        frame_size = self.header.frame_size

        def start(seq: int, raw: memoryview, tabler: ThreadPoolExecutor) -> int:
            n, runs = fill(raw)
            if n % 8 or n > frame_size:  # a filler bug, never bad input
                raise ValueError(f"frame {seq}: {n} bytes filled")
            if n:
                # Filled in frame order by this thread, so handed to the table in order.
                hashing[seq] = tabler.submit(self.hashes.feed_runs, raw[:n], *runs)
            return n

        self._pump(start, lambda seq, raw, tabler: hashing.pop(seq), progress)
        return self._frames

    def _pump(
        self,
        start: Callable[[int, memoryview, ThreadPoolExecutor], int],
        make: Callable[[int, memoryview, ThreadPoolExecutor], Future],
        progress: Progress | None,
    ) -> None:
        """Frames 0, 1 … up to the header's ``frame_count`` while ``start(seq, raw, tabler)``,
        called in this thread, gives a raw length (0: no frame left). Then, in the pool,
        ``make(seq, raw, tabler)`` has the raw bytes filled and handed to the hash table (in
        frame order), returning that future; the frame is encoded there, and written in order
        by one thread."""
        h = self.header
        count = h.frame_count
        if count == 0:
            return
        encoder = _Encoder(h.codec, h.codec_level, h.seed_uuid, h.frame_size)
        sealed = self.sealing is not None
        # Reading the source (page-cache copies) is the longest stage without compression, so
        # frames are produced and encoded in the same pool: two reads run at once. Each frame
        # is handed to the hash-table thread as soon as it is read (in frame order) and
        # compressed meanwhile; its compressed or sealed bytes then go over its raw ones once
        # they are hashed. One buffer a slot, reused: no allocation and no page fault a frame.
        depth = self.threads * 2 + 2
        # The raw bytes, after the frame header, start on a cache line: source reads at
        # block-aligned offsets then copy at full speed (volpack/buffers.py).
        free: queue.Queue[memoryview] = queue.Queue()
        size = _HDR + h.frame_size + (R.SEAL_TAG if sealed else 0)
        for _ in range(min(depth, count)):
            free.put(buffer(size, phase=-_HDR % LINE))
        pending: queue.Queue[tuple[Future, memoryview, int, int] | None] = queue.Queue()
        failure: list[BaseException] = []

        def writer() -> None:
            done = 0
            try:
                while (item := pending.get()) is not None:
                    fut, buf, seq, raw_len = item
                    (frame, codec), hashed = fut.result()
                    stored = len(frame) - _HDR
                    self._index[seq] = (self._offset, stored, codec, b"")
                    # The digest takes the frame header only (it carries the frame checksum);
                    # with the head still to come, its checksum is kept for settle_head.
                    if self.room:
                        self._sums[seq] = int.from_bytes(frame[32:40], "little")
                    else:
                        self._digest.update(frame[:_HDR])
                    self.medium.write(frame)
                    self._offset += len(frame)
                    hashed.result()  # a raw frame may still be hashed while it is written
                    self._stored += stored
                    self._frames = seq + 1
                    done += raw_len
                    free.put(buf)
                    if progress is not None:
                        progress(done)
            except BaseException as exc:  # handed to the calling thread, which re-raises
                failure.append(exc)
                free.put(memoryview(b""))  # wake the producer if it waits for a slot

        def encode(seq: int, buf: memoryview, raw_len: int) -> tuple[_Encoded, Future]:
            hashed = make(seq, memoryview(buf)[_HDR : _HDR + raw_len], tabler)
            if sealed:
                return self._seal_frame(seq, buf, raw_len, encoder, hashed), hashed
            return encoder.encode(seq, buf, raw_len, hashed), hashed

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vp-frame")
        tabler = ThreadPoolExecutor(1, thread_name_prefix="vp-hashtable")
        thread = threading.Thread(target=writer, name="vp-write", daemon=True)
        thread.start()
        try:
            for seq in range(count):
                buf = free.get()
                if failure:
                    break
                raw_len = start(seq, memoryview(buf)[_HDR : _HDR + h.frame_size], tabler)
                if not raw_len:
                    break
                pending.put((pool.submit(encode, seq, buf, raw_len), buf, seq, raw_len))
        finally:
            pending.put(None)
            thread.join()
            pool.shutdown(wait=True)
            tabler.shutdown(wait=True)
        if failure:
            raise failure[0]

    def _seal_frame(
        self, seq: int, buf: memoryview, raw_len: int, encoder: _Encoder, hashed: Future
    ) -> _Encoded:
        """Frame ``seq`` compressed when that shrinks it and sealed over its raw bytes in
        ``buf`` once ``hashed`` is done: its frame header and sealed bytes, the checksum over
        the sealed bytes. Runs in the pool, in any frame order: the nonce comes from ``seq``,
        and the sealer refuses a repeat."""
        assert self.sealing is not None
        h = self.header
        out = memoryview(buf)
        raw = out[_HDR : _HDR + raw_len]
        packed = encoder.compress(raw)
        codec = R.CODEC_NONE if packed is None else R.CODEC_ZSTD
        hashed.result()  # the raw bytes are hashed: they may be overwritten now
        # Without zstd the plaintext is sealed in place (AES-GCM and ChaCha20-Poly1305 are
        # stream ciphers: each output byte is written after its input byte is read).
        plain = raw if packed is None else packed
        n = self.sealing.seal_frame_into(seq, codec, raw_len, plain, out[_HDR:])
        doff = seq * h.frame_size
        checksum = R.checksum(out[_HDR : _HDR + n], R.frame_seed(h.seed_uuid, seq, doff))
        out[:_HDR] = R.encode_frame_header(codec, seq, doff, raw_len, n, checksum)
        return out[: _HDR + n], codec

    def settle_head(self, header: R.Header, head_records: bytes) -> None:
        """The head of an archive whose frames are written (``room``): ``header`` is the
        provisional one with the real ``used_blocks``, and header with ``head_records`` must
        fill the room exactly. The digest takes the head, then every frame header."""
        old = self.header
        if (
            not self.room
            or self.sealing is not None
            or dataclasses.replace(old, used_blocks=header.used_blocks) != header
            or header.frame_count != self._frames
        ):
            raise ValueError("settle_head: not the provisional header of the frames written")
        self.header = header
        self._header_bytes = header.encode()
        self.head_records = head_records
        if len(self._header_bytes) + len(head_records) != self.room:
            length = len(self._header_bytes) + len(head_records)
            raise ValueError(f"settle_head: head of {length} B for a room of {self.room} B")
        self._index = self._index[: self._frames]
        self._digest.update(self._header_bytes)
        self._digest.update(head_records)
        index, fs = self._index, header.frame_size
        for seq in range(self._frames):
            raw_len = header.frame_length(seq)
            stored, codec = int(index["stored"][seq]), int(index["codec"][seq])
            raw_sum = int(self._sums[seq])
            header_bytes = R.encode_frame_header(codec, seq, seq * fs, raw_len, stored, raw_sum)
            self._digest.update(header_bytes)
        self.medium.write_room(self._header_bytes + head_records)

    def finish(self) -> WriteResult:
        """Write trailer and footer; the caller commits the medium."""
        h = self.header
        trailer_offset = self._offset
        head_hash = blake3.blake3(self._header_bytes + self.head_records).digest()
        table = self.hashes.result()
        if self.state is not None:
            table = self.state(table)
        self.hash_table = table
        entries = table.encode()
        if self.sealing is not None:
            count = len(table.entries)
            entries = self.sealing.seal_hash_table(entries, count, table.state_digest())
        body = R.trailer_body(
            R.Trailer(
                frame_count=h.frame_count,
                dense_size=h.dense_size,
                stored_bytes=self._stored,
                trailer_offset=trailer_offset,
                digest=b"",
                header_bytes=self._header_bytes,
                head_records=self.head_records,
                index=self._index,
                head_hash=head_hash,
                hash_entries=entries,
                state_digest=table.state_digest(),
                entries_sealed=self.sealing is not None,
            )
        )
        # The digest covers everything before it but the TRLR record header, whose payload
        # checksum covers the digest (docs/format.md section 5).
        self._digest.update(body)
        digest = self._digest.digest()
        tail = R.encode_tail(h, trailer_offset, body, digest)
        self.medium.write(tail)
        length = trailer_offset + len(tail)
        return WriteResult(
            length, self._stored, h.frame_count, digest.hex(), table.state_digest().hex()
        )
