"""Zero scan: drop blocks that read as all zeros from a set of candidate blocks.

Reads candidates in large chunks (one syscall per run piece) and tests whole blocks with numpy,
so the cost is one sequential read of the candidate data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from volpack.buffers import buffer
from volpack.extents import Extents
from volpack.source.base import Source

CHUNK = 8 << 20


def nonzero_blocks(
    source: Source,
    candidates: Extents,
    block_size: int,
    progress: Callable[[int], None] | None = None,
    threads: int = 2,
) -> Extents:
    """The blocks of ``candidates`` that hold at least one non-zero byte (block runs in, out).

    Chunks are scanned by ``threads`` workers (preadv and numpy release the GIL), each with its
    own buffer, so the scan uses both cores of a small machine.
    """
    size = source.size
    per_chunk = max(1, CHUNK // block_size)
    chunks = [
        (b0, min(per_chunk, end - b0))
        for start, end in candidates
        for b0 in range(start, end, per_chunk)
    ]
    local = threading.local()

    def scan(chunk: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
        b0, n = chunk
        if getattr(local, "buf", None) is None:
            local.buf = buffer(per_chunk * block_size)
        view = local.buf
        off = b0 * block_size
        length = min(n * block_size, size - off)
        source.read_into(off, view[:length])
        if length < n * block_size:  # the volume's short last block
            view[length : n * block_size] = bytes(n * block_size - length)
        words = np.frombuffer(view, np.uint64, count=n * block_size // 8).reshape(n, -1)
        # Most data blocks have a non-zero first word: only the others are read whole.
        mask = words[:, 0] != 0
        rest = np.flatnonzero(~mask)
        if rest.size == n:
            mask = words.any(axis=1)
        elif rest.size:
            mask[rest] = words[rest].any(axis=1)
        if mask.all():
            return np.array([b0], np.int64), np.array([b0 + n], np.int64), length
        edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
        return np.flatnonzero(edges == 1) + b0, np.flatnonzero(edges == -1) + b0, length

    found_starts: list[np.ndarray] = []
    found_ends: list[np.ndarray] = []
    done = 0
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="vp-scan") as pool:
        for starts, ends, length in pool.map(scan, chunks):
            found_starts.append(starts)
            found_ends.append(ends)
            done += length
            if progress is not None:
                progress(done)
    if not found_starts:
        return Extents.empty()
    return Extents.from_arrays(np.concatenate(found_starts), np.concatenate(found_ends))
