"""The tape medium over the emulated drive: records, spanning, volume checks, read errors, files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from volpack.errors import (
    CorruptArchive,
    IncompleteArchive,
    MediumError,
    MediumFull,
    MediumNotFound,
    MediumTransient,
    UsageError,
)
from volpack.media import open_reader, open_writer
from volpack.media.tape import emulator as te
from volpack.media.tape import records as TR
from volpack.media.tape import tape_url

KiB, MiB = 1 << 10, 1 << 20
RS = 64 * KiB  # record size used by most tests (small tapes, many records)
NEXT = f"{sys.executable} -m volpack.media.tape next"


class Shelf:
    """Cartridges and drives under one temporary directory."""

    def __init__(self, root) -> None:
        self.root = str(root)

    def cart(self, name: str, capacity: int = 64 * MiB, early_warning: int = 512 * KiB) -> str:
        return te.create_cartridge(
            os.path.join(self.root, name), capacity=capacity, early_warning=early_warning
        )

    def drive(self, name: str, cart: str | None = None) -> str:
        path = os.path.join(self.root, name)
        if cart is None:
            te.unload(path)
        else:
            te.load(path, cart)
        return path


@pytest.fixture
def shelf(tmp_path) -> Shelf:
    return Shelf(tmp_path)


def write(url: str, data: bytes, chunk: int = 100_003, head: int | None = 4096, force=False):
    """Write ``data`` as one archive; the first ``head`` bytes are marked as its head (tables)."""
    w = open_writer(url, force=force)
    try:
        if head is not None and head <= len(data):
            w.write(data[:head])
            w.mark_head_end()
            data = data[head:]
        for i in range(0, len(data), chunk):
            w.write(data[i : i + chunk])
    except BaseException:
        w.abort()
        raise
    w.commit()
    return w


def read(url: str, bufsize: int = 77_777) -> bytes:
    r = open_reader(url)
    try:
        out = bytearray()
        buf = memoryview(bytearray(bufsize))
        while n := r.readinto(buf):
            out += buf[:n]
        return bytes(out)
    finally:
        r.close()


def spanning_set(shelf: Shelf, n: int, capacity: int = 3 * MiB) -> tuple[str, list[str], str]:
    """A drive with the first of ``n`` small cartridges loaded and a next command cycling them."""
    carts = [shelf.cart(f"c{i + 1}", capacity, 256 * KiB) for i in range(n)]
    drive = shelf.drive("drive", carts[0])
    return drive, carts, f"{NEXT} {drive} " + " ".join(carts)


def volume_headers(cart: str) -> list[tuple[TR.RecordHeader, TR.VolumeInfo]]:
    """The first record of every tape file on a cartridge, decoded."""
    files = te.cartridge_files(cart)
    out = []
    with open(os.path.join(cart, "data"), "rb") as f:
        raw = f.read()
    pos = 0
    for lengths in files:
        rec = memoryview(raw)[pos : pos + lengths[0]]
        hdr = TR.unpack_record(rec, cart)
        out.append((hdr, TR.unpack_volume_info(rec[TR.HEADER_SIZE :], cart)))
        pos += sum(lengths)
    return out


# --- one volume ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, RS - TR.HEADER_SIZE, 3 * (RS - TR.HEADER_SIZE) + 5, 5 * MiB]
)
def test_archive_reads_back_byte_identical_from_one_volume(shelf, size):
    drive = shelf.drive("d", shelf.cart("a"))
    data = os.urandom(size)
    write(f"tape+emu:{drive}?record-size={RS}#1", data)
    assert read(f"tape+emu:{drive}?record-size={RS}#1") == data


def test_every_record_has_the_record_size_and_the_last_data_record_is_padded(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    data = os.urandom(RS * 3 + 1000)
    write(f"tape+emu:{drive}?record-size={RS}", data)
    (lengths,) = te.cartridge_files(cart)
    assert set(lengths) == {RS}
    with open(os.path.join(cart, "data"), "rb") as f:
        raw = f.read()
    last_data = memoryview(raw)[-2 * RS : -RS]  # the end-of-archive record follows it
    hdr = TR.unpack_record(last_data, "test")
    assert hdr.kind == TR.DATA
    assert bytes(last_data[TR.HEADER_SIZE + hdr.payload_length :]) == bytes(
        RS - TR.HEADER_SIZE - hdr.payload_length
    )
    assert TR.unpack_record(memoryview(raw)[-RS:], "test").kind == TR.END_OF_ARCHIVE


def test_default_record_size_is_256_kib_and_recorded_in_the_volume_header(shelf):
    cart = shelf.cart("a")
    write(f"tape+emu:{shelf.drive('d', cart)}", os.urandom(MiB), head=4000)
    ((hdr, info),) = volume_headers(cart)
    assert info.record_size == 256 * KiB == TR.DEFAULT_RECORD
    assert hdr.volume == 1 and info.archive_offset == 0
    assert info.head_length == 4000 and info.flags & TR.FLAG_HEAD_MARKED


def test_read_at_is_refused_because_tape_is_sequential(shelf):
    drive = shelf.drive("d", shelf.cart("a"))
    write(f"tape+emu:{drive}", b"x" * 1000)
    r = open_reader(f"tape+emu:{drive}#1")
    try:
        assert r.size is None
        with pytest.raises(MediumError, match="sequential"):
            r.read_at(0, 10)
    finally:
        r.close()


def test_opening_a_tape_for_random_access_is_refused_before_the_drive_is_touched(shelf):
    import volpack

    drive = shelf.drive("d", shelf.cart("a"))
    write(f"tape+emu:{drive}", b"x" * 1000)
    busy = te.EmulatedTape(drive, write=False)  # a second opener of the drive would get EBUSY
    try:
        with pytest.raises(MediumError, match="cannot be opened for random access"):
            volpack.open_archive(f"tape+emu:{drive}#1")
    finally:
        busy.close()


# --- spanning -----------------------------------------------------------------------------


def test_enospc_mid_archive_spans_to_the_next_volume_and_reads_back_identical(shelf):
    drive, carts, nxt = spanning_set(shelf, 2)
    url = tape_url(f"tape+emu:{drive}", record_size=RS, next_command=nxt)
    data = os.urandom(4 * MiB)
    w = write(url, data, head=3000)
    assert w.volumes == 2
    first, second = (volume_headers(c) for c in carts)
    assert first[0][0].set_uuid == second[0][0].set_uuid == uuid.UUID(w.set_uuid).bytes
    assert (first[0][0].volume, second[0][0].volume) == (1, 2)
    # The second volume starts where the first stopped and carries the same table copy.
    assert second[0][1].archive_offset > 0 and second[0][1].head_length == 3000
    te.load(drive, carts[0])
    r_data = read(url)
    assert r_data == data


def test_three_volume_round_trip_over_a_device_list_is_equal(shelf):
    carts = [shelf.cart(f"c{i}", 2 * MiB, 256 * KiB) for i in range(3)]
    drives = [shelf.drive(f"d{i}", c) for i, c in enumerate(carts)]
    url = f"tape+emu:{','.join(drives)}?record-size={RS}"
    data = os.urandom(4 * MiB + 12345)
    assert write(url, data, head=5000).volumes == 3
    for d, c in zip(drives, carts, strict=True):
        te.load(d, c)  # back to BOT
    r = open_reader(url)
    try:
        out = bytearray()
        buf = memoryview(bytearray(MiB))
        while n := r.readinto(buf):
            out += buf[:n]
        assert r.volumes_read == 3
    finally:
        r.close()
    assert bytes(out) == data


def test_volume_size_closes_volumes_on_media_that_do_not_signal_the_end(shelf):
    drive, carts, nxt = spanning_set(shelf, 3, capacity=256 * MiB)
    url = tape_url(f"tape+emu:{drive}", record_size=RS, volume_size=20 * RS, next_command=nxt)
    data = os.urandom(40 * RS)
    assert write(url, data, head=100).volumes == 3
    for cart in carts:
        for lengths in te.cartridge_files(cart):
            assert len(lengths) <= 20
    te.load(drive, carts[0])
    assert read(url) == data


def test_hard_end_without_early_warning_still_spans_and_reads_back(shelf, caplog):
    # No early-warning zone: the record that hits the end is refused and no end-of-volume
    # record fits; the reader accepts the volume because the next one starts where it stopped.
    carts = [shelf.cart(f"c{i}", 2 * MiB, 0) for i in range(2)]
    drive = shelf.drive("d", carts[0])
    nxt = f"{NEXT} {drive} {carts[0]} {carts[1]}"
    url = tape_url(f"tape+emu:{drive}", record_size=RS, next_command=nxt)
    data = os.urandom(3 * MiB)
    assert write(url, data).volumes == 2
    te.load(drive, carts[0])
    assert read(url) == data
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2, warned
    assert "no room for the end-of-volume record" in warned[0]
    assert "the volume ends without an end record; continuing on volume 2" in warned[1]


def test_full_volume_without_a_next_volume_is_medium_full(shelf):
    drive = shelf.drive("d", shelf.cart("a", 2 * MiB, 256 * KiB))
    w = open_writer(f"tape+emu:{drive}?record-size={RS}")
    with pytest.raises(MediumFull, match="no next volume is configured"):
        w.write(os.urandom(4 * MiB))
        w.commit()
    w.abort()


def test_failing_next_command_stops_the_backup_with_a_medium_error(shelf):
    drive = shelf.drive("d", shelf.cart("a", 2 * MiB, 256 * KiB))
    url = tape_url(f"tape+emu:{drive}", record_size=RS, next_command="exit 3")
    w = open_writer(url)
    w.mark_head_end()
    with pytest.raises(MediumError, match="exited with status 3 before volume 2"):
        w.write(os.urandom(4 * MiB))
    w.abort()


def test_next_command_sees_the_volume_number_and_set(shelf, tmp_path):
    drive, carts, nxt = spanning_set(shelf, 2)
    log = tmp_path / "next.log"
    cmd = f'echo "$VOLPACK_TAPE_MODE $VOLPACK_TAPE_VOLUME $VOLPACK_TAPE_SET" >> {log}; {nxt}'
    url = tape_url(f"tape+emu:{drive}", record_size=RS, next_command=cmd)
    w = write(url, os.urandom(4 * MiB))
    assert log.read_text().split() == ["write", "2", w.set_uuid]


# --- refusing the wrong volume ------------------------------------------------------------


def _two_sets(shelf):
    """Two 2-volume archives (sets) written on separate cartridges."""
    out = []
    for s in ("x", "y"):
        carts = [shelf.cart(f"{s}{i}", 3 * MiB, 256 * KiB) for i in (1, 2)]
        drive = shelf.drive(f"d{s}", carts[0])
        url = tape_url(
            f"tape+emu:{drive}", record_size=RS, next_command=f"{NEXT} {drive} " + " ".join(carts)
        )
        w = write(url, os.urandom(4 * MiB))
        assert w.volumes == 2
        out.append((carts, w.set_uuid))
    return out


def test_volumes_presented_out_of_order_are_refused_naming_the_expected_one(shelf):
    drive, carts, _ = spanning_set(shelf, 3)
    nxt = f"{NEXT} {drive} {' '.join(carts)}"
    url = tape_url(f"tape+emu:{drive}", record_size=RS, next_command=nxt)
    w = write(url, os.urandom(7 * MiB))
    assert w.volumes == 3
    te.load(drive, carts[0])
    wrong = tape_url(f"tape+emu:{drive}", next_command=f"{NEXT} {drive} {carts[0]} {carts[2]}")
    with pytest.raises(
        MediumError,
        match=rf"out of order: this is volume 3 of tape set "
        rf"{w.set_uuid}; load volume 2 first",
    ):
        read(wrong)


def test_reading_must_start_with_volume_one(shelf):
    drive, carts, nxt = spanning_set(shelf, 2)
    write(tape_url(f"tape+emu:{drive}", record_size=RS, next_command=nxt), os.urandom(4 * MiB))
    te.load(drive, carts[1])
    with pytest.raises(MediumError, match="this is volume 2 of tape set .*; load volume 1 first"):
        read(f"tape+emu:{drive}")


def test_foreign_volume_is_refused_naming_the_expected_set(shelf):
    (xc, xset), (yc, yset) = _two_sets(shelf)
    drive = shelf.drive("r", xc[0])
    url = tape_url(f"tape+emu:{drive}", next_command=f"{NEXT} {drive} {xc[0]} {yc[1]}")
    with pytest.raises(
        MediumError,
        match=rf"foreign volume \(volume 2 of tape set {yset}\); load volume 2 of tape set {xset}",
    ):
        read(url)


def test_duplicate_volume_is_refused(shelf):
    drive, carts, nxt = spanning_set(shelf, 3)
    write(tape_url(f"tape+emu:{drive}", record_size=RS, next_command=nxt), os.urandom(7 * MiB))
    # The operator puts volume 2 back in when volume 3 is due.
    d2 = shelf.drive("d2", carts[1])
    d3 = shelf.drive("d3", carts[1])
    te.load(drive, carts[0])
    with pytest.raises(MediumError, match="duplicate: volume 2 .* was already read; load volume 3"):
        read(f"tape+emu:{drive},{d2},{d3}")


# --- read errors and incomplete archives --------------------------------------------------


def test_read_error_is_a_medium_error_and_never_the_end_of_data(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    write(f"tape+emu:{drive}?record-size={RS}", os.urandom(2 * MiB))
    te.inject_read_error(cart, 0, 10)
    te.load(drive, cart)
    r = open_reader(f"tape+emu:{drive}")
    got = 0
    with pytest.raises(MediumError, match=r"EIO.*not the end of the tape"):
        buf = memoryview(bytearray(RS))
        while n := r.readinto(buf):
            got += n
    r.close()
    assert 0 < got < 2 * MiB


def test_archive_cut_off_by_a_killed_writer_is_incomplete(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    script = textwrap.dedent(
        f"""
        import os
        from volpack.media import open_writer
        w = open_writer("tape+emu:{drive}?record-size={RS}")
        w.write(b"head")
        w.mark_head_end()
        w.write(os.urandom(3 << 20))
        os._exit(9)  # no commit, no abort: as if the machine went down
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    te.load(drive, cart)
    with pytest.raises(IncompleteArchive, match="without an end record .* incomplete"):
        read(f"tape+emu:{drive}")


