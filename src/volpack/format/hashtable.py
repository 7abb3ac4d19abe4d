"""Block hash table (format 1.2, HASHED): one 16-byte BLAKE3 per hash block of the volume state an
archive leaves, and the state digest over it; keyed with the chain hash key when ENCRYPTED.

Entries exist only for hash blocks whose bytes are not all zero, sorted by index. The table is
what incrementals compare against, what ``verify --chain`` follows, and what ``restore --apply``
checks a target with. Pure computation: no I/O, no knowledge of sources or media.
"""

from __future__ import annotations

import array
import functools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import blake3
import numpy as np

from volpack.compact.table import AddressTable
from volpack.errors import CorruptArchive
from volpack.extents import Extents

HASH_SIZE = 16
ENTRY_DTYPE = np.dtype([("index", "<u8"), ("hash", "V16")])
HASH_DTYPE = np.dtype("V16")
_SLICE = 1 << 16  # hash blocks looked up at once
_WORDS = np.dtype([("lo", "<u8"), ("hi", "<u8")])  # a hash as two words, for comparing
_STATE = struct.Struct("<16sQI")
_STATE_LABEL = b"volpack state v1"
_ZERO = memoryview(bytes(1 << 20))


def _hasher(key: bytes | None) -> blake3.blake3:
    # Keyed (ENCRYPTED, docs/format.md section 10.7) so hashes confirm no guessed contents.
    return blake3.blake3(max_threads=1) if key is None else blake3.blake3(key=key, max_threads=1)


def block_hash(data: bytes | bytearray | memoryview, key: bytes | None = None) -> bytes:
    """The hash of one hash block's bytes (the last block of a volume may be shorter), keyed with
    the chain hash key ``key`` in an encrypted chain."""
    h = _hasher(key)
    h.update(data)
    return h.digest(HASH_SIZE)


@functools.cache
def zero_hash(length: int, key: bytes | None = None) -> bytes:
    """The hash of ``length`` zero bytes: a hash block with this hash has no entry."""
    h = _hasher(key)
    _feed_zeros(h, length)
    return h.digest(HASH_SIZE)


def _feed_zeros(h: blake3.blake3, n: int) -> None:
    while n > 0:
        take = min(n, len(_ZERO))
        h.update(_ZERO[:take])
        n -= take


