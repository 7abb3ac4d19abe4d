"""Early writeback: queued on regular files as they grow, never on pipes, never changes the data."""

import os

from volpack import writeback
from volpack.media.file import FileWriter


def test_file_medium_queues_writeback_as_the_archive_grows(tmp_path):
    path = tmp_path / "a.vpk"
    data = os.urandom(1 << 20) * 20
    w = FileWriter(str(path), force=False)
    for pos in range(0, len(data), 3 << 20):
        w.write(data[pos : pos + (3 << 20)])
    wb = w._writeback
    assert wb.enabled, "sync_file_range is available on Linux and must be used"
    assert len(data) - writeback.STEP < wb.started <= len(data)
    w.commit()
    assert path.read_bytes() == data


def test_pipes_and_character_devices_get_no_writeback():
    r, w = os.pipe()
    try:
        wb = writeback.for_fd(w)
        assert not wb.enabled
        wb.wrote(64 << 20)  # a no-op, not an error
        assert wb.started == 0
    finally:
        os.close(r)
        os.close(w)
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        assert not writeback.for_fd(fd).enabled
    finally:
        os.close(fd)


def test_a_descriptor_that_refuses_it_turns_it_off_instead_of_failing():
    r, w = os.pipe()
    try:
        wb = writeback.Writeback(w)  # bypasses for_fd's check: the kernel says ESPIPE
        wb.wrote(32 << 20)
        assert not wb.enabled and wb.started == 0
    finally:
        os.close(r)
        os.close(w)
