"""Random access to an archive through its frame index: footer → trailer → tables → index.

Reads only what it needs with ranged reads (files, S3), keeps a bounded LRU of decoded frames,
and serves volume bytes: used ranges through the address table, unused ranges as zeros without
touching the medium. Thread-safe. Used by info, restore's pre-check, serve and catalog rebuild.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np

from volpack.buffers import LINE, place
from volpack.compact.table import AddressTable
from volpack.errors import CorruptArchive, IncompleteArchive, MediumError, UsageError
from volpack.extents import Extents
from volpack.format import records as R
from volpack.format.description import ArchiveDescription
from volpack.format.reader import (
    Scratch,
    check_hash_table,
    decode_frame_payload,
    no_key,
    open_frame,
    parse_head_records,
)
from volpack.media import open_reader
from volpack.media.base import MediumReader
from volpack.physmap import PhysicalMap

if TYPE_CHECKING:
    from volpack.format.keyring import Keyring

_FIRST_READ = 8 << 10  # holds the head (header and tables) of most archives in one ranged read
DEFAULT_CACHE = 64 << 20  # decoded frames kept per archive (16 frames of the default 4 MiB)
_ZERO = memoryview(bytes(1 << 20))


class _Recycled:
    """Frame buffers of one size, used again once nothing refers to them. A decoded frame leaves
    the cache while others may still hold views of it (an NBD reply being sent, a chain read's
    window), so a buffer is handed out again only when its reference count shows no holder:
    every view of a bytearray keeps one reference to it. Fresh buffers cost a page fault per
    4 KiB, and the kernel's copy into the page cache of bytes in pages not yet touched retries
    (a 10-link chain restore's kernel time: 1.92 s with fresh buffers, 1.68 s reused).
    At most ``keep`` buffers are kept; past that, busy ones are allocated and let go."""

    def __init__(self, size: int, keep: int) -> None:
        self.size, self.keep = size, keep
        self._bufs: list[bytearray] = []
        self._lock = threading.Lock()
        # The count of a buffer only a list holds, measured as ``get`` measures (the list's
        # reference, the loop's and the call's argument), not assumed.
        self._unheld = 0
        for probe in [bytearray(0)]:
            self._unheld = sys.getrefcount(probe)

    def get(self) -> bytearray:
        with self._lock:
            for buf in self._bufs:
                if sys.getrefcount(buf) <= self._unheld:
                    return buf
            buf = bytearray(self.size + LINE)  # room to place a read (volpack/buffers.py)
            if len(self._bufs) < self.keep:
                self._bufs.append(buf)
            return buf


def zero_views(views: list[memoryview], n: int) -> None:
    """Append ``n`` zero bytes to ``views`` as slices of one shared zero buffer."""
    while n > 0:
        views.append(_ZERO[: min(n, len(_ZERO))])
        n -= len(_ZERO)


class Archive:
    """An archive opened for random access (see module docstring)."""

    def __init__(
        self,
        medium: MediumReader,
        *,
        cache_bytes: int = DEFAULT_CACHE,
        keyring: Keyring | None = None,
        public: bool = False,
    ) -> None:
        """``keyring`` opens an encrypted archive; without one, ``public`` opens it with only
        the checks that need no key (tables and hash table then empty, frames unreadable)."""
        self.medium = medium
        self.url = medium.url
        size = medium.size
        if size is None:
            raise MediumError(
                f"{self.url}: a stream cannot be opened for random access; use a "
                "file or URL (or pipe it to 'volpack restore -')"
            )
        self.archive_size = size
        if size < R.HEADER_SIZE + R.FOOTER_SIZE:
            head = medium.read_at(0, min(size, R.HEADER_SIZE))
            R.Header.decode(head + bytes(R.HEADER_SIZE - len(head)), f"{self.url} at offset 0")
            raise IncompleteArchive(
                f"{self.url}: incomplete archive: {size} bytes, shorter than "
                "a header and footer; use a complete copy"
            )
        # One read usually holds the whole head (header and tables), checked against the
        # trailer's copies below; the header is decoded first so that "not an archive" wins over
        # "incomplete".
        first = medium.read_at(0, min(size, _FIRST_READ))
        head_header = R.Header.decode(first[: R.HEADER_SIZE], f"{self.url} at offset 0")
        foot_at = size - R.FOOTER_SIZE
        footer = R.decode_footer(
            medium.read_at(foot_at, R.FOOTER_SIZE), f"{self.url} at offset {foot_at}", size
        )
        where = f"{self.url} at offset {footer.trailer_offset}"
        trailer_bytes = medium.read_at(footer.trailer_offset, footer.trailer_length)
        plen, psum = R.decode_record_header(
            trailer_bytes[: R.RECORD_SIZE], where, R.TAG_TRLR, footer.trailer_length
        )
        if plen != footer.trailer_length - R.RECORD_SIZE:
            raise CorruptArchive(
                f"{where}: trailer payload {plen} B, footer says "
                f"{footer.trailer_length - R.RECORD_SIZE} B"
            )
        payload = trailer_bytes[R.RECORD_SIZE :]
        R.check_payload(payload, psum, where, R.TAG_TRLR)
        if len(payload) < R.TRAILER_FIXED.size + R.HEADER_SIZE:
            raise CorruptArchive(f"{where}: trailer of {len(payload)} bytes is too short")
        # The header copy sits at the same place in both trailer layouts and says which applies.
        header = R.Header.decode(
            payload[R.TRAILER_FIXED.size : R.TRAILER_FIXED.size + R.HEADER_SIZE], where
        )
        t = R.split_trailer(payload, where, header.bound, header.hashed, header.encrypted)
        if header.uuid != footer.uuid or head_header.uuid != header.uuid:
            raise CorruptArchive(
                f"{where}: header uuid {header.uuid} differs from footer "
                f"{footer.uuid} / head {head_header.uuid}"
            )
        if t.trailer_offset != footer.trailer_offset:
            raise CorruptArchive(
                f"{where}: trailer says it starts at {t.trailer_offset}, footer says "
                f"{footer.trailer_offset}"
            )
        copies = t.header_bytes + t.head_records
        if header.bound:
            head_hash = blake3.blake3(copies).digest()
            if head_hash != t.head_hash:
                raise CorruptArchive(
                    f"{where}: the trailer's copies of header and tables hash to "
                    f"{head_hash.hex()}, its head hash is {t.head_hash.hex()}; the archive is "
                    "damaged"
                )
        tables = parse_head_records(
            t.head_records,
            header,
            where,
            header_bytes=t.header_bytes,
            keyring=keyring,
            public=public,
        )
        self.unsealer = tables.unsealer
        self.sealed = tables.sealed  # read without a key: only public fields are known
        self.key_slots = tables.key_slots  # ENCRYPTED: slot fingerprints (public)
        desc, pmap, table = tables.desc, tables.pmap, tables.table
        if tables.length != len(t.head_records):
            raise CorruptArchive(
                f"{where}: {len(t.head_records) - tables.length} stray bytes after the table copies"
            )
        # HASHED: the state this archive leaves, checked against its state digest here; whether
        # the frames hash so is verify's job (it reads every frame).
        self.hash_table = (
            check_hash_table(t, header, where, tables.unsealer)
            if header.hashed and not tables.sealed
            else None
        )
        self.zeros: Extents = tables.zeros
        self.covered: Extents = tables.covered  # hash blocks whose entries are this archive's
        self.whole: Extents | None = tables.whole  # of those, the ones its frames fill
        if t.frame_count != header.frame_count or t.dense_size != header.dense_size:
            raise CorruptArchive(
                f"{where}: trailer counts {t.frame_count} frames / "
                f"{t.dense_size} B disagree with the header"
            )
        head_length = len(copies)
        data_end = footer.trailer_offset
        if head_length > data_end:
            raise CorruptArchive(
                f"{where}: head of {head_length} bytes runs past the trailer at {data_end}"
            )
        head = first[:head_length]
        if len(head) < head_length:
            head += medium.read_at(len(head), head_length - len(head))
        if head != copies:
            u8 = np.uint8
            at = int(np.flatnonzero(np.frombuffer(head, u8) != np.frombuffer(copies, u8))[0])
            raise CorruptArchive(
                f"{self.url} at offset {at}: the head differs from the trailer's copy of it "
                f"(byte {head[at]:#04x}, copy {copies[at]:#04x}); the archive is damaged"
            )
        offsets = t.index["offset"].astype(np.int64)
        stored = t.index["stored"].astype(np.int64)
        ends = offsets + R.FRAME_HEADER_SIZE + stored
        # No gaps (docs/format.md section 1): frame 0 starts where the head ends, each frame
        # where the previous one ends, and the last one ends where the trailer starts.
        if t.frame_count and (
            int(offsets[0]) != head_length
            or int(ends[-1]) != data_end
            or bool((offsets[1:] != ends[:-1]).any())
        ):
            raise CorruptArchive(f"{where}: frame index does not tile the data section")
        if not t.frame_count and head_length != data_end:
            raise CorruptArchive(
                f"{where}: no frames, but the trailer starts at {data_end}, not where the head "
                f"ends ({head_length})"
            )
        if int(stored.sum()) != t.stored_bytes:
            raise CorruptArchive(
                f"{where}: trailer says {t.stored_bytes} stored bytes, its frame index "
                f"{int(stored.sum())}"
            )
        self.header = header
        self.trailer = t
        self.footer = footer
        # The DESC object as recorded (the catalog keeps it so), and its typed reading.
        self.description: dict[str, Any] = desc
        self.desc = ArchiveDescription.from_json(desc)
        self.physical_map: PhysicalMap = pmap
        self.devices = pmap.devices
        self.table: AddressTable = table
        self._offsets = offsets
        self._stored = stored
        self._codecs = t.index["codec"]
        self._seed_uuid = header.seed_uuid
        self._cache: OrderedDict[int, memoryview] = OrderedDict()
        # Decoded frames kept, by bytes so that large frames do not multiply memory; one at least.
        self._cache_frames = max(1, cache_bytes // header.frame_size)
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Event] = {}
        self._scratch = Scratch()  # per loading thread: where sealed frames are opened
        # Frames read and decoded into reused buffers where the medium reads into one (files):
        # the cache's, a chain read's window ahead and a few held by readers.
        self._read_into = getattr(medium, "read_at_into", None)
        self._buffers = _Recycled(
            R.FRAME_HEADER_SIZE + header.frame_size + R.SEAL_TAG + 1, self._cache_frames + 16
        )

    # -- summary -------------------------------------------------------------------------------
    @property
    def uuid(self) -> str:
        return self.header.uuid

    @property
    def size(self) -> int:
        return self.header.volume_size

    @property
    def block_size(self) -> int:
        return self.header.block_size

    @property
    def frame_size(self) -> int:
        return self.header.frame_size

    @property
    def used(self) -> Extents:
        return self.table.used()

    def used_bytes(self) -> Extents:
        return self.table.used_bytes(self.size)

    @property
    def digest(self) -> str:
        return self.trailer.digest.hex()

    @property
    def state_digest(self) -> str:
        """The digest of the volume state this archive leaves ('' before format 1.2)."""
        return self.trailer.state_digest.hex()

    @property
    def incremental(self) -> bool:
        return self.header.incremental

    @property
    def stored_bytes(self) -> int:
        return self.trailer.stored_bytes

    @property
    def cache_bytes(self) -> int:
        """Decoded frame bytes this archive keeps at most."""
        return self._cache_frames * self.header.frame_size

    def limit_cache(self, cache_bytes: int) -> None:
        """Keep at most ``cache_bytes`` of decoded frames from now on (one frame at least): the
        archives of a chain share one budget instead of each keeping its own."""
        with self._lock:
            self._cache_frames = max(1, cache_bytes // self.header.frame_size)
            while len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)

    def share_buffers(self, other: Archive) -> None:
        """Read and decode into ``other``'s frame buffers from now on (same frame size): the
        links of a chain then warm one set instead of one each (fresh buffers cost a page fault
        per 4 KiB: a 10-link merge faulted 92 MiB in, 23 buffers for 2 decoding threads)."""
        assert other._buffers.size == self._buffers.size, "shared only at equal frame sizes"
        self._buffers = other._buffers

    # -- data ----------------------------------------------------------------------------------
    def frame(self, seq: int) -> memoryview:
        """Decoded, checked raw bytes of frame ``seq`` (cached). Concurrent readers of one frame
        wait for a single load instead of each decoding it (NBD clients read adjacent pieces of
        a frame on several connections at once)."""
        while True:
            with self._lock:
                hit = self._cache.get(seq)
                if hit is not None:
                    self._cache.move_to_end(seq)
                    return hit
                loading = self._loading.get(seq)
                if loading is None:
                    loading = self._loading[seq] = threading.Event()
                    break
            loading.wait()  # then look again: loaded, or failed (and this thread tries itself)
        try:
            raw = self._load(seq)
            with self._lock:
                self._cache[seq] = raw
                while len(self._cache) > self._cache_frames:
                    self._cache.popitem(last=False)
            return raw
        finally:
            with self._lock:
                del self._loading[seq]
            loading.set()

    def _load(self, seq: int) -> memoryview:
        import zstandard

        off = int(self._offsets[seq])
        length = R.FRAME_HEADER_SIZE + int(self._stored[seq])
        data: bytes | memoryview
        if self._read_into is not None and length <= self._buffers.size:
            data = place(self._buffers.get(), length, off)
            self._read_into(off, data)
        else:
            data = self.medium.read_at(off, length)
        where = f"{self.url} at offset {off}"
        fh = R.decode_frame_header(data[: R.FRAME_HEADER_SIZE], self.header, seq, where)
        if fh.stored_length != int(self._stored[seq]) or fh.codec != int(self._codecs[seq]):
            raise CorruptArchive(
                f"{where}: frame {seq} stored length {fh.stored_length} codec {fh.codec}, index "
                f"says {int(self._stored[seq])} codec {int(self._codecs[seq])}"
            )
        # A view, not a copy: for raw frames it points into the bytes just read; a zstd frame
        # decompresses into a buffer of its own, and the one read into is free again at once.
        seed = R.frame_seed(self._seed_uuid, seq, fh.dense_offset)
        stored = memoryview(data)[R.FRAME_HEADER_SIZE :]
        out = self._buffers.get() if fh.codec == R.CODEC_ZSTD else None
        if self.header.encrypted:
            if self.unsealer is None:
                raise no_key(self.url)
            return open_frame(
                self.unsealer,
                zstandard.ZstdDecompressor(),
                fh,
                stored,
                where,
                seed,
                self._scratch,
                out,
            )
        return decode_frame_payload(zstandard.ZstdDecompressor(), fh, stored, where, seed, out)

    def spans(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """Where volume bytes ``[offset, offset+length)`` are, in order, without reading them:
        ``(seq, within, take)`` for ``take`` bytes at ``within`` of frame ``seq``, or
        ``(-1, 0, take)`` for unused (zero) bytes. Lets readers decode frames ahead of use."""
        if self.sealed:  # opened without a key: its tables are not known
            raise no_key(self.url)
        if offset < 0 or length < 0 or offset + length > self.size:
            raise UsageError(
                f"{self.url}: read of {length} bytes at {offset} is outside the volume of "
                f"{self.size} bytes"
            )
        spans: list[tuple[int, int, int]] = []
        pos = offset
        vs, lens, ds = self.table.volume_to_dense(offset, offset + length)
        fs = self.frame_size
        for v, n, d in zip(vs.tolist(), lens.tolist(), ds.tolist(), strict=True):
            if v > pos:
                spans.append((-1, 0, v - pos))
            pos = v + n
            while n > 0:
                seq, within = divmod(d, fs)
                take = min(n, fs - within)
                spans.append((seq, within, take))
                d, n = d + take, n - take
        if offset + length > pos:
            spans.append((-1, 0, offset + length - pos))
        return spans

    def read_views(self, offset: int, length: int) -> list[memoryview]:
        """Volume bytes ``[offset, offset+length)`` as consecutive views, without copying: slices
        of cached frames for used ranges, slices of a shared zero buffer for unused ones. The
        views keep their frames alive, so a reply can be sent after the cache moved on."""
        views: list[memoryview] = []
        for seq, within, take in self.spans(offset, length):
            if seq < 0:
                zero_views(views, take)
            else:
                views.append(self.frame(seq)[within : within + take])
        return views

    def read(self, offset: int, length: int) -> bytes:
        """Volume bytes ``[offset, offset+length)``; zeros where nothing is used."""
        return b"".join(self.read_views(offset, length))

    def close(self) -> None:
        self.medium.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_archive(
    url: str,
    *,
    cache_bytes: int = DEFAULT_CACHE,
    keyring: Keyring | None = None,
    public: bool = False,
) -> Archive:
    """Open the archive at ``url`` for random access (footer → trailer → tables → index); an
    encrypted one with ``keyring`` (or, ``public``, with only the checks that need no key)."""
    medium = open_reader(url, random_access=True)
    try:
        return Archive(medium, cache_bytes=cache_bytes, keyring=keyring, public=public)
    except BaseException:
        medium.close()
        raise
