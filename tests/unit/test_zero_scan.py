"""The zero scan keeps exactly the candidate blocks that hold a non-zero byte, whatever the
runs look like: long ones cut into tasks, scattered short ones packed into one, a short last
block, a volume that is all data or all zeros."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volpack.detect import zeros
from volpack.extents import Extents
from volpack.source.raw import open_raw
from volumes import scattered_blocks


def _reference(data: bytes, candidates: Extents, block_size: int) -> Extents:
    keep = []
    for start, end in candidates:
        for b in range(start, end):
            if any(data[b * block_size : (b + 1) * block_size]):
                keep.append((b, b + 1))
    return Extents.from_pairs(keep)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    block_size=st.sampled_from([512, 4096]),
    blocks=st.integers(1, 300),
    tail=st.integers(0, 511),
    seed=st.integers(0, 2**32 - 1),
    chunk_blocks=st.integers(1, 40),
    data_share=st.floats(0, 1),
)
def test_the_scan_keeps_exactly_the_non_zero_candidate_blocks(
    tmp_path_factory, monkeypatch, block_size, blocks, tail, seed, chunk_blocks, data_share
) -> None:
    rng = np.random.default_rng(seed)
    data = scattered_blocks(rng, blocks, block_size, tail, data_share)
    path = tmp_path_factory.mktemp("scan") / "v.img"
    path.write_bytes(data)
    pairs = []
    b = 0
    while b < blocks:
        n = int(rng.integers(1, 12))
        if rng.random() < 0.6:
            pairs.append((b, min(blocks, b + n)))
        b += n + int(rng.integers(0, 3))
    candidates = Extents.from_pairs(pairs)
    monkeypatch.setattr(zeros, "CHUNK", chunk_blocks * block_size)
    src = open_raw(str(path))
    try:
        found = zeros.nonzero_blocks(src, candidates, block_size)
    finally:
        src.close()
    assert found == _reference(bytes(data), candidates, block_size)
