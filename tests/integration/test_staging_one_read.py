"""Two-phase mode reads the source once: the zero scan copies each used block to staging as it
finds it, and the archive is the same as direct mode's."""

from __future__ import annotations

import os

import pytest

import volpack
from volpack.compact.staging import one_pass_fits
from volpack.format.random_access import open_archive
from volumes import (
    CountingSource,
    allocated_bytes,
    same_bytes,
    write_scan_volume,
    write_sparse,
)

MiB = 1 << 20


@pytest.mark.parametrize("detect", ["auto", "zeros"])
def test_staging_reads_the_source_once_and_matches_direct_mode(tmp_path, detect) -> None:
    src = str(tmp_path / "v.img")
    write_scan_volume(src)
    direct = volpack.backup(
        src, str(tmp_path / "d.vpk"), frame_size=65536, detect=detect, allow_mounted=True
    )
    counting = CountingSource(src)
    staged = volpack.backup(
        src,
        str(tmp_path / "s.vpk"),
        frame_size=65536,
        detect=detect,
        staging=str(tmp_path / "stage"),
        allow_mounted=True,
        opened=counting,
    )
    # Each allocated byte once (the analysis of the volume's first blocks comes on top).
    assert counting.read <= allocated_bytes(src) + 2 * MiB
    assert not os.path.exists(tmp_path / "stage")
    assert staged.used_blocks == direct.used_blocks
    with open_archive(str(tmp_path / "d.vpk")) as a, open_archive(str(tmp_path / "s.vpk")) as b:
        assert a.table == b.table and a.used == b.used
        for seq in range(a.header.frame_count):
            assert a.frame(seq) == b.frame(seq)
    volpack.restore(str(tmp_path / "s.vpk"), str(tmp_path / "out.img"))
    assert same_bytes(src, str(tmp_path / "out.img"))


def test_a_volume_of_zeros_stages_nothing_and_restores(tmp_path) -> None:
    src = str(tmp_path / "z.img")
    write_sparse(src, 4 * MiB, [(0, bytes(4 * MiB))])
    r = volpack.backup(
        src, str(tmp_path / "z.vpk"), staging=str(tmp_path / "stage"), allow_mounted=True
    )
    assert r.used_blocks == 0
    volpack.restore(str(tmp_path / "z.vpk"), str(tmp_path / "out.img"))
    assert same_bytes(src, str(tmp_path / "out.img"))


def test_one_pass_needs_room_for_every_candidate_byte() -> None:
    # The dense volume is not known before the scan: one pass only when staging can hold every
    # byte the scan may keep; otherwise scan first and stage the exact dense volume after.
    assert one_pass_fits(room=10 * MiB, candidates=10 * MiB)
    assert not one_pass_fits(room=10 * MiB - 1, candidates=10 * MiB)
    assert not one_pass_fits(room=None, candidates=1)
