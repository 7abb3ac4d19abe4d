"""Zero scan: drop blocks that read as all zeros from a set of candidate blocks.

Reads candidates in large chunks (one syscall per run piece) and tests whole blocks with numpy,
so the cost is one sequential read of the candidate data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from volpack.extents import Extents
from volpack.source.base import Source

CHUNK = 8 << 20


def nonzero_blocks(
    source: Source,
    candidates: Extents,
    block_size: int,
    progress: Callable[[int], None] | None = None,
) -> Extents:
    """The blocks of ``candidates`` that hold at least one non-zero byte (block runs in, out)."""
    size = source.size
    per_chunk = max(1, CHUNK // block_size)
    buf = bytearray(per_chunk * block_size)
    view = memoryview(buf)
    words = np.frombuffer(buf, np.uint64).reshape(per_chunk, block_size // 8)
    found_starts: list[np.ndarray] = []
    found_ends: list[np.ndarray] = []
    done = 0
    for start, end in candidates:
        for b0 in range(start, end, per_chunk):
            n = min(per_chunk, end - b0)
            off = b0 * block_size
            length = min(n * block_size, size - off)
            source.read_into(off, view[:length])
            if length < n * block_size:  # the volume's short last block
                view[length : n * block_size] = bytes(n * block_size - length)
            mask = words[:n].any(axis=1)
            if mask.all():
                found_starts.append(np.array([b0], np.int64))
                found_ends.append(np.array([b0 + n], np.int64))
            elif mask.any():
                edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
                found_starts.append(np.flatnonzero(edges == 1) + b0)
                found_ends.append(np.flatnonzero(edges == -1) + b0)
            done += length
            if progress is not None:
                progress(done)
    if not found_starts:
        return Extents.empty()
    return Extents.from_arrays(np.concatenate(found_starts), np.concatenate(found_ends))
