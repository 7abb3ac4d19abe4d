"""A new chain's hash block size, and the sampled checks that must not weaken with it."""

from __future__ import annotations

import numpy as np
import pytest

from volpack.errors import UsageError
from volpack.extents import Extents
from volpack.pipeline.backup import HASH_ENTRIES, check_hash_block, hash_block_for
from volpack.pipeline.changes import SAMPLE_MIN, _spans, sample_blocks, sample_indices

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("used", "block", "expected"),
    [
        (0, 4 * KiB, 64 * KiB),
        (1300 * MiB, 4 * KiB, 64 * KiB),
        (64 * GiB, 4 * KiB, 64 * KiB),  # exactly a million hash blocks
        (64 * GiB + 1, 4 * KiB, 128 * KiB),
        (TiB, 4 * KiB, MiB),
        (16 * TiB, 4 * KiB, 16 * MiB),
        (1 << 62, 4 * KiB, 64 * MiB),  # the format's largest, however much is used
        (0, MiB, MiB),  # never below a block
    ],
)
def test_a_new_chain_gets_the_smallest_hash_block_with_at_most_a_million_entries(
    used: int, block: int, expected: int
) -> None:
    assert hash_block_for(used, block) == expected
    assert expected == 64 * MiB or -(-used // expected) <= HASH_ENTRIES


@pytest.mark.parametrize("bad", [3 * MiB, 32 * KiB, 128 * MiB, 100_000])
def test_a_hash_block_outside_the_format_is_refused_with_its_bounds(bad: int) -> None:
    with pytest.raises(UsageError, match=r"--hash-block .*power of two from 65536 to 67108864"):
        check_hash_block(bad, 4 * KiB)
    check_hash_block(None, 4 * KiB)
    check_hash_block(64 * KiB, 4 * KiB)
    with pytest.raises(UsageError, match="from 1048576"):
        check_hash_block(512 * KiB, MiB)  # smaller than the block


def test_neighbouring_hash_blocks_are_hashed_together_in_bounded_spans() -> None:
    indices = np.array([0, 1, 2, 3, 4, 9, 10, 40], np.int64)
    assert _spans(indices, 2) == [(0, 2), (2, 2), (4, 1), (9, 2), (40, 1)]
    assert _spans(indices, 16) == [(0, 5), (9, 2), (40, 1)]
    assert _spans(np.zeros(0, np.int64), 16) == []


def test_small_hash_blocks_sample_as_many_bytes_as_1_mib_ones() -> None:
    """The sample is taken in 1 MiB spots: with 64 KiB hash blocks it hashes every candidate in
    the same spots as 1 MiB hash blocks would, never 16 lone 64 KiB blocks."""
    volume = 256 * MiB
    coarse = sample_blocks(Extents.span(0, volume // MiB), MiB)
    fine = sample_blocks(Extents.span(0, volume // (64 * KiB)), 64 * KiB)
    assert len(coarse) == SAMPLE_MIN and coarse[0] == 0 and coarse[-1] == volume // MiB - 1
    assert np.array_equal(np.unique(fine // 16), coarse)
    assert len(fine) == 16 * len(coarse)
    # candidates with holes: only candidates are sampled, spots chosen among spots holding one
    holes = Extents.from_pairs([(0, 3), (100, 101), (4000, 4096)])
    got = sample_blocks(holes, 64 * KiB)
    assert set(got.tolist()) <= set(range(0, 3)) | {100} | set(range(4000, 4096))
    assert 0 in got and 4095 in got
    # larger hash blocks than a spot: one hash block a spot, as before
    big = sample_blocks(Extents.span(0, 100), 4 * MiB)
    assert np.array_equal(big, sample_indices(Extents.span(0, 100), SAMPLE_MIN))
