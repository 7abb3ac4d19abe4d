"""A staging file cut short is refused with one clear error, never read back as zeros."""

from __future__ import annotations

import os

import pytest

import volpack
from volpack.compact.staging import Staging
from volpack.compact.table import AddressTable
from volpack.errors import SourceError
from volpack.extents import Extents
from volpack.source.base import PhysicalMap
from volpack.source.raw import RawSource


def _unnamed_fds_in(directory: str) -> list[int]:
    """This process's descriptors of unnamed (O_TMPFILE or unlinked) files made in ``directory``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.endswith(" (deleted)") and os.path.dirname(link) == directory:
            found.append(int(name))
    return found


def test_reading_past_the_end_of_a_staging_file_cut_short_raises_naming_the_numbers(tmp_path):
    vol = tmp_path / "v.img"
    vol.write_bytes(os.urandom(64 << 10))
    table = AddressTable.from_used(Extents.from_pairs([(0, 16)]), 4096)
    stage = Staging(str(tmp_path / "stage"), table.dense_size, force=False)
    try:
        src = RawSource(str(vol))
        try:
            stage.fill(src, table, PhysicalMap.unknown(src.size))
        finally:
            src.close()
        os.ftruncate(stage.fd, 40000)
        view = memoryview(bytearray(16384))
        stage.read(0, view[:4096])  # still there
        with pytest.raises(SourceError) as err:
            stage.read(32768, view)
    finally:
        stage.close()
    assert str(err.value).startswith(
        f"staging {tmp_path / 'stage'}: 16384 bytes expected at offset 32768, only 7232 before "
        "the end at offset 40000; it must hold the whole 65536-byte dense volume"
    )


def test_a_backup_whose_staging_file_is_cut_short_fails_and_leaves_no_archive(tmp_path):
    vol = tmp_path / "v.img"
    vol.write_bytes(os.urandom(4 << 20))
    arc = tmp_path / "v.vpk"
    cut = []

    def truncate_staging() -> None:  # the source is copied and released; the copy is not read yet
        for fd in _unnamed_fds_in(str(tmp_path)):
            os.ftruncate(fd, 1 << 20)
            cut.append(fd)

    with pytest.raises(SourceError, match=r"staging .*: 65536 bytes expected at offset 1048576"):
        volpack.backup(
            str(vol), str(arc), staging=str(tmp_path / "stage"), frame_size=65536,
            compress="none", detect="all-used", on_source_released=truncate_staging,
        )  # fmt: skip
    assert cut, "the staging file was not found"
    assert not arc.exists()
