"""The address table: runs of used volume blocks → sequential dense blocks.

Built by dropping unused addresses from the used map; lookups in both directions are binary
searches over run arrays, so memory and time are O(runs), never O(blocks). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volpack.extents import Extents


@dataclass(frozen=True, slots=True, eq=False)
class AddressTable:
    block_size: int
    volume_block: np.ndarray  # int64, sorted, disjoint, non-touching
    dense_block: np.ndarray  # int64, cumulative sum of counts
    count: np.ndarray  # int64, > 0
    # Byte offsets, computed once: lookups run per frame and per read, tables can be millions long.
    _vstart: np.ndarray = field(init=False, repr=False)
    _vend: np.ndarray = field(init=False, repr=False)
    _dstart: np.ndarray = field(init=False, repr=False)
    _dend: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bs = self.block_size
        span = self.count * bs
        object.__setattr__(self, "_vstart", self.volume_block * bs)
        object.__setattr__(self, "_vend", self._vstart + span)
        object.__setattr__(self, "_dstart", self.dense_block * bs)
        object.__setattr__(self, "_dend", self._dstart + span)

    @staticmethod
    def from_used(used: Extents, block_size: int) -> AddressTable:
        counts = used.ends - used.starts
        dense = (
            np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            if len(used)
            else (np.zeros(0, np.int64))
        )
        return AddressTable(block_size, used.starts.copy(), dense, counts.astype(np.int64))

    @staticmethod
    def from_arrays(block_size: int, volume_block: np.ndarray, count: np.ndarray) -> AddressTable:
        vb = np.asarray(volume_block, np.int64)
        cnt = np.asarray(count, np.int64)
        dense = (
            np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
            if len(cnt)
            else (np.zeros(0, np.int64))
        )
        return AddressTable(block_size, vb, dense, cnt)

    def __len__(self) -> int:
        return int(self.count.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AddressTable):
            return NotImplemented
        return (
            self.block_size == other.block_size
            and np.array_equal(self.volume_block, other.volume_block)
            and np.array_equal(self.count, other.count)
        )

    @property
    def used_blocks(self) -> int:
        return int(self.count.sum())

    @property
    def dense_size(self) -> int:
        return self.used_blocks * self.block_size

    def used(self) -> Extents:
        return Extents(self.volume_block, self.volume_block + self.count)

    def used_bytes(self, volume_size: int) -> Extents:
        """Used byte runs, the last one clipped to the volume size."""
        return self.used().scale_in(self.block_size).clip(0, volume_size)

    def dense_to_volume(self, d0: int, d1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pieces of dense bytes ``[d0, d1)``: (volume_offsets, lengths, dense_offsets), in order."""
        dstart, dend = self._dstart, self._dend
        lo = int(np.searchsorted(dend, d0, side="right"))
        hi = int(np.searchsorted(dstart, d1, side="left"))
        if hi <= lo:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        ds = np.maximum(dstart[lo:hi], d0)
        de = np.minimum(dend[lo:hi], d1)
        vs = self._vstart[lo:hi] + (ds - dstart[lo:hi])
        return vs, de - ds, ds

    def volume_to_dense(self, v0: int, v1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Used pieces of volume bytes ``[v0, v1)``: (volume_offsets, lengths, dense_offsets)."""
        vstart, vend = self._vstart, self._vend
        lo = int(np.searchsorted(vend, v0, side="right"))
        hi = int(np.searchsorted(vstart, v1, side="left"))
        if hi <= lo:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        vs = np.maximum(vstart[lo:hi], v0)
        ve = np.minimum(vend[lo:hi], v1)
        ds = self._dstart[lo:hi] + (vs - vstart[lo:hi])
        return vs, ve - vs, ds
