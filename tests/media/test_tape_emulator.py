"""The emulated tape drive behaves like an st drive, and the real-device constants match mtio.h."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from volpack.media.tape import device as td
from volpack.media.tape import emulator as te

KiB = 1 << 10


@pytest.fixture
def drive(tmp_path):
    cart = te.create_cartridge(str(tmp_path / "cart"), capacity=100 * KiB, early_warning=30 * KiB)
    path = str(tmp_path / "drive")
    te.load(path, cart)
    return path


def _errno(call) -> int:
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


def test_ioctl_numbers_and_struct_sizes_match_sys_mtio_h(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot compile the <sys/mtio.h> oracle")
    src = tmp_path / "mtio.c"
    src.write_text(
        "#include <stdio.h>\n#include <sys/ioctl.h>\n#include <sys/mtio.h>\n"
        'int main(void){printf("%zu %zu %lu %lu %d %d %d %d %d %d %lu %lu\\n",'
        " sizeof(struct mtop), sizeof(struct mtget), (unsigned long)MTIOCTOP,"
        " (unsigned long)MTIOCGET, MTFSF, MTBSF, MTWEOF, MTREW, MTSETBLK, MTNOP,"
        " (unsigned long)GMT_EOT(~0UL), (unsigned long)GMT_BOT(~0UL)); return 0;}\n"
    )
    exe = tmp_path / "mtio"
    subprocess.run(["gcc", str(src), "-o", str(exe)], check=True)
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    ours = [
        td.MTOP.size,
        td.MTGET.size,
        td.MTIOCTOP,
        td.MTIOCGET,
        td.MTFSF,
        td.MTBSF,
        td.MTWEOF,
        td.MTREW,
        td.MTSETBLK,
        td.MTNOP,
        td.GMT_EOT,
        td.GMT_BOT,
    ]
    assert [int(x) for x in got] == ours


def test_write_entering_early_warning_succeeds_then_writes_alternately_fail(drive):
    tape = te.EmulatedTape(drive, write=True)
    try:
        rec = bytes(10 * KiB)
        for _ in range(7):  # 70 KiB: up to the start of the 30 KiB early-warning zone
            tape.write_record(rec)
        assert not tape.status().early_warning
        tape.write_record(rec)  # enters early warning: written
        assert tape.status().early_warning
        outcomes = []
        for _ in range(4):
            try:
                tape.write_record(rec)
                outcomes.append("ok")
            except OSError as exc:
                outcomes.append(errno.errorcode[exc.errno])
        assert outcomes == ["ENOSPC", "ok", "ENOSPC", "ok"]
        # 100 KiB written: the physical end refuses every further record.
        assert _errno(lambda: tape.write_record(rec)) == errno.ENOSPC
        assert _errno(lambda: tape.write_record(rec)) == errno.ENOSPC
        tape.write_filemark()
    finally:
        tape.close()
    assert te.cartridge_files(te.loaded(drive)) == [[10 * KiB] * 10]


def test_filemarks_read_as_zero_and_blank_tape_reads_zero_then_eio(drive):
    tape = te.EmulatedTape(drive, write=True)
    tape.write_record(b"a" * 100)
    tape.write_filemark()
    tape.write_record(b"b" * 200)
    tape.write_filemark()
    tape.rewind()
    buf = memoryview(bytearray(4096))
    assert tape.read_record(buf) == 100 and bytes(buf[:100]) == b"a" * 100
    assert tape.read_record(buf) == 0
    assert tape.status().file_number == 1
    assert tape.read_record(buf) == 200
    assert tape.read_record(buf) == 0
    assert tape.read_record(buf) == 0  # end of recorded data, reported once
    assert _errno(lambda: tape.read_record(buf)) == errno.EIO
    tape.close()


def test_spacing_over_filemarks_and_past_the_last_one(drive):
    tape = te.EmulatedTape(drive, write=True)
    for name in (b"x", b"y", b"z"):
        tape.write_record(name * 10)
        tape.write_filemark()
    tape.rewind()
    tape.forward_files(2)
    buf = memoryview(bytearray(100))
    assert tape.read_record(buf) == 10 and bytes(buf[:1]) == b"z"
    tape.rewind()
    assert _errno(lambda: tape.forward_files(4)) == errno.EIO
    tape.close()


def test_writing_in_the_middle_of_a_tape_erases_everything_after(drive):
    tape = te.EmulatedTape(drive, write=True)
    for name in (b"x", b"y", b"z"):
        tape.write_record(name * 10)
        tape.write_filemark()
    tape.rewind()
    tape.forward_files(1)
    tape.write_record(b"new")
    tape.close()
    assert te.cartridge_files(te.loaded(drive)) == [[10], [3]]


def test_record_larger_than_the_buffer_is_enomem(drive):
    tape = te.EmulatedTape(drive, write=True)
    tape.write_record(bytes(2000))
    tape.rewind()
    assert _errno(lambda: tape.read_record(memoryview(bytearray(1000)))) == errno.ENOMEM
    tape.close()


def test_injected_read_error_is_eio_at_that_record_only(drive):
    tape = te.EmulatedTape(drive, write=True)
    for i in range(3):
        tape.write_record(bytes([i]) * 10)
    tape.close()
    te.inject_read_error(te.loaded(drive), 0, 1)
    te.load(drive, te.loaded(drive))
    tape = te.EmulatedTape(drive, write=False)
    buf = memoryview(bytearray(100))
    assert tape.read_record(buf) == 10
    assert _errno(lambda: tape.read_record(buf)) == errno.EIO
    assert tape.read_record(buf) == 10 and buf[0] == 2
    tape.close()


def test_state_persists_across_processes_and_the_drive_is_exclusive(drive, tmp_path):
    tape = te.EmulatedTape(drive, write=True)
    tape.write_record(b"hello")
    assert _errno(lambda: te.EmulatedTape(drive, write=False)) == errno.EBUSY
    tape.close()  # leaves the head after the record, like a non-rewinding device
    script = (
        "import sys; from volpack.media.tape import emulator as te\n"
        "t = te.EmulatedTape(sys.argv[1], write=True)\n"
        "t.write_record(b'world'); t.write_filemark(); t.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, drive], check=True)
    assert te.cartridge_files(te.loaded(drive)) == [[5, 5]]


def test_no_cartridge_and_write_protection_are_reported_like_a_drive(tmp_path):
    empty = str(tmp_path / "empty")
    te.unload(empty)
    assert _errno(lambda: te.EmulatedTape(empty, write=False)) == errno.ENOMEDIUM
    ro = te.create_cartridge(str(tmp_path / "ro"), capacity=KiB, write_protected=True)
    te.load(empty, ro)
    assert _errno(lambda: te.EmulatedTape(empty, write=True)) == errno.EACCES
    te.EmulatedTape(empty, write=False).close()


def test_command_line_next_loads_the_following_cartridge_and_fails_after_the_last(tmp_path):
    run = [sys.executable, "-m", "volpack.media.tape"]
    carts = [str(tmp_path / n) for n in ("a", "b")]
    for c in carts:
        subprocess.run([*run, "new", c, "1M", "64K"], check=True)
    drive = str(tmp_path / "drive")
    subprocess.run([*run, "load", drive, carts[0]], check=True)
    subprocess.run([*run, "next", drive, *carts], check=True)
    assert te.loaded(drive) == os.path.abspath(carts[1])
    done = subprocess.run([*run, "next", drive, *carts], capture_output=True, text=True)
    assert done.returncode == 1 and "no cartridge after" in done.stderr
    assert te.cartridge_spec(carts[0]).capacity == 1 << 20


def test_the_earlier_command_name_still_loads_the_next_cartridge(tmp_path):
    carts = [te.create_cartridge(str(tmp_path / n), capacity=1 << 20) for n in ("a", "b")]
    drive = str(tmp_path / "drive")
    te.load(drive, carts[0])
    old = [sys.executable, "-m", "volpack.media.tape_emulator", "next", drive, *carts]
    subprocess.run(old, check=True)
    assert te.loaded(drive) == os.path.abspath(carts[1])
