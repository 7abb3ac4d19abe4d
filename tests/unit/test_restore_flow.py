"""One restore sequence for every target (pipeline/restore.py ``restore_to``): the target is
opened only after the footer, trailer, head and the archive id asked for checked out, and it is
aborted on any failure after that, whichever target it is (file, qcow2, physical layout)."""

from __future__ import annotations

import pytest

import volpack
from volpack.errors import ArchiveReplaced, CorruptArchive, IncompleteArchive, UsageError
from volpack.format import records as R
from volpack.format.random_access import open_archive
from volpack.pipeline.restore import restore_physical, restore_to
from volpack.targets.raw import open_raw_target
from volumes import write_sparse

OTHER_ID = "00000000-0000-0000-0000-00000000abcd"


@pytest.fixture
def archive(tmp_path):
    vol, arc = tmp_path / "v.img", tmp_path / "v.vpk"
    write_sparse(str(vol), 300_000, [(0, b"a" * 70_000), (200_000, b"b" * 9000)])
    volpack.backup(str(vol), str(arc), frame_size=65536, compress="none")
    return arc


def test_the_target_is_opened_only_after_the_archive_checked_out(archive, tmp_path):
    opened: list[str] = []

    def opener(head):
        opened.append(head.header.uuid)
        return open_raw_target(str(tmp_path / "out.img"), force=False)

    with pytest.raises(ArchiveReplaced):
        restore_to(str(archive), opener, roles=[], expect_uuid=OTHER_ID)
    cut = tmp_path / "cut.vpk"
    cut.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(IncompleteArchive):
        restore_to(str(cut), opener, roles=[])
    assert opened == [] and not (tmp_path / "out.img").exists()
    done = restore_to(str(archive), opener, roles=[])
    assert opened == [done.header.uuid] and (tmp_path / "out.img").exists()


def test_a_damaged_frame_aborts_the_target_and_keeps_the_old_file(archive, tmp_path):
    data = bytearray(archive.read_bytes())
    # Flip a byte inside the first frame's data (stored raw): only the frame checksum sees it.
    with open_archive(str(archive)) as a:
        first = int(a.trailer.index["offset"][0])
    data[first + R.FRAME_HEADER_SIZE + 10] ^= 0xFF
    bad = tmp_path / "bad.vpk"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.img"
    out.write_bytes(b"old contents")
    for fmt in ("raw", "qcow2"):
        with pytest.raises(CorruptArchive):
            volpack.restore(str(bad), str(out), force=True, target_format=fmt)
        assert out.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vpk", "out.img", "v.img", "v.vpk"]


def test_physical_layout_goes_through_the_same_checks_before_any_pv_is_opened(archive, tmp_path):
    missing = str(tmp_path / "no-such-pv")
    with pytest.raises(ArchiveReplaced):
        restore_physical(str(archive), (missing,), force=True, expect_uuid=OTHER_ID)
    cut = tmp_path / "cut.vpk"
    cut.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(IncompleteArchive):
        restore_physical(str(cut), (missing,), force=True)
    with pytest.raises(UsageError, match="--layout physical is for LVM"):
        restore_physical(str(archive), (missing,), force=True)
