"""Early writeback: queued on regular files as they grow, never on pipes, never changes the data."""

import mmap
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


def _resident_bytes(path) -> int:
    """Bytes of ``path`` in the page cache: mincore(2) over a private mapping of it."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    size, page = os.path.getsize(path), mmap.PAGESIZE
    vec = ctypes.create_string_buffer((size + page - 1) // page)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        first = ctypes.c_char.from_buffer(m)  # never written: no page is copied
        rc = libc.mincore(ctypes.addressof(first), size, vec)
        del first
    assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(b & 1 for b in vec.raw) * page


def test_queued_spans_are_aligned_and_old_ones_leave_the_page_cache(tmp_path):
    """Queuing writeback up to an unaligned end makes the next write wait for the disk on its
    first page; spans LAG behind the writer are written and dropped from the cache."""
    path = tmp_path / "a.vpk"
    piece = os.urandom((3 << 20) + 17)
    w = FileWriter(str(path), force=False)
    wb = w._writeback
    total = 0
    while total < 96 << 20:
        w.write(piece)
        total += len(piece)
        assert wb.started % writeback.ALIGN == 0 and wb.dropped % writeback.ALIGN == 0
        assert wb.dropped <= max(0, wb.started - writeback.LAG)
    assert wb.dropped >= total - writeback.LAG - 2 * writeback.STEP - len(piece)
    resident = _resident_bytes(w._tmp)  # the archive is published at commit
    assert resident <= total - wb.dropped + mmap.PAGESIZE, (resident, total, wb.dropped)
    w.commit()
    data = path.read_bytes()
    assert len(data) == total
    assert all(data[i : i + len(piece)] == piece for i in range(0, total, len(piece)))
