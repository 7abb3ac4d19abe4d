"""Block hash table (format 1.2, HASHED): one 16-byte BLAKE3 per hash block of the volume state an
archive leaves, and the state digest over it; keyed with the chain hash key when ENCRYPTED.

Entries exist only for hash blocks whose bytes are not all zero, sorted by index. The table is
what incrementals compare against, what ``verify --chain`` follows, and what ``restore --apply``
checks a target with. Pure computation: no I/O, no knowledge of sources or media.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import blake3
import numpy as np

from volpack.compact.table import AddressTable
from volpack.errors import CorruptArchive
from volpack.extents import Extents

HASH_SIZE = 16
ENTRY_DTYPE = np.dtype([("index", "<u8"), ("hash", "V16")])
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
        items = [
            (i, h)
            for i, h in pairs
            if h != zero_hash(min(hash_block_size, volume_size - i * hash_block_size), key)
        ]
        entries = np.empty(len(items), ENTRY_DTYPE)
        if items:
            entries["index"] = [i for i, _ in items]
            entries["hash"] = [h for _, h in items]
        return HashTable(hash_block_size, volume_size, entries, key)

    def hashes(self, indices: np.ndarray) -> list[bytes]:
        """The hash of each hash block in ``indices`` (zero-block hashes where no entry)."""
        idx = self.entries["index"]
        pos = np.searchsorted(idx, indices)
        out = []
        for i, p in zip(indices.tolist(), pos.tolist(), strict=True):
            if p < len(idx) and int(idx[p]) == i:
                out.append(bytes(self.entries["hash"][p]))
            else:
                out.append(zero_hash(self.block_length(i), self.key))
        return out

    def nonzero(self) -> Extents:
        """Hash blocks with an entry (not all zero), as runs of hash block indices."""
        idx = self.entries["index"].astype(np.int64)
        return Extents.from_arrays(idx, idx + 1)

    def select(self, blocks: Extents) -> HashTable:
        """Only the entries inside ``blocks`` (hash block runs)."""
        idx = self.entries["index"].astype(np.int64)
        keep = np.zeros(len(idx), bool)
        for s, e in blocks:
            lo, hi = np.searchsorted(idx, [s, e])
            keep[lo:hi] = True
        return HashTable(self.hash_block_size, self.volume_size, self.entries[keep], self.key)

    def apply(self, covered: Extents, changed: HashTable) -> HashTable:
        """The table after an incremental: ``changed``'s entries inside ``covered`` (hash block
        runs), this table's elsewhere, cut to ``changed``'s volume size."""
        kept = self.select(Extents.span(0, changed.hash_blocks).subtract(covered))
        new = changed.select(covered)
        entries = np.concatenate([kept.entries, new.entries])
        entries = entries[np.argsort(entries["index"], kind="stable")]
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
        a = _as_dict(self)
        b = _as_dict(other)
        diff = [i for i in a.keys() | b.keys() if a.get(i) != b.get(i)]
        return min(diff) if diff else min(self.hash_blocks, other.hash_blocks)


def _as_dict(table: HashTable) -> dict[int, bytes]:
    e = table.entries
    return {int(i): bytes(h) for i, h in zip(e["index"], e["hash"], strict=True)}


class HashBuilder:
    """Builds the hash table of the volume an archive's frames describe, fed dense bytes in order.

    Unused blocks between used ones read as zeros (as a restore writes them). Hash blocks with no
    used byte get no entry. Runs on one thread (BLAKE3 releases the GIL on large inputs).
    """

    def __init__(
        self,
        table: AddressTable,
        volume_size: int,
        hash_block_size: int,
        key: bytes | None = None,
    ) -> None:
        self.table = table
        self.key = key
        self.volume_size = volume_size
        self.hbs = hash_block_size
        self._index = -1
        self._hasher: blake3.blake3 | None = None
        self._pos = 0  # volume offset up to which the current hash block has been fed
        self._pairs: list[tuple[int, bytes]] = []

    def feed(self, dense_offset: int, raw: memoryview) -> None:
        vs, lens, ds = self.table.dense_to_volume(dense_offset, dense_offset + len(raw))
        for v, n, d in zip(vs.tolist(), lens.tolist(), ds.tolist(), strict=True):
            n = min(n, self.volume_size - v)  # the dense volume pads the last block
            at = d - dense_offset
            while n > 0:
                index = v // self.hbs
                if index != self._index:
                    self._close()
                    self._index, self._pos = index, index * self.hbs
                    self._hasher = _hasher(self.key)
                assert self._hasher is not None
                _feed_zeros(self._hasher, v - self._pos)
                take = min(n, (index + 1) * self.hbs - v)
                self._hasher.update(raw[at : at + take])
                self._pos = v + take
                v, at, n = v + take, at + take, n - take

    def _close(self) -> None:
        if self._hasher is None:
            return
        end = min((self._index + 1) * self.hbs, self.volume_size)
        _feed_zeros(self._hasher, end - self._pos)
        self._pairs.append((self._index, self._hasher.digest(HASH_SIZE)))
        self._hasher = None

    def result(self) -> HashTable:
        """The table of everything fed (call once, after the last frame)."""
        self._close()
        return HashTable.from_pairs(self.hbs, self.volume_size, self._pairs, self.key)
