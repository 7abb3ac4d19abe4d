"""Two-phase mode reads the source once: the zero scan copies each used block to staging as it
finds it, and the archive is the same as direct mode's."""

from __future__ import annotations

import os

import pytest

import volpack
from volpack.compact.staging import one_pass_fits
from volpack.format.random_access import open_archive
from volpack.source.raw import open_raw
from volumes import allocated_bytes, same_bytes, write_sparse

MiB = 1 << 20


class _Counting:
    """A real raw source that counts the bytes read from it."""

    def __init__(self, path: str) -> None:
        self._src = open_raw(path)
        self.read = 0

    def __getattr__(self, name: str):
        return getattr(self._src, name)

    def read_into(self, offset: int, view: memoryview) -> None:
        self.read += len(view)
        self._src.read_into(offset, view)


def _volume(path: str) -> None:
    """Data, allocated zeros the scan must drop, a block whose first word is zero, holes, and a
    short last block."""
    size = 24 * MiB + 1000
    pieces = [
        (0, os.urandom(3 * MiB)),
        (3 * MiB, bytes(2 * MiB)),  # allocated, all zeros
        (5 * MiB, bytes(4096) + os.urandom(4096)),
        (5 * MiB + 2 * 4096 + 8, b"\x01"),  # a block with data past its first word
        (9 * MiB + 12345, os.urandom(MiB)),  # unaligned run
        (size - 1000, os.urandom(1000)),
    ]
    write_sparse(path, size, pieces)


@pytest.mark.parametrize("detect", ["auto", "zeros"])
def test_staging_reads_the_source_once_and_matches_direct_mode(tmp_path, detect) -> None:
    src = str(tmp_path / "v.img")
    _volume(src)
    direct = volpack.backup(
        src, str(tmp_path / "d.vpk"), frame_size=65536, detect=detect, allow_mounted=True
    )
    counting = _Counting(src)
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
