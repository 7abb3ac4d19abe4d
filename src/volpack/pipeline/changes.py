"""What changed since a base archive: the hash blocks an incremental must cover.

Two ways, in order: a change hint (a dirty bitmap, LVM thin mappings), checked before it is trusted — volume size
and a sample of un-hinted hash blocks hashed against the base's table —, else hash compare: read
every used hash block once, hash it, keep those whose hash differs from the base's. A hint that
fails its check is reported and replaced by hash compare, never trusted blindly. Library code:
warnings go back to the caller as text.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from volpack.buffers import buffer
from volpack.errors import UsageError
from volpack.extents import Extents, unique
from volpack.format.hashtable import HASH_DTYPE, HashTable, block_hash, same_hashes
from volpack.source.base import Source

SAMPLE_MIN, SAMPLE_SHARE = 16, 0.001
SAMPLE_SPOT = 1 << 20  # bytes a sampled spot checks at least (every hash block in them)
_AHEAD = 2  # tasks in flight per thread
_SPAN = 4 << 20  # source bytes a task reads and hashes (whole hash blocks); 1 MiB was 1.4x slower


@dataclass(frozen=True, slots=True)
class Changes:
    """The hash blocks to cover (runs of hash block indices) and how they were found."""

    covered: Extents
    method: str  # "hash-compare", "bitmap:NAME" or "thin-delta"
    read_bytes: int  # source bytes read to find them
    sampled: int = 0  # un-hinted hash blocks checked against the base
    warnings: tuple[str, ...] = ()
    # A checked hint: its dirty byte runs, and the hash blocks to cover whole whatever it says
    # (emptied or resized); lets ``refine`` cover blocks instead of hash blocks
    dirty: Extents | None = None
    whole: Extents | None = None


class _Hasher:
    """Hashes hash blocks of the source as a restore of the new archive would read them: used
    bytes from the source, zeros elsewhere. Neighbouring hash blocks are read together, up to
    ``_SPAN`` bytes a task: 64 KiB hash blocks one read and one pool task each cost more in
    Python than in hashing."""

    def __init__(
        self, src: Source, used_bytes: Extents, hbs: int, threads: int, key: bytes | None = None
    ) -> None:
        self.src, self.used, self.hbs, self.threads = src, used_bytes, hbs, max(1, threads)
        self.key = key  # the base's chain hash key in an encrypted chain
        self.read_bytes = 0
        self._count = threading.Lock()  # ``+=`` from pool threads could lose updates
        self._local = threading.local()
        self._per = max(1, _SPAN // hbs)  # hash blocks a task
        self._zeros = memoryview(bytes(self._per * hbs))

    def span(self, first: int, count: int) -> bytes:
        """The hashes of hash blocks ``first`` … ``first + count - 1`` (at most ``_per``)."""
        start = first * self.hbs
        end = min(start + count * self.hbs, self.src.size)
        # One buffer per thread, reused: a fresh buffer a task cost a page fault per 4 KiB,
        # about a third as much CPU as hashing the bytes.
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = buffer(self._per * self.hbs)
        view = buf[: end - start]
        pos = start
        read = 0
        for s, e in self.used.clip(start, end):
            view[pos - start : s - start] = self._zeros[: s - pos]
            self.src.read_into(s, view[s - start : e - start])
            read += e - s
            pos = e
        view[pos - start :] = self._zeros[: end - pos]
        with self._count:
            self.read_bytes += read
        return b"".join(
            block_hash(view[at : at + self.hbs], self.key) for at in range(0, end - start, self.hbs)
        )

    def many(
        self, indices: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """The hash of each hash block in ``indices`` (increasing), as ``V16`` (16 bytes a
        block, not a Python object: a TiB of used data is a million hash blocks)."""
        out = np.empty(len(indices), HASH_DTYPE)
        tasks = _spans(indices, self._per)
        done = 0
        # A window of tasks in flight, each taken in order as it ends: waiting for a whole
        # batch at once left threads idle at every batch's end.
        window: deque[tuple[Future[bytes], int]] = deque()
        depth = _AHEAD * (self.threads + 1)
        with ThreadPoolExecutor(self.threads + 1, thread_name_prefix="vp-compare") as pool:
            for i, (first, count) in enumerate(tasks):
                window.append((pool.submit(self.span, first, count), count))
                while window and (len(window) > depth or i == len(tasks) - 1):
                    fut, n = window.popleft()
                    out[done : done + n] = np.frombuffer(fut.result(), HASH_DTYPE)
                    done += n
                    if progress is not None:
                        progress(done)
        return out


def _spans(indices: np.ndarray, most: int) -> list[tuple[int, int]]:
    """``indices`` (increasing) as (first, count) runs of consecutive ones, none longer than
    ``most``."""
    if not len(indices):
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(indices)]))
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        first = int(indices[s])
        for at in range(0, e - s, most):
            out.append((first + at, min(most, e - s - at)))
    return out


def _resized(base: HashTable, volume_size: int, hbs: int) -> Extents:
    """Hash blocks a size change touches: from the old (or new) end to the new end."""
    if base.volume_size == volume_size:
        return Extents.empty()
    return Extents.span(min(base.volume_size, volume_size) // hbs, -(-volume_size // hbs))


def block_indices(runs: Extents) -> np.ndarray:
    """Every index inside ``runs``, in order (one array operation, however many runs)."""
    lengths = runs.ends - runs.starts
    if not len(runs):
        return np.zeros(0, np.int64)
    first = np.repeat(runs.starts - np.cumsum(lengths) + lengths, lengths)
    return first + np.arange(int(lengths.sum()), dtype=np.int64)


def hash_compare(
    src: Source,
    used_bytes: Extents,
    base: HashTable,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Changes:
    """Read and hash every hash block holding used bytes; cover those whose hash differs from
    the base's, those the base holds data in and that are now empty, and the resized ones."""
    hbs = base.hash_block_size
    blocks = -(-src.size // hbs)
    touched = used_bytes.scale_out(hbs).clip(0, blocks)
    indices = block_indices(touched)
    hasher = _Hasher(src, used_bytes, hbs, threads, base.key)
    report = (lambda n: progress(n, len(indices))) if progress else None
    new = hasher.many(indices, report)
    return Changes(compared(base, touched, new, src.size), "hash-compare", hasher.read_bytes)


def compared(base: HashTable, touched: Extents, new: np.ndarray, volume_size: int) -> Extents:
    """The hash blocks to cover after hash compare: of ``touched`` (runs of hash blocks holding
    used bytes, whose hashes in order are ``new``) those that differ from the base, those the
    base holds data in and that are now empty, and the resized ones. Array operations only."""
    hbs = base.hash_block_size
    blocks = -(-volume_size // hbs)
    indices = block_indices(touched)
    differ = indices[~same_hashes(new, base.hash_array(indices))]
    del indices
    changed = Extents.from_arrays(differ, differ + 1)
    return changed.union(_emptied(base, touched, blocks)).union(_resized(base, volume_size, hbs))


def _emptied(base: HashTable, touched: Extents, blocks: int) -> Extents:
    """Hash blocks the base holds data in (inside the first ``blocks``) and ``touched`` (runs)
    does not: they became empty. Located by binary search, not by run algebra over the base's
    million entries."""
    idx = base.entries["index"].astype(np.int64)
    idx = idx[: int(np.searchsorted(idx, blocks))]
    run = np.searchsorted(touched.ends, idx, side="right")
    inside = run < len(touched)
    inside[inside] = touched.starts[run[inside]] <= idx[inside]
    gone = idx[~inside]
    return Extents.from_arrays(gone, gone + 1)


def sample_indices(candidates: Extents, count: int) -> np.ndarray:
    """``count`` hash blocks spread evenly over ``candidates`` (runs), first and last included."""
    total = candidates.total()
    if total == 0:
        return np.zeros(0, np.int64)
    ranks = unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64))
    lengths = candidates.ends - candidates.starts
    run_end = np.cumsum(lengths)
    run = np.searchsorted(run_end, ranks, side="right")
    before = run_end[run] - lengths[run]
    return candidates.starts[run] + (ranks - before)


