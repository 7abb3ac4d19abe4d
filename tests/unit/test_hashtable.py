"""Block hash table operations (array code) against block-by-block reference definitions, on
random tables with a short last block, zero-block hashes and runs of every shape."""

from __future__ import annotations

import numpy as np
import pytest

from volpack.extents import Extents
from volpack.format.hashtable import ENTRY_DTYPE, HashTable, zero_hash
from volpack.pipeline.changes import block_indices, compared

HBS = 1 << 20


def _table(rng: np.random.Generator, volume_size: int, share: float = 0.3) -> HashTable:
    blocks = -(-volume_size // HBS)
    idx = np.flatnonzero(rng.random(blocks) < share).astype(np.int64)
    hashes = [rng.bytes(16) for _ in idx]
    return HashTable.from_pairs(HBS, volume_size, zip(idx.tolist(), hashes, strict=True))


def _as_dict(t: HashTable) -> dict[int, bytes]:
    return {int(i): bytes(h) for i, h in zip(t.entries["index"], t.entries["hash"], strict=True)}


def _runs(rng: np.random.Generator, blocks: int, count: int) -> Extents:
    starts = rng.integers(0, blocks, count)
    return Extents.from_arrays(starts, starts + rng.integers(1, 6, count)).clip(0, blocks)


SIZES = [64 * HBS, 64 * HBS + 4096, 3 * HBS - 512]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("volume_size", SIZES)
def test_hash_array_gives_each_blocks_entry_or_the_zero_hash_of_its_length(
    seed: int, volume_size: int
) -> None:
    rng = np.random.default_rng(seed)
    t = _table(rng, volume_size)
    entries = _as_dict(t)
    indices = np.arange(t.hash_blocks, dtype=np.int64)
    want = [entries.get(i, zero_hash(t.block_length(i))) for i in range(t.hash_blocks)]
    assert t.hashes(indices) == want
    assert [bytes(h) for h in t.hash_array(indices[::-1])] == want[::-1]


@pytest.mark.parametrize("volume_size", SIZES)
def test_from_arrays_drops_zero_block_hashes_including_a_short_last_block(volume_size: int) -> None:
    blocks = -(-volume_size // HBS)
    last_len = volume_size - (blocks - 1) * HBS
    pairs = [(0, zero_hash(HBS)), (1, b"\x01" * 16), (blocks - 1, zero_hash(last_len))]
    t = HashTable.from_pairs(HBS, volume_size, pairs)
    assert _as_dict(t) == {1: b"\x01" * 16}
    assert t.entries.dtype == ENTRY_DTYPE


@pytest.mark.parametrize("seed", range(6))
def test_select_keeps_exactly_the_entries_inside_the_runs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = _table(rng, 200 * HBS, 0.5)
    runs = _runs(rng, t.hash_blocks, int(rng.integers(0, 40)))
    inside = set(block_indices(runs).tolist())
    got = _as_dict(t.select(runs))
    assert got == {i: h for i, h in _as_dict(t).items() if i in inside}


@pytest.mark.parametrize("seed", range(6))
def test_apply_takes_covered_blocks_from_the_incremental_and_the_rest_from_the_base(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    base, own = _table(rng, 200 * HBS, 0.5), _table(rng, 190 * HBS + 4096, 0.1)
    covered = _runs(rng, own.hash_blocks, 30)
    inside = set(block_indices(covered).tolist())
    b, o = _as_dict(base), _as_dict(own)
    want = {i: h for i, h in b.items() if i not in inside and i < own.hash_blocks}
    want.update({i: h for i, h in o.items() if i in inside})
    got = base.apply(covered, own)
    assert _as_dict(got) == want
    assert list(got.entries["index"]) == sorted(want)


@pytest.mark.parametrize("seed", range(8))
def test_first_difference_names_the_lowest_block_whose_hash_differs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = _table(rng, 100 * HBS, 0.5)
    d = _as_dict(a)
    changed = dict(d)
    at = int(rng.integers(0, 100))
    if at in changed and seed % 2:
        del changed[at]  # the block became zero
    else:
        changed[at] = rng.bytes(16)
    changed.update({j: rng.bytes(16) for j in range(at + 1, 100) if rng.random() < 0.2})
    b = HashTable.from_pairs(HBS, a.volume_size, sorted(changed.items()))
    assert a.first_difference(b) == at
    assert b.first_difference(a) == at
    assert a.first_difference(a) is None


def test_block_indices_lists_every_index_of_every_run_in_order() -> None:
    runs = Extents.from_pairs([(3, 5), (9, 10), (20, 24)])
    assert block_indices(runs).tolist() == [3, 4, 9, 20, 21, 22, 23]
    assert block_indices(Extents.empty()).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_hash_compare_covers_changed_emptied_and_resized_blocks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = _table(rng, 100 * HBS, 0.5)
    volume_size = 110 * HBS  # grown by 10 hash blocks
    touched = _runs(rng, 110, 25)
    indices = block_indices(touched)
    old = base.hashes(indices)
    new = [h if rng.random() < 0.7 else rng.bytes(16) for h in old]
    covered = compared(base, touched, np.frombuffer(b"".join(new), "V16"), volume_size)
    b = _as_dict(base)
    want = {i for i, o, n in zip(indices.tolist(), old, new, strict=True) if o != n}
    want |= {i for i in b if i not in set(indices.tolist())}  # held data, now nothing used
    want |= set(range(100, 110))
    assert set(block_indices(covered).tolist()) == want


def test_hash_compare_hashes_unused_bytes_as_zeros_in_every_block_whatever_was_read_before(
    tmp_path,
) -> None:
    from volpack.format.hashtable import block_hash
    from volpack.pipeline.changes import hash_compare
    from volpack.source import open_source

    rng = np.random.default_rng(5)
    size = 24 * HBS + 8192
    data = bytearray(rng.bytes(size))  # random everywhere: unused bytes are not zero on disk
    path = tmp_path / "v.img"
    path.write_bytes(data)
    starts = np.sort(rng.choice(size // 4096, 40, replace=False)) * 4096
    used = Extents.from_arrays(starts, np.minimum(starts + rng.integers(1, 300, 40) * 4096, size))
    seen = bytearray(size)  # what a restore of a backup with this used map holds
    for s, e in used:
        seen[s:e] = data[s:e]
    pairs = [
        (i, block_hash(seen[i * HBS : min((i + 1) * HBS, size)])) for i in range(-(-size // HBS))
    ]
    base = HashTable.from_pairs(HBS, size, pairs)
    src = open_source(str(path), "raw")
    try:
        found = hash_compare(src, used, base, threads=2)
    finally:
        src.close()
    assert found.covered.total() == 0, found.covered
    assert found.read_bytes == used.total()


@pytest.mark.parametrize("span", [1 << 16, 3 << 16, 4 << 20])
def test_hash_compare_finds_exactly_the_changed_blocks_whatever_order_tasks_end_in(
    tmp_path, monkeypatch, span
) -> None:
    """Many tasks in flight (64 KiB hash blocks, spans of one, three and 64 of them): each
    block's hash lands at its own index, so the blocks found are exactly the changed ones."""
    from volpack.format.hashtable import block_hash
    from volpack.pipeline import changes
    from volpack.source import open_source

    monkeypatch.setattr(changes, "_SPAN", span)
    hbs = 1 << 16
    rng = np.random.default_rng(11)
    size = 300 * hbs + 4096
    data = bytearray(rng.bytes(size))
    path = tmp_path / "v.img"
    path.write_bytes(data)
    used = Extents.from_pairs([(0, 120 * hbs), (130 * hbs + 4096, size)])
    changed = sorted(rng.choice(300, 25, replace=False).tolist())
    before = bytearray(size)
    for s, e in used:
        before[s:e] = data[s:e]
    for i in changed:  # the base held other bytes in these blocks
        before[i * hbs] ^= 0xFF
    pairs = [(i, block_hash(before[i * hbs : (i + 1) * hbs])) for i in range(-(-size // hbs))]
    base = HashTable.from_pairs(hbs, size, pairs)
    src = open_source(str(path), "raw")
    try:
        found = changes.hash_compare(src, used, base, threads=3)
    finally:
        src.close()
    # Changed blocks now used differ from the base; those now unused (120 … 129) held a byte
    # in the base and are empty now: every changed block, and no other, is to be covered.
    assert set(block_indices(found.covered).tolist()) == set(changed)
    assert found.read_bytes == used.total()