def test_aborted_archive_is_refused_as_incomplete(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    w = open_writer(f"tape+emu:{drive}?record-size={RS}")
    w.write(b"head")
    w.mark_head_end()
    w.write(os.urandom(2 * MiB))
    w.abort()
    w.abort()
    te.load(drive, cart)
    with pytest.raises(IncompleteArchive, match="aborted"):
        read(f"tape+emu:{drive}")


def test_damaged_record_is_refused_as_corrupt(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    write(f"tape+emu:{drive}?record-size={RS}", os.urandom(MiB))
    with open(os.path.join(cart, "data"), "r+b") as f:
        f.seek(5 * RS + 1000)
        byte = f.read(1)
        f.seek(5 * RS + 1000)
        f.write(bytes([byte[0] ^ 1]))
    te.load(drive, cart)
    with pytest.raises(CorruptArchive, match="volume 1 record 5: record CRC-32"):
        read(f"tape+emu:{drive}")


# --- tape files ---------------------------------------------------------------------------


def test_second_archive_after_the_first_filemark_is_readable_by_file_number(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    one, two = os.urandom(MiB + 7), os.urandom(2 * MiB + 9)
    write(f"tape+emu:{drive}", one)
    write(f"tape+emu:{drive}", two)  # appends where the tape stands: after the filemark
    assert len(te.cartridge_files(cart)) == 2
    assert read(f"tape+emu:{drive}#2") == two
    assert read(f"tape+emu:{drive}#1") == one
    # Reading without #N continues where the tape stands: after archive 1 comes archive 2.
    te.load(drive, cart)
    assert read(f"tape+emu:{drive}") == one
    assert read(f"tape+emu:{drive}") == two


def test_file_number_beyond_the_last_file_is_not_found(shelf):
    drive = shelf.drive("d", shelf.cart("a"))
    write(f"tape+emu:{drive}", b"abc")
    with pytest.raises(MediumError, match="no volpack tape volume here"):
        read(f"tape+emu:{drive}#2")  # blank after the only file
    with pytest.raises(MediumNotFound, match="cannot space to file 5"):
        read(f"tape+emu:{drive}#5")


def test_writing_over_an_existing_tape_file_needs_force(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    write(f"tape+emu:{drive}", b"first")
    write(f"tape+emu:{drive}", b"second")
    with pytest.raises(MediumError, match="holds data at file 0 .* add --force"):
        open_writer(f"tape+emu:{drive}#1")
    write(f"tape+emu:{drive}#2", b"replaced", force=True)
    assert read(f"tape+emu:{drive}#2") == b"replaced"
    assert read(f"tape+emu:{drive}#1") == b"first"


# --- drives and URLs ----------------------------------------------------------------------


def test_empty_drive_is_medium_not_found(shelf):
    drive = shelf.drive("d")
    with pytest.raises(MediumNotFound, match="no tape loaded"):
        open_writer(f"tape+emu:{drive}")
    with pytest.raises(MediumNotFound, match="no such tape device"):
        open_reader(f"tape+emu:{shelf.root}/nowhere")


def test_drive_in_use_by_another_writer_is_transient(shelf):
    drive = shelf.drive("d", shelf.cart("a"))
    w = open_writer(f"tape+emu:{drive}")
    try:
        with pytest.raises(MediumTransient, match="in use"):
            open_reader(f"tape+emu:{drive}")
    finally:
        w.abort()


def test_write_protected_cartridge_is_refused(shelf):
    cart = te.create_cartridge(os.path.join(shelf.root, "ro"), capacity=MiB, write_protected=True)
    with pytest.raises(MediumError, match="write-protected"):
        open_writer(f"tape+emu:{shelf.drive('d', cart)}")


def test_a_path_that_is_not_a_tape_device_is_refused(tmp_path):
    path = tmp_path / "plain"
    path.write_bytes(b"")
    with pytest.raises(MediumError, match="not a tape device"):
        open_writer(f"tape:{path}")


@pytest.mark.parametrize(
    "url, message",
    [
        ("tape:", "no tape device"),
        ("tape:/dev/nst0#0", "not a file number"),
        ("tape:/dev/nst0#x", "not a file number"),
        ("tape:/dev/nst0?record-size=1000", "multiple of 512"),
        ("tape:/dev/nst0?record-size=64M", "between"),
        ("tape:/dev/nst0?colour=red", "unknown tape option 'colour'"),
        ("tape:/dev/nst0?record-size=64K&volume-size=100K", "fewer than 4 records"),
    ],
)
def test_bad_tape_urls_are_usage_errors(url, message):
    with pytest.raises(UsageError, match=message):
        open_writer(url)


def test_tape_url_folds_cli_options_into_the_query():
    url = tape_url(
        "tape:/dev/nst0#2",
        record_size=65536,
        volume_size=1 << 30,
        next_command="mtx -f /dev/sg1 next",
    )
    assert url.startswith("tape:/dev/nst0?record-size=65536&volume-size=1073741824&next=")
    assert url.endswith("#2")
    from volpack.media.tape.volumes import parse_tape_url

    parsed = parse_tape_url(url)
    assert parsed.next_command == "mtx -f /dev/sg1 next"
    assert (parsed.record_size, parsed.volume_size, parsed.file_number) == (65536, 1 << 30, 2)


def test_abort_before_the_head_is_known_leaves_the_tape_untouched(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    w = open_writer(f"tape+emu:{drive}")
    w.write(b"header and part of the tables")
    w.abort()
    assert te.cartridge_files(cart) == []


def test_reader_accepts_smaller_records_and_names_the_option_for_larger_ones(shelf):
    drive = shelf.drive("d", shelf.cart("a"))
    data = os.urandom(MiB)
    write(f"tape+emu:{drive}?record-size=32K", data)
    write(f"tape+emu:{drive}?record-size=1M", data)
    assert read(f"tape+emu:{drive}#1") == data  # read with the default 256 KiB buffer
    with pytest.raises(MediumError, match=r"larger than 262144 bytes.*--tape-record-size"):
        read(f"tape+emu:{drive}#2")
    assert read(f"tape+emu:{drive}?record-size=1M#2") == data


def test_table_copy_is_exactly_the_marked_head_even_beyond_one_mib(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    data = os.urandom(5 * MiB)
    write(f"tape+emu:{drive}", data, head=3 * MiB + 5)
    ((_, info),) = volume_headers(cart)
    assert info.head_length == 3 * MiB + 5 and info.flags & TR.FLAG_HEAD_MARKED
    r = open_reader(f"tape+emu:{drive}#1")
    try:
        assert r.head_copy == data[: 3 * MiB + 5]
    finally:
        r.close()


def test_without_a_mark_the_table_copy_is_the_first_mib(shelf):
    cart = shelf.cart("a")
    drive = shelf.drive("d", cart)
    data = os.urandom(40 * MiB)
    write(f"tape+emu:{drive}", data, head=None)
    ((_, info),) = volume_headers(cart)
    assert info.head_length == MiB and not info.flags & TR.FLAG_HEAD_MARKED
    assert read(f"tape+emu:{drive}#1") == data
