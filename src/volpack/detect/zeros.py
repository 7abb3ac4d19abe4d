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
    # A task is up to CHUNK bytes of candidates: a long run is cut into several, short runs (a
    # volume of scattered 4 KiB extents) are packed into one, so each task pays its numpy and
    # pool overhead on megabytes, not on a few blocks.
    tasks: list[list[tuple[int, int]]] = []
    filled = per_chunk
    for start, end in candidates:
        for b0 in range(start, end, per_chunk):
            n = min(per_chunk, end - b0)
            if filled + n > per_chunk:
                tasks.append([])
                filled = 0
            tasks[-1].append((b0, n))
            filled += n
    local = threading.local()

    def scan(pieces: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, int]:
        view = getattr(local, "buf", None)
        if view is None:
            view = local.buf = buffer(per_chunk * block_size)
        pos = 0
        length = 0
        for b0, n in pieces:
            off = b0 * block_size
            got = min(n * block_size, size - off)
            source.read_into(off, view[pos : pos + got])
            if got < n * block_size:  # the volume's short last block
                view[pos + got : pos + n * block_size] = bytes(n * block_size - got)
            pos += n * block_size
            length += got
        n = pos // block_size
        words = np.frombuffer(view, np.uint64, count=pos // 8).reshape(n, -1)
        # Most data blocks have a non-zero first word: only the others are read whole.
        mask = words[:, 0] != 0
        rest = np.flatnonzero(~mask)
        if rest.size == n:
            mask = words.any(axis=1)
        elif rest.size:
            mask[rest] = words[rest].any(axis=1)
        if len(pieces) == 1 and mask.all():
            b0 = pieces[0][0]
            return np.array([b0], np.int64), np.array([b0 + n], np.int64), length
        # Volume block of each scanned block; runs break where the mask or the volume does.
        blocks = np.concatenate([np.arange(b0, b0 + k, dtype=np.int64) for b0, k in pieces])
        used = blocks[mask]
        if not used.size:
            return used, used, length
        cut = np.flatnonzero(np.diff(used) != 1) + 1
        return used[np.append(0, cut)], used[np.append(cut - 1, used.size - 1)] + 1, length

    found_starts: list[np.ndarray] = []
    found_ends: list[np.ndarray] = []
    done = 0
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="vp-scan") as pool:
        for starts, ends, length in pool.map(scan, tasks):
            found_starts.append(starts)
            found_ends.append(ends)
            done += length
            if progress is not None:
                progress(done)
    if not found_starts:
        return Extents.empty()
    return Extents.from_arrays(np.concatenate(found_starts), np.concatenate(found_ends))
