"""Exact positioned I/O: whole reads or the caller's error, whole writes, on real descriptors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from volpack.errors import SourceError, TargetError, UsageError
from volpack.exactio import (
    IOV_MAX,
    Subject,
    pread_exact,
    preadv_exact,
    preadv_upto,
    pwrite_all,
    pwritev_all,
)

SRC = Subject("vol.img", SourceError, at_end="the volume shrank", on_error="check the disk")


@pytest.fixture
def fd(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def test_a_read_that_meets_the_end_of_the_file_raises_the_callers_family_with_the_numbers(fd):
    os.pwrite(fd, b"x" * 1000, 0)
    buf = bytearray(300)
    with pytest.raises(SourceError) as err:
        preadv_exact(fd, [memoryview(buf)], 900, SRC)
    assert str(err.value) == (
        "vol.img: 300 bytes expected at offset 900, only 100 before the end at offset 1000; "
        "the volume shrank"
    )


def test_a_read_inside_the_file_fills_every_buffer(fd):
    data = os.urandom(5000)
    os.pwrite(fd, data, 0)
    assert pread_exact(fd, 4000, 1000, SRC) == data[1000:]
    a, b = bytearray(10), bytearray(20)
    preadv_exact(fd, [memoryview(a), memoryview(b)], 7, SRC)
    assert bytes(a + b) == data[7:37]


def test_a_read_up_to_the_end_returns_how_many_bytes_there_were(fd):
    os.pwrite(fd, b"abc", 0)
    buf = bytearray(b"-" * 8)
    assert preadv_upto(fd, [memoryview(buf)], 1, SRC) == 2
    assert bytes(buf) == b"bc------"


def test_a_read_error_names_the_subject_and_offset_in_the_callers_family(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: read() fails with EISDIR
    try:
        with pytest.raises(SourceError, match=r"^vol\.img: read error at offset 4096 \(Is a "):
            pread_exact(fd, 10, 4096, SRC)
    finally:
        os.close(fd)


def test_more_buffers_than_the_kernel_takes_at_once_move_every_byte_in_order(fd):
    pieces = [os.urandom(7 + i % 5) for i in range(2 * IOV_MAX + 3)]
    pwritev_all(fd, [memoryview(p) for p in pieces], 11, SRC)
    joined = b"".join(pieces)
    assert os.pread(fd, len(joined) + 1, 11) == joined
    back = [bytearray(len(p)) for p in pieces]
    preadv_exact(fd, [memoryview(b) for b in back], 11, SRC)
    assert back == pieces


def test_no_space_left_raises_the_full_family_with_its_remedy():
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        full = Subject("staging s", SourceError, full=UsageError, on_full="choose a larger one")
        with pytest.raises(UsageError, match=r"^staging s: no space left at offset 512; choose a"):
            pwrite_all(fd, memoryview(b"z" * 100), 512, full)
        with pytest.raises(TargetError, match="no space left at offset 0$"):
            pwrite_all(fd, memoryview(b"z"), 0, Subject("t", TargetError))
    finally:
        os.close(fd)


def test_a_short_write_is_resumed_where_it_stopped(tmp_path):
    # A file size limit makes the kernel write only up to it (a real short count), and fail the
    # resumed write with EFBIG: the error must name the limit, where the first write stopped.
    script = textwrap.dedent(
        f"""
        import os, resource, signal
        from volpack.errors import TargetError
        from volpack.exactio import Subject, pwrite_all
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.RLIM_INFINITY))
        fd = os.open({str(tmp_path / "t")!r}, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            pwrite_all(fd, memoryview(b"w" * 9000), 1000, Subject("t", TargetError))
        except TargetError as exc:
            print(exc)
        print(os.fstat(fd).st_size)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["t: write error at offset 5000 (File too large)", "5000"]
    assert (tmp_path / "t").read_bytes()[1000:] == b"w" * 4000