def sample_blocks(candidates: Extents, hbs: int) -> np.ndarray:
    """The hash blocks of ``candidates`` (runs of hash block indices) a sampled check hashes:
    max(16, 0.1 %) spots spread evenly, first and last included, each spot every candidate in
    one ``SAMPLE_SPOT``-aligned MiB (one hash block where they are larger). In spots, not hash
    blocks, so that 64 KiB hash blocks check as many bytes as 1 MiB ones."""
    per = max(1, SAMPLE_SPOT // hbs)
    spots = candidates.scale_out(per)
    chosen = sample_indices(spots, max(SAMPLE_MIN, int(spots.total() * SAMPLE_SHARE)))
    runs = Extents.from_arrays(chosen * per, (chosen + 1) * per).intersect(candidates)
    return block_indices(runs)


def check_hint(
    src: Source,
    used_bytes: Extents,
    base: HashTable,
    dirty: Extents,
    name: str,
    threads: int = 2,
    *,
    method: str | None = None,
    what: str | None = None,
) -> Changes | str:
    """The hash blocks a hint (dirty byte runs) says changed, or why it cannot be trusted: the
    un-hinted blocks sampled (max(16, 0.1 %), first and last included) must hash as in the base.
    ``method`` and ``what`` name the hint in the result and the reason (default: a dirty bitmap
    ``name``)."""
    hbs = base.hash_block_size
    blocks = -(-src.size // hbs)
    touched = used_bytes.scale_out(hbs).clip(0, blocks)
    whole = _emptied(base, touched, blocks).union(_resized(base, src.size, hbs))
    covered = dirty.scale_out(hbs).clip(0, blocks).union(whole)
    unhinted = Extents.span(0, min(blocks, base.hash_blocks)).subtract(covered)
    sample = sample_blocks(unhinted, hbs)
    hasher = _Hasher(src, used_bytes, hbs, threads, base.key)
    got = hasher.many(sample)
    wrong = np.flatnonzero(~same_hashes(got, base.hash_array(sample)))
    if len(wrong):
        index = int(sample[wrong[0]])
        return (
            f"{what or f'dirty bitmap {name!r}'} does not mark hash block {index} (volume "
            f"offset {index * hbs}) that differs from the base; the hint is not in step with "
            "the base archive, so every block is compared instead"
        )
    label = method or f"bitmap:{name}"
    return Changes(covered, label, hasher.read_bytes, sampled=len(sample), dirty=dirty, whole=whole)


def dirty_hint(src: Source, name: str) -> Extents | str:
    """The dirty byte runs of the source's bitmap ``name``, or why they cannot be used. A bitmap
    that does not exist is a usage error; one that is in use or inconsistent is a reason. A source
    that describes its bitmaps (a qcow2 image: name, in use, usable) is asked that way; a live
    export only offers the bitmaps its server trusts (``dirty_extents``)."""
    described = "dirty_bitmaps" in src.info.details
    dirty_extents = getattr(src, "dirty_extents", None)
    if dirty_extents is not None and not described:
        result: Extents = dirty_extents(name)
        return result
    dirty_bitmaps = getattr(src, "dirty_bitmaps", None)
    if dirty_bitmaps is None:
        raise UsageError(
            f"--bitmap {name}: a {src.info.kind} source has no dirty bitmaps; leave out --bitmap "
            "to compare hashes, or back up a qcow2 image or an NBD export that has one"
        )
    usable = dirty_bitmaps()
    if name in usable:
        bitmaps: Extents = usable[name]
        return bitmaps
    known = {b.get("name"): b for b in src.info.details.get("dirty_bitmaps") or ()}
    if name in known:
        return (
            f"dirty bitmap '{name}' is flagged in use or inconsistent (a writer stopped without "
            "saving it), so every block is compared instead"
        )
    names = ", ".join(sorted(str(n) for n in known)) or "none"
    raise UsageError(
        f"--bitmap {name}: {src.info.path} has no dirty bitmap of that name (it has: {names}); "
        "add one with 'qemu-img bitmap --add --enable' after a full backup"
    )


@dataclass(frozen=True, slots=True)
class Fine:
    """Block coverage inside the hash blocks a checked hint touches (format FINE): the blocks to
    cover; ``fill``, what the hash blocks covered in part hold where the new archive's frames do
    not (the base's bytes), for the writer's hash table; and the entries of those of them that
    get no frame data at all (runs ``nodata``), which the writer never sees."""

    blocks: Extents  # covered volume blocks
    fill: StateFill
    nodata: Extents  # hash blocks covered in part with no data in the new archive
    table: HashTable  # their entries in the state the incremental leaves
    read_bytes: int
    sampled: int
    close: Callable[[], None] = lambda: None  # closes the base's chain once the writer is done


class StateFill:
    """The state a FINE incremental leaves, where its frames hold nothing: inside the hash blocks
    it covers in part, the base's bytes (read from the base's archives, never the source: a live
    source is read only where it changed) with its zero runs put over them; zeros elsewhere."""

    def __init__(
        self, read_base: Callable[[int, int], bytes], partial: Extents, zeros: Extents
    ) -> None:
        self.read_base, self.partial, self.zeros = read_base, partial, zeros  # byte runs

    def __call__(self, start: int, end: int) -> bytes | bytearray:
        inside = self.partial.clip(start, end)
        if not len(inside):
            return bytes(end - start)
        out = bytearray(end - start)
        for s, e in inside:
            out[s - start : e - start] = self.read_base(s, e - s)
        for s, e in self.zeros.clip(start, end):
            out[s - start : e - start] = bytes(e - s)
        return out


def refine(
    src: Source,
    used: Extents,
    block_size: int,
    changes: Changes,
    base: HashTable,
    base_used: Extents,
    read_base: Callable[[int, int], bytes],
    threads: int = 2,
) -> Fine | str | None:
    """Cover only the blocks the hint marks (plus blocks that became used, and the hash blocks
    to cover whole) instead of whole hash blocks; or why not (a string); or None where the
    hint's blocks fill whole hash blocks anyway (granules as large as hash blocks).
    ``used``/``base_used``: used blocks now and in the base's state; ``read_base(offset,
    length)`` reads the base's state.

    A hash block covered in part keeps its other blocks from the base, so its entry is the hash
    of the base's bytes with the covered blocks as the new archive holds them: what a restore of
    the chain gives, whatever the hint missed. The writer's hash table makes it (``fill`` gives
    it the base's bytes between its frames' data); here only those with no data are hashed.
    Whether the hint is right *inside* those hash blocks is checked on a sample of them
    (``sample_blocks``): the source must equal the base's bytes where the hint says nothing
    changed."""
    assert changes.dirty is not None and changes.whole is not None
    hbs = base.hash_block_size
    per = hbs // block_size
    vblocks = -(-src.size // block_size)
    inside = changes.covered.scale_in(per).clip(0, vblocks)  # blocks of the touched hash blocks
    fresh = used.subtract(base_used)  # used now, not in the base: data whatever the hint says
    blocks = (
        changes.dirty.scale_out(block_size)
        .union(changes.whole.scale_in(per))
        .union(fresh)
        .intersect(inside)
    )
    partial = inside.subtract(blocks).scale_out(per)
    zeros = blocks.subtract(used).scale_in(block_size).clip(0, src.size)
    fill = StateFill(read_base, partial.scale_in(hbs).clip(0, src.size), zeros)
    with_data = blocks.intersect(used).scale_out(per)
    nodata = partial.subtract(with_data)
    if not len(partial):
        return None  # every touched hash block is covered whole: nothing to refine
    in_partial = partial.scale_in(per).clip(0, vblocks)
    kept = in_partial.subtract(blocks).intersect(base_used)
    sample = sample_blocks(partial, hbs)
    kept_bytes = kept.scale_in(block_size).clip(0, src.size)
    checked = 0
    for index in sample.tolist():
        for start, end in kept_bytes.clip(index * hbs, (index + 1) * hbs):
            mine = bytearray(end - start)
            src.read_into(start, memoryview(mine))
            checked += end - start
            if mine != read_base(start, end - start):
                return (
                    f"the hint leaves volume bytes {start}-{end} in hash block {index} as they "
                    "were, but they differ from the base's; those hash blocks are covered whole "
                    "instead"
                )
    indices = block_indices(nodata)

    def one(index: int) -> bytes:
        start = index * hbs
        return block_hash(fill(start, min(start + hbs, src.size)), base.key)

    with ThreadPoolExecutor(threads + 1, thread_name_prefix="vp-partial") as pool:
        got = b"".join(pool.map(one, indices.tolist()))
    table = HashTable.from_arrays(hbs, src.size, indices, np.frombuffer(got, HASH_DTYPE), base.key)
    return Fine(blocks, fill, nodata, table, checked, len(sample))
