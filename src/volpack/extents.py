"""Pure range algebra on sorted arrays of half-open runs ``[start, end)``.

Used maps, hole maps and detector results are ``Extents``: two int64 numpy arrays, sorted, merged
and non-empty runs. Every operation is O(runs), never O(blocks), so a 16 TiB sparse volume with a
few thousand data runs costs kilobytes. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

_I64 = np.int64


def unique(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``values``: ``np.unique`` without its masked-array check,
    which imports numpy.ma (18 ms of every run's start-up)."""
    flat = np.sort(np.asarray(values).ravel())
    if flat.size < 2:
        return flat
    keep = np.empty(flat.size, bool)
    keep[0] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    return flat[keep]


@dataclass(frozen=True, slots=True, eq=False)
class Extents:
    """Sorted, disjoint, non-adjacent, non-empty runs. Units are the caller's (blocks or bytes)."""

    starts: np.ndarray
    ends: np.ndarray

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def empty() -> Extents:
        return Extents(np.zeros(0, _I64), np.zeros(0, _I64))

    @staticmethod
    def span(start: int, end: int) -> Extents:
        if end <= start:
            return Extents.empty()
        return Extents(np.array([start], _I64), np.array([end], _I64))

    @staticmethod
    def from_pairs(pairs: Iterable[tuple[int, int]]) -> Extents:
        """Runs in any order, possibly overlapping or touching; empty runs are dropped."""
        arr = np.array(list(pairs), dtype=_I64).reshape(-1, 2)
        return Extents.from_arrays(arr[:, 0], arr[:, 1])

    @staticmethod
    def from_arrays(starts: np.ndarray, ends: np.ndarray) -> Extents:
        """Normalise arbitrary runs: sort, drop empty ones, merge overlapping and touching ones."""
        starts = np.asarray(starts, dtype=_I64)
        ends = np.asarray(ends, dtype=_I64)
        # Few temporaries: with a million runs every array here is 8 MiB.
        keep = ends > starts
        if not keep.all():
            starts, ends = starts[keep], ends[keep]
        del keep
        if starts.size == 0:
            return Extents.empty()
        if starts.size > 1 and bool((starts[1:] > ends[:-1]).all()):
            return Extents(starts.copy(), ends.copy())  # sorted, disjoint, apart: already normal
        if not bool((starts[1:] >= starts[:-1]).all()):
            order = np.argsort(starts, kind="stable")
            starts, ends = starts[order], ends[order]
            del order
        # A run begins a new group when it starts after every earlier run has ended.
        reach = np.maximum.accumulate(ends)
        new_group = np.empty(starts.size, dtype=bool)
        new_group[0] = True
        np.greater(starts[1:], reach[:-1], out=new_group[1:])
        first = np.flatnonzero(new_group)
        del new_group
        last = np.append(first[1:], starts.size) - 1
        return Extents(starts[first], reach[last])

    # -- queries -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.starts.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts.tolist(), self.ends.tolist(), strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Extents):
            return NotImplemented
        return np.array_equal(self.starts, other.starts) and np.array_equal(self.ends, other.ends)

    def __repr__(self) -> str:
        runs = list(self)
        shown = ", ".join(f"[{s},{e})" for s, e in runs[:6])
        more = f", … {len(runs) - 6} more" if len(runs) > 6 else ""
        return f"Extents({shown}{more})"

    def total(self) -> int:
        """Sum of run lengths."""
        return int((self.ends - self.starts).sum())

    @property
    def first(self) -> int:
        return int(self.starts[0]) if self.starts.size else 0

    @property
    def last(self) -> int:
        """End of the last run (0 when empty)."""
        return int(self.ends[-1]) if self.ends.size else 0

    def contains(self, other: Extents) -> bool:
        return other.subtract(self).total() == 0

    # -- algebra -----------------------------------------------------------------------------
    def union(self, other: Extents) -> Extents:
        return Extents.from_arrays(
            np.concatenate([self.starts, other.starts]), np.concatenate([self.ends, other.ends])
        )

    def complement(self, start: int, end: int) -> Extents:
        """The gaps of ``self`` within ``[start, end)``."""
        if end <= start:
            return Extents.empty()
        clipped = self.clip(start, end)
        gap_starts = np.concatenate([[start], clipped.ends]).astype(_I64)
        gap_ends = np.concatenate([clipped.starts, [end]]).astype(_I64)
        # The gaps of normal runs are normal; only the first and the last can be empty.
        keep = gap_ends > gap_starts
        if keep.all():
            return Extents(gap_starts, gap_ends)
        return Extents(gap_starts[keep], gap_ends[keep])

    def intersect(self, other: Extents) -> Extents:
        if not len(self) or not len(other):
            return Extents.empty()
        # Each run of self meets the runs of other from lo to hi; one output run per meeting.
        # Arrays of the output's size only (no sort): the result of normal runs is normal.
        lo = np.searchsorted(other.ends, self.starts, side="right")
        hi = np.searchsorted(other.starts, self.ends, side="left")
        count = np.maximum(hi - lo, 0)
        total = int(count.sum())
        if total == 0:
            return Extents.empty()
        mine = np.repeat(np.arange(len(self), dtype=_I64), count)
        theirs = np.arange(total, dtype=_I64) + np.repeat(lo - np.cumsum(count) + count, count)
        starts = np.maximum(self.starts[mine], other.starts[theirs])
        ends = np.minimum(self.ends[mine], other.ends[theirs])
        return Extents(starts, ends)

    def subtract(self, other: Extents) -> Extents:
        if not len(self) or not len(other):
            return self
        return self.intersect(other.complement(min(self.first, other.first), self.last))

    def clip(self, start: int, end: int) -> Extents:
        lo = int(np.searchsorted(self.ends, start, side="right"))
        hi = int(np.searchsorted(self.starts, end, side="left"))
        if hi <= lo:
            return Extents.empty()
        starts = np.maximum(self.starts[lo:hi], start)
        ends = np.minimum(self.ends[lo:hi], end)
        return Extents(starts.astype(_I64), ends.astype(_I64))

    def scale_out(self, unit: int) -> Extents:
        """Convert byte runs to ``unit``-sized block runs, widening partial blocks (never drops data)."""
        return Extents.from_arrays(self.starts // unit, -(-self.ends // unit))

    def scale_in(self, unit: int) -> Extents:
        """Convert block runs to byte runs."""
        return Extents(self.starts * unit, self.ends * unit)
