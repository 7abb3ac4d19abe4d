"""I/O buffers land at the phase asked for, and pools that count references still see them."""

from __future__ import annotations

import ctypes
import os

import pytest

from volpack.buffers import LINE, buffer, place
from volpack.format.random_access import _Recycled


def _phase(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % LINE


@pytest.mark.parametrize("phase", [0, 1, 16, 48, 63, 64, 4096 + 16, -48])
@pytest.mark.parametrize("size", [0, 1, 4095, 1 << 20])
def test_a_buffer_starts_at_the_phase_asked_for(size: int, phase: int) -> None:
    view = buffer(size, phase)
    assert len(view) == size and not view.readonly
    assert bytes(view) == bytes(size)
    if size:
        assert _phase(view) == phase % LINE


def test_place_keeps_the_bytearray_as_the_owner_and_stays_inside_it() -> None:
    raw = bytearray(1000 + LINE)
    for phase in range(LINE):
        view = place(raw, 1000, phase)
        assert view.obj is raw and len(view) == 1000 and _phase(view) == phase
        view[:] = b"\xaa" * 1000  # writes land inside raw, nothing past it
        view.release()
    assert len(raw) == 1000 + LINE


def test_a_read_into_a_placed_buffer_is_exact(tmp_path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in (0, 48, 4096 + 17, 1 << 20):
            view = buffer(1 << 20, offset)
            assert os.preadv(fd, [view], offset) == 1 << 20
            assert view == data[offset : offset + (1 << 20)]
    finally:
        os.close(fd)


def test_recycled_frame_buffers_still_come_back_once_no_view_holds_them() -> None:
    pool = _Recycled(4096 + LINE, keep=2)
    view = place(pool.get(), 4096, 48)  # as Archive._load does: only the view holds it
    owner = id(view.obj)
    part = view[100:200]
    del view
    other = place(pool.get(), 4096, 0)
    assert id(other.obj) != owner  # a slice of a placed view still holds its buffer
    del part
    assert id(pool.get()) == owner