@dataclass(frozen=True, slots=True, eq=False)
class HashTable:
    """The block hash table of a volume of ``volume_size`` bytes in ``hash_block_size`` blocks."""

    hash_block_size: int
    volume_size: int
    entries: np.ndarray  # ENTRY_DTYPE, sorted by index, no zero-block entries
    key: bytes | None = field(default=None, repr=False)  # the chain hash key (ENCRYPTED)

    @property
    def hash_blocks(self) -> int:
        return -(-self.volume_size // self.hash_block_size)

    def block_length(self, index: int) -> int:
        return min(self.hash_block_size, self.volume_size - index * self.hash_block_size)

    def encode(self) -> bytes:
        return self.entries.tobytes()

    def state_digest(self) -> bytes:
        """BLAKE3 over the label, volume size, hash block size and the entries (section 5.1)."""
        h = _hasher(self.key)
        h.update(_STATE.pack(_STATE_LABEL, self.volume_size, self.hash_block_size))
        h.update(self.entries.tobytes())
        return h.digest()

    @staticmethod
    def decode(
        data: bytes, hash_block_size: int, volume_size: int, where: str, key: bytes | None = None
    ) -> HashTable:
        n = len(data) // ENTRY_DTYPE.itemsize
        entries = np.frombuffer(data, ENTRY_DTYPE, count=n)
        table = HashTable(hash_block_size, volume_size, entries, key)
        idx = entries["index"]
        if n and (bool((idx[1:] <= idx[:-1]).any()) or int(idx[-1]) >= table.hash_blocks):
            raise CorruptArchive(
                f"{where}: block hash table entries out of order or past hash block "
                f"{table.hash_blocks}; the archive is damaged, restore from another copy"
            )
        return table

    @staticmethod
    def from_pairs(
        hash_block_size: int,
        volume_size: int,
        pairs: Iterable[tuple[int, bytes]],
        key: bytes | None = None,
    ) -> HashTable:
        """Entries from (index, hash) in increasing index order; zero-block hashes dropped."""
        items = list(pairs)
        indices = np.fromiter((i for i, _ in items), np.int64, len(items))
        hashes = np.frombuffer(b"".join(h for _, h in items), HASH_DTYPE)
        return HashTable.from_arrays(hash_block_size, volume_size, indices, hashes, key)

    @staticmethod
    def from_arrays(
        hash_block_size: int,
        volume_size: int,
        indices: np.ndarray,
        hashes: np.ndarray,
        key: bytes | None = None,
    ) -> HashTable:
        """Entries from increasing ``indices`` and their ``hashes`` (``V16``); zero-block hashes
        dropped. Vectorised: a table of a TiB of used data has a million entries."""
        entries = np.empty(len(indices), ENTRY_DTYPE)
        entries["index"] = indices
        entries["hash"] = hashes
        table = HashTable(hash_block_size, volume_size, entries, key)
        zero = table._is_zero(entries)
        if zero.any():
            return HashTable(hash_block_size, volume_size, entries[~zero], key)
        return table

    def _zero_hashes(self, indices: np.ndarray) -> np.ndarray:
        """The hash of an all-zero hash block at each of ``indices`` (``V16``); only the last
        block of the volume can be shorter than the others."""
        out = np.full(len(indices), zero_hash(self.hash_block_size, self.key), HASH_DTYPE)
        if self.volume_size % self.hash_block_size:
            last = self.hash_blocks - 1
            out[indices == last] = zero_hash(self.block_length(last), self.key)
        return out

    def _is_zero(self, entries: np.ndarray) -> np.ndarray:
        """Whether each entry (sorted by index) holds the hash of an all-zero block."""
        words = entries["hash"].view(_WORDS)  # no copy: same item size, any stride
        z = np.frombuffer(zero_hash(self.hash_block_size, self.key), _WORDS)[0]
        zero = (words["lo"] == z["lo"]) & (words["hi"] == z["hi"])
        last = self.hash_blocks - 1
        short = self.block_length(last) != self.hash_block_size
        if short and len(entries) and int(entries["index"][-1]) == last:
            zero[-1] = bytes(entries["hash"][-1]) == zero_hash(self.block_length(last), self.key)
        return zero

    def hash_array(self, indices: np.ndarray) -> np.ndarray:
        """The hash of each hash block in ``indices`` as ``V16`` (zero-block hashes where there
        is no entry); one array operation, not one Python step per block."""
        indices = np.asarray(indices, np.int64)
        if not len(self.entries):
            return self._zero_hashes(indices)
        keys = self.entries["index"].astype(np.int64)
        out = np.empty(len(indices), HASH_DTYPE)
        # In slices, so that the temporaries stay small beside a million-entry table.
        for first in range(0, len(indices), _SLICE):
            part = indices[first : first + _SLICE]
            pos = np.searchsorted(keys, part)
            np.minimum(pos, len(keys) - 1, out=pos)
            got = out[first : first + len(part)]
            got[:] = self.entries["hash"][pos]
            missing = keys[pos] != part
            if missing.any():
                got[missing] = self._zero_hashes(part[missing])
        return out

    def hashes(self, indices: np.ndarray) -> list[bytes]:
        """The hash of each hash block in ``indices`` (zero-block hashes where no entry)."""
        return [bytes(h) for h in self.hash_array(indices)]

    def nonzero(self) -> Extents:
        """Hash blocks with an entry (not all zero), as runs of hash block indices."""
        idx = self.entries["index"].astype(np.int64)
        return Extents.from_arrays(idx, idx + 1)

    def select(self, blocks: Extents) -> HashTable:
        """Only the entries inside ``blocks`` (hash block runs)."""
        idx = self.entries["index"].astype(np.int64)
        lo = np.searchsorted(idx, blocks.starts)
        hi = np.searchsorted(idx, blocks.ends)
        # +1 where a run's entries begin, -1 where they end: inside a run the running sum is 1.
        edge = np.zeros(len(idx) + 1, np.int8)
        np.add.at(edge, lo, 1)
        np.add.at(edge, hi, -1)
        keep = np.cumsum(edge[:-1], dtype=np.int8) > 0
        return HashTable(self.hash_block_size, self.volume_size, self.entries[keep], self.key)

    def apply(self, covered: Extents, changed: HashTable) -> HashTable:
        """The table after an incremental: ``changed``'s entries inside ``covered`` (hash block
        runs), this table's elsewhere, cut to ``changed``'s volume size."""
        kept = self.select(Extents.span(0, changed.hash_blocks).subtract(covered))
        new = changed.select(covered)
        # Both sorted and disjoint: insert the new entries in place of a concatenate and a sort
        # (with a million entries, each copy is 24 MiB).
        at = np.searchsorted(kept.entries["index"], new.entries["index"])
        entries = np.insert(kept.entries, at, new.entries)
        return HashTable(changed.hash_block_size, changed.volume_size, entries, changed.key)

    def equals(self, other: HashTable) -> bool:
        return (
            self.hash_block_size == other.hash_block_size
            and self.volume_size == other.volume_size
            and self.key == other.key
            and self.entries.tobytes() == other.entries.tobytes()
        )

    def first_difference(self, other: HashTable) -> int | None:
        """The lowest hash block index whose hash differs between the two tables, or None."""
        if self.equals(other):
            return None
        a, b = self.entries, other.entries
        n = min(len(a), len(b))
        # Both are sorted with no zero-block entries, so the first entry that differs (in index
        # or hash) names the first block that differs: the smaller of its two indices.
        same = (a["index"][:n] == b["index"][:n]) & same_hashes(a["hash"][:n], b["hash"][:n])
        k = int(np.argmin(same)) if n and not same.all() else n
        at = [int(t["index"][k]) for t in (a, b) if k < len(t)]
        return min(at) if at else min(self.hash_blocks, other.hash_blocks)


def same_hashes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Element-wise equality of two ``V16`` hash arrays (fields of the entries too: no copy)."""
    xw, yw = x.view(_WORDS), y.view(_WORDS)
    return (xw["lo"] == yw["lo"]) & (xw["hi"] == yw["hi"])


class HashBuilder:
    """Builds the hash table of the volume an archive's frames describe, fed dense bytes in order.

    Unused blocks between used ones read as zeros (as a restore writes them). Hash blocks with no
    used byte get no entry. Runs on one thread (BLAKE3 releases the GIL on large inputs).
    """

    def __init__(
        self,
        table: AddressTable | None,
        volume_size: int,
        hash_block_size: int,
        key: bytes | None = None,
        fill: Callable[[int, int], bytes | bytearray] | None = None,
    ) -> None:
        """``fill(start, end)``: the bytes between fed data (default zeros); a FINE incremental
        gives its base's bytes there. Without ``table`` the builder is fed with ``feed_runs``."""
        self.key = key
        self.fill = fill
        self.table = table
        self.volume_size = volume_size
        self.hbs = hash_block_size
        self._index = -1
        self._hasher: blake3.blake3 | None = None
        self._pos = 0  # volume offset up to which the current hash block has been fed
        # Compact while the table grows: a TiB of used data is a million hash blocks.
        self._indices = array.array("q")
        self._hashes = bytearray()

    def feed(self, dense_offset: int, raw: memoryview) -> None:
        assert self.table is not None  # a builder without a table is fed runs (feed_runs)
        vs, lens, ds = self.table.dense_to_volume(dense_offset, dense_offset + len(raw))
        self.feed_runs(raw, vs.tolist(), lens.tolist(), (ds - dense_offset).tolist())

    def feed_runs(
        self, raw: memoryview, volume: list[int], length: list[int], offset: list[int]
    ) -> None:
        """Feed ``raw[offset[i] : offset[i] + length[i]]`` as the volume bytes at ``volume[i]``,
        runs in increasing volume order (a frame whose address table is still being built)."""
        for v, n, at in zip(volume, length, offset, strict=True):
            n = min(n, self.volume_size - v)  # the dense volume pads the last block
            while n > 0:
                index = v // self.hbs
                if index != self._index:
                    self._close()
                    self._index, self._pos = index, index * self.hbs
                    self._hasher = _hasher(self.key)
                self._gap(v)
                assert self._hasher is not None
                take = min(n, (index + 1) * self.hbs - v)
                self._hasher.update(raw[at : at + take])
                self._pos = v + take
                v, at, n = v + take, at + take, n - take

    def _gap(self, upto: int) -> None:
        """Feed the current hash block what lies between the last data fed and ``upto``."""
        assert self._hasher is not None
        if upto <= self._pos:
            return
        if self.fill is None:
            _feed_zeros(self._hasher, upto - self._pos)
        else:
            self._hasher.update(self.fill(self._pos, upto))

    def _close(self) -> None:
        if self._hasher is None:
            return
        self._gap(min((self._index + 1) * self.hbs, self.volume_size))
        self._indices.append(self._index)
        self._hashes += self._hasher.digest(HASH_SIZE)
        self._hasher = None

    def result(self) -> HashTable:
        """The table of everything fed (call once, after the last frame)."""
        self._close()
        indices = np.array(self._indices, np.int64)
        hashes = np.frombuffer(bytes(self._hashes), HASH_DTYPE)
        return HashTable.from_arrays(self.hbs, self.volume_size, indices, hashes, self.key)
