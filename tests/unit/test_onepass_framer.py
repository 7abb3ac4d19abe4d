"""The one-read framer fills frames with exactly the dense volume the two-read way makes (zero
scan, then the copy), whatever the runs look like: known and candidate runs interleaved, runs
cut by frame ends, zero blocks dropped mid-frame, a short last block, a volume of zeros. The
runs it reports for the hash table name the bytes it filled."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volpack.compact.dense import DenseReader
from volpack.compact.onepass import Framer, TooManyRuns
from volpack.compact.table import AddressTable
from volpack.detect.zeros import scan_used
from volpack.extents import Extents
from volpack.source.raw import open_raw
from volumes import scattered_blocks


def _frames(framer: Framer, frame_size: int) -> tuple[bytes, list[int]]:
    """Every frame's bytes, and their lengths."""
    out, lengths = bytearray(), []
    while True:
        raw = memoryview(bytearray(frame_size))
        n, (volume, length, offset) = framer.fill(raw)
        if not n:
            return bytes(out), lengths
        # the runs tile the bytes filled, in volume order
        assert offset[0] == 0 and offset[-1] + length[-1] == n
        assert all(o + n_ == o2 for o, n_, o2 in zip(offset, length, offset[1:], strict=False))
        assert all(v + n_ < v2 for v, n_, v2 in zip(volume, length, volume[1:], strict=False))
        out += raw[:n]
        lengths.append(n)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    block_size=st.sampled_from([512, 4096]),
    blocks=st.integers(1, 300),
    tail=st.integers(0, 511),
    seed=st.integers(0, 2**32 - 1),
    frame_blocks=st.integers(1, 40),
    data_share=st.floats(0, 1),
)
def test_frames_hold_the_dense_volume_the_scan_and_copy_make(
    tmp_path_factory, block_size, blocks, tail, seed, frame_blocks, data_share
) -> None:
    rng = np.random.default_rng(seed)
    data = scattered_blocks(rng, blocks, block_size, tail, data_share)
    path = tmp_path_factory.mktemp("framer") / "v.img"
    path.write_bytes(data)
    known, candidates = [], []
    b = 0
    while b < blocks:
        n = int(rng.integers(1, 12))
        roll = rng.random()
        if roll < 0.25:
            known.append((b, min(blocks, b + n)))
        elif roll < 0.75:
            candidates.append((b, min(blocks, b + n)))
        b += n + int(rng.integers(0, 3))
    kn, cand = Extents.from_pairs(known), Extents.from_pairs(candidates)
    frame_size = frame_blocks * block_size
    src = open_raw(str(path))
    try:
        framer = Framer(src, kn, cand, block_size, max_runs=1 << 20)
        dense, lengths = _frames(framer, frame_size)
        used = scan_used(src, kn, cand, block_size)
        assert framer.used() == used
        table = AddressTable.from_used(used, block_size)
        expected = bytearray(table.dense_size)
        if len(expected):
            DenseReader(src, table).read(0, memoryview(expected))
        assert dense == bytes(expected)
        assert framer.dense_size == table.dense_size
        assert framer.exhausted
        assert all(n == frame_size for n in lengths[:-1])
    finally:
        src.close()


def test_a_used_map_past_the_run_limit_stops_the_framer(tmp_path) -> None:
    """Every other block holds data: 8 runs; with room for 4 the framer gives up at the fifth,
    before reading the rest of the volume."""
    bs = 4096
    data = bytearray(64 * bs)
    for b in range(0, 16, 2):
        data[b * bs] = 1
    data[40 * bs] = 1
    path = tmp_path / "v.img"
    path.write_bytes(data)
    src = open_raw(str(path))
    try:
        framer = Framer(src, Extents.empty(), Extents.span(0, 64), bs, max_runs=4)
        with pytest.raises(TooManyRuns):
            framer.fill(memoryview(bytearray(8 * bs)))
            framer.fill(memoryview(bytearray(8 * bs)))
        assert framer.read_bytes <= 16 * bs
    finally:
        src.close()
