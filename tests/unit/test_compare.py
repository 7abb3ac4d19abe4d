"""VolumeComparer's unused-block check on real sparse files: nonzero unused bytes are differences
where the archive's detector made them unused because they were zero, and counted once per block
as stale data elsewhere, also when a block straddles the comparer's read chunks."""

from __future__ import annotations

import os

from volpack.extents import Extents
from volpack.source.raw import open_raw
from volpack.targets.compare import VolumeComparer, zero_by_definition
from volumes import write_sparse

MiB = 1 << 20


def test_zero_by_definition_follows_the_recorded_detection_regions():
    regions = [
        {"start": 0, "end": 1000, "detector": "gpt"},
        {"start": 1000, "end": 5000, "detector": "ext4"},
        {"start": 5000, "end": 8000, "detector": "holes+zeros"},
    ]
    assert list(zero_by_definition({"regions": regions}, 8000)) == [(5000, 8000)]
    one = [{"start": 0, "end": 8000, "detector": "holes"}]
    assert list(zero_by_definition({"mode": "holes", "regions": one}, 8000)) == [(0, 8000)]
    # Nothing usable recorded: every unused byte must be zero (the strict reading).
    assert list(zero_by_definition(None, 8000)) == [(0, 8000)]
    assert list(zero_by_definition({"regions": [{"start": "x"}]}, 8000)) == [(0, 8000)]


def test_stale_blocks_are_counted_once_across_read_chunks(tmp_path):
    vol = str(tmp_path / "v.img")
    # Data from 5000 for 20 MiB: blocks 0..20 of 1 MiB hold nonzero bytes; chunks of 8 MiB start
    # inside blocks, so blocks 8 and 16 are each seen by two chunks.
    write_sparse(vol, 32 * MiB, [(5000, b"\x01" * (20 * MiB))])
    src = open_raw(vol)
    c = VolumeComparer(src, src.size)
    try:
        c.check_unused(Extents.empty(), Extents.empty(), MiB)
        count, ranges = c.stale()
        assert count == 21
        # One merged run of whole blocks, clipped to where the file has data (holes are zeros).
        assert len(ranges) == 1 and ranges[0][0] <= 5000 and ranges[0][1] >= 5000 + 20 * MiB
        assert c.differences() == ()
    finally:
        c.close()


def test_unused_nonzero_bytes_inside_the_zero_region_are_differences(tmp_path):
    vol = str(tmp_path / "v.img")
    write_sparse(vol, 4 * MiB, [(MiB + 10, os.urandom(100)), (3 * MiB, b"\x07" * 50)])
    src = open_raw(vol)
    c = VolumeComparer(src, src.size)
    try:
        c.check_unused(Extents.empty(), Extents.span(2 * MiB, 4 * MiB), 4096)
        assert c.differences() == ((3 * MiB, 3 * MiB + 50),)
        assert c.stale()[0] == 1
    finally:
        c.close()
