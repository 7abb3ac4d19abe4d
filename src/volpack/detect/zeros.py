"""Zero scan: drop blocks that read as all zeros from a set of candidate blocks.

Reads candidates in large chunks (one syscall per run piece) and tests whole blocks with numpy,
so the cost is one sequential read of the candidate data. With a sink, the same read also hands
every used block over, in volume order (two-phase mode copies them to staging as it scans, so
the source is read once).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from volpack.buffers import buffer
from volpack.extents import Extents
from volpack.source.base import Source

CHUNK = 8 << 20

# (buffer, [(byte offset in it, bytes)]): one task's used blocks, in volume order, valid only
# during the call.
Sink = Callable[[memoryview, list[tuple[int, int]]], None]


def nonzero_mask(data: memoryview, block_size: int) -> np.ndarray:
    """Whether each ``block_size`` block of ``data`` (whole blocks) holds a non-zero byte."""
    words = np.frombuffer(data, np.uint64).reshape(len(data) // block_size, -1)
    # Most data blocks have a non-zero first word: only the others are read whole.
    mask = words[:, 0] != 0
    rest = np.flatnonzero(~mask)
    if rest.size == len(mask):
        mask = words.any(axis=1)
    elif rest.size:
        mask[rest] = words[rest].any(axis=1)
    return mask


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
    return scan_used(source, Extents.empty(), candidates, block_size, None, progress, threads)


def scan_used(
    source: Source,
    known: Extents,
    candidates: Extents,
    block_size: int,
    sink: Sink | None = None,
    progress: Callable[[int], None] | None = None,
    threads: int = 2,
) -> Extents:
    """The used blocks among ``known`` (used, not tested) and ``candidates`` (used when they
    hold a non-zero byte), which must not overlap. With ``sink``, ``known`` blocks are read too
    and every used block's bytes are handed to it in volume order (the short last block of the
    volume zero-padded to a whole block, as in the dense volume)."""
    size = source.size
    per_chunk = max(1, CHUNK // block_size)
    runs = sorted(
        [(s, e, False) for s, e in candidates] + ([(s, e, True) for s, e in known] if sink else [])
    )
    # A task is up to CHUNK bytes of runs: a long run is cut into several, short runs (a
    # volume of scattered 4 KiB extents) are packed into one, so each task pays its numpy and
    # pool overhead on megabytes, not on a few blocks.
    tasks: list[list[tuple[int, int, bool]]] = []
    filled = per_chunk
    for start, end, whole in runs:
        for b0 in range(start, end, per_chunk):
            n = min(per_chunk, end - b0)
            if filled + n > per_chunk:
                tasks.append([])
                filled = 0
            tasks[-1].append((b0, n, whole))
            filled += n
    workers = max(1, threads)
    # Each task is handed its buffer when it is submitted, at most workers + 1 ahead of the
    # one the caller's thread takes next; the buffer comes back once the sink has taken the
    # bytes, so a worker never overwrites them and never waits for a buffer.
    spare = [buffer(per_chunk * block_size) for _ in range(min(len(tasks), workers + 1))]

    def scan(pieces: list[tuple[int, int, bool]], view: memoryview) -> tuple[np.ndarray, int]:
        pos = 0
        length = 0
        for b0, n, _whole in pieces:
            off = b0 * block_size
            got = min(n * block_size, size - off)
            source.read_into(off, view[pos : pos + got])
            if got < n * block_size:  # the volume's short last block
                view[pos + got : pos + n * block_size] = bytes(n * block_size - got)
            pos += n * block_size
            length += got
        mask = nonzero_mask(view[:pos], block_size)
        at = 0
        for _b0, k, whole in pieces:
            if whole:
                mask[at : at + k] = True
            at += k
        return mask, length

    found_starts: list[np.ndarray] = []
    found_ends: list[np.ndarray] = []
    done = 0
    waiting: collections.deque[tuple[list[tuple[int, int, bool]], memoryview, Future]]
    waiting = collections.deque()
    todo = iter(tasks)
    with ThreadPoolExecutor(workers, thread_name_prefix="vp-scan") as pool:

        def submit() -> None:
            pieces = next(todo, None)
            if pieces is not None:
                view = spare.pop()
                waiting.append((pieces, view, pool.submit(scan, pieces, view)))

        for _ in range(len(spare)):
            submit()
        while waiting:
            pieces, view, future = waiting.popleft()
            mask, length = future.result()
            # Volume block of each scanned block, in buffer order.
            blocks = np.concatenate([np.arange(b0, b0 + k, dtype=np.int64) for b0, k, _ in pieces])
            used = blocks[mask]
            if used.size:
                # Runs break where the volume does, and (for the sink) where the buffer does.
                slot = np.flatnonzero(mask)
                cut = np.flatnonzero((np.diff(used) != 1) | (np.diff(slot) != 1)) + 1
                first = np.append(0, cut)
                count = np.diff(np.append(first, used.size))
                found_starts.append(used[first])
                found_ends.append(used[first] + count)
                if sink is not None:
                    offsets = (slot[first] * block_size).tolist()
                    sink(view, list(zip(offsets, (count * block_size).tolist(), strict=True)))
            spare.append(view)
            submit()
            done += length
            if progress is not None:
                progress(done)
    if not found_starts:
        return known
    return known.union(
        Extents.from_arrays(np.concatenate(found_starts), np.concatenate(found_ends))
    )
