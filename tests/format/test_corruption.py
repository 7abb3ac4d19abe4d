"""Damaged archives: every truncation is refused as incomplete, flipped bytes are detected, and
hostile but checksummed fields are refused before anything large is allocated."""

import os
import pathlib
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import volpack
from spec_digest import spec_digest
from volpack.errors import CorruptArchive, FormatError, IncompleteArchive, UnsupportedArchive
from volpack.format import records as R
from volpack.format.random_access import open_archive
from volumes import write_sparse


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    """A few compressible frames, so the archive is small enough to cut at every byte."""
    d = tmp_path_factory.mktemp("arch")
    rng = random.Random(3)
    vol = str(d / "v.img")
    text = b"".join(b"line %d of a compressible volume\n" % i for i in range(3000))
    write_sparse(vol, 600_000, [(4096, text), (400_000, rng.randbytes(3000))])
    arc = str(d / "v.vpk")
    volpack.backup(vol, arc, frame_size=65536, compress="zstd:3", allow_mounted=True)
    return vol, arc, pathlib.Path(arc).read_bytes()


def boundaries(data: bytes) -> list[int]:
    """Archive offsets where records and frames start, from the reader's own index."""
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        with open_archive(f.name) as a:
            frames = a.trailer.index["offset"].tolist()
            trailer = a.footer.trailer_offset
    head = [0, R.HEADER_SIZE]
    return sorted(set(head + frames + [trailer, len(data) - R.FOOTER_SIZE]))


def stream_check(data: bytes, tmp_path) -> None:
    path = tmp_path / "cut.vpk"
    path.write_bytes(data)
    volpack.verify(str(path))


def truncation_points(data: bytes, exhaustive: bool) -> list[int]:
    """Record and frame boundaries (and one byte either side) plus the last 64 KiB: every byte
    of it when exhaustive, else the last 2 KiB and a sample of the rest."""
    points = {p + d for p in boundaries(data) for d in (-1, 0, 1)}
    tail = range(max(0, len(data) - 65536), len(data))
    if exhaustive:
        points |= set(tail)
    else:
        points |= set(tail[-1024:]) | set(random.Random(1).sample(tail, min(200, len(tail))))
    return sorted(p for p in points if 0 <= p < len(data))


def test_every_truncation_point_is_refused_as_incomplete(small_archive, tmp_path):
    check_truncations(small_archive, tmp_path, exhaustive=False)


@pytest.mark.slow
def test_every_byte_of_the_last_64_kib_truncated_is_refused(small_archive, tmp_path):
    check_truncations(small_archive, tmp_path, exhaustive=True)


def check_truncations(small_archive, tmp_path, exhaustive: bool) -> None:
    _, _, data = small_archive
    points = truncation_points(data, exhaustive)
    # Both readers: sequential (verify, pipe restore) and random access (footer first).
    for n in points:
        cut = data[:n]
        path = tmp_path / "cut.vpk"
        path.write_bytes(cut)
        with pytest.raises((IncompleteArchive, CorruptArchive)) as e1:
            volpack.verify(str(path))
        if n >= 8:
            assert isinstance(e1.value, IncompleteArchive), (n, e1.value)
        with pytest.raises(FormatError):
            open_archive(str(path))


def test_restore_of_a_truncated_archive_writes_no_target(small_archive, tmp_path):
    _, _, data = small_archive
    path = tmp_path / "cut.vpk"
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.img"
    with pytest.raises(IncompleteArchive, match="incomplete archive"):
        volpack.restore(str(path), str(out))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cut.vpk"], "no temporary file left behind"


def flipped(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x20
    return bytes(b)


def test_a_flip_in_any_header_trailer_or_footer_byte_is_detected(small_archive, tmp_path):
    _, _, data = small_archive
    with open_archive_bytes(data, tmp_path) as a:
        trailer = a.footer.trailer_offset
    positions = list(range(R.HEADER_SIZE)) + list(range(trailer, len(data)))
    for pos in positions:
        with pytest.raises(FormatError):
            stream_check(flipped(data, pos), tmp_path)


def test_flips_in_tables_and_sampled_frame_bytes_are_detected_by_verify_and_refused_by_restore(
    small_archive, tmp_path
):
    _, _, data = small_archive
    with open_archive_bytes(data, tmp_path) as a:
        first_frame = int(a.trailer.index["offset"][0])
        trailer = a.footer.trailer_offset
    rng = random.Random(5)
    positions = list(range(R.HEADER_SIZE, first_frame)) + rng.sample(
        range(first_frame, trailer), 300
    )
    out = tmp_path / "out.img"
    for pos in positions:
        with pytest.raises(FormatError):
            stream_check(flipped(data, pos), tmp_path)
    for pos in positions[::25]:
        (tmp_path / "bad.vpk").write_bytes(flipped(data, pos))
        with pytest.raises(FormatError):
            volpack.restore(str(tmp_path / "bad.vpk"), str(out))
        assert not out.exists()


class open_archive_bytes:
    def __init__(self, data: bytes, tmp_path) -> None:
        self.path = tmp_path / "whole.vpk"
        self.path.write_bytes(data)

    def __enter__(self):
        self.archive = open_archive(str(self.path))
        return self.archive

    def __exit__(self, *exc):
        self.archive.close()


def forge_header(data: bytes, **fields) -> bytes:
    """Rewrite header fields and recompute its checksum (a hostile but well-formed header)."""
    names = [
        "magic",
        "major",
        "minor",
        "hlen",
        "incompat",
        "compat",
        "uuid",
        "bs",
        "fs",
        "vsize",
        "used",
        "created",
        "codec",
        "level",
        "csum",
        "dig",
        "hbs",
        "chain_id",
        "chain_seq",
        "base_uuid",
        "base_digest",
        "base_state",
        "base_size",
        "reserved",
    ]
    values = dict(zip(names, R.HEADER.unpack_from(data), strict=True))
    values.update(fields)
    body = R.HEADER.pack(*[values[n] for n in names])
    return body + R.checksum(body).to_bytes(8, "little") + data[R.HEADER_SIZE :]


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"bs": 0}, "block_size 0"),
        ({"bs": 3000}, "block_size 3000"),
        ({"fs": 1 << 40 & 0xFFFFFFFF or 3}, "frame_size"),
        ({"vsize": (1 << 64) - 1}, "volume_size"),
        ({"used": 1 << 62}, "used_blocks"),
    ],
)
def test_hostile_checksummed_header_fields_are_refused(small_archive, tmp_path, fields, message):
    _, _, data = small_archive
    with pytest.raises(CorruptArchive, match=message):
        stream_check(forge_header(data, **fields), tmp_path)


def test_unknown_major_version_is_refused_naming_both_versions(small_archive, tmp_path):
    _, _, data = small_archive
    with pytest.raises(UnsupportedArchive, match=r"version 2\.0.*reads 1\.x"):
        stream_check(forge_header(data, major=2, minor=0), tmp_path)


def test_unimplemented_incompatible_feature_is_refused_by_name(small_archive, tmp_path):
    _, _, data = small_archive
    # ENCRYPTED (bit 0) since 1.3, METADIGEST (4) and FINE (5) since 1.4; bit 6 is not defined.
    with pytest.raises(UnsupportedArchive, match="bit 6"):
        stream_check(forge_header(data, incompat=R.FEATURE_BOUND | 1 << 6), tmp_path)


def test_fine_coverage_without_incremental_is_damage(small_archive, tmp_path):
    _, _, data = small_archive
    bits = R.WRITTEN_INCOMPAT | R.FEATURE_FINE
    with pytest.raises(CorruptArchive, match="FINE feature bit without INCREMENTAL"):
        stream_check(forge_header(data, incompat=bits), tmp_path)


def test_table_length_larger_than_the_archive_fails_without_allocating_it(small_archive, tmp_path):
    _, _, data = small_archive
    pos = R.HEADER_SIZE  # the DESC record header
    tag, flags, length, psum = R.RECORD.unpack_from(data, pos)
    desc_end = pos + R.RECORD_SIZE + length
    # A PMAP record claiming 3 GiB (under the 4 GiB bound) in a 150 KB archive.
    head = R.RECORD.pack(b"PMAP", 0, 3 << 30, 0)
    forged = (
        data[:desc_end]
        + head
        + R.checksum(head).to_bytes(8, "little")
        + data[desc_end + R.RECORD_SIZE :]
    )
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(IncompleteArchive):
        stream_check(forged, tmp_path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 256 * 1024


def test_address_table_run_past_the_volume_is_refused():
    h = R.Header("00000000-0000-0000-0000-000000000001", 4096, 65536, 8192, 2, 0)
    payload = struct.pack("<Q", 1) + struct.pack("<QQQ", 1, 0, 2)
    with pytest.raises(CorruptArchive, match="reaches block 3, volume has 2"):
        R.decode_atab(payload, h, "test")


def test_bytes_after_the_footer_are_refused(small_archive, tmp_path):
    _, _, data = small_archive
    with pytest.raises(CorruptArchive, match="after the footer"):
        stream_check(data + b"x", tmp_path)


def test_not_an_archive_is_named_as_such(tmp_path):
    p = tmp_path / "x.vpk"
    p.write_bytes(os.urandom(5000))
    with pytest.raises(CorruptArchive, match="not a volpack archive"):
        volpack.verify(str(p))


# -- format 1.1: frames bound to archive and position, head hash, digest over the trailer --------
KiB = 1024
PAIR_SIZE = 512 * KiB
PAIR_RUNS = [(0, 128 * KiB), (256 * KiB, 384 * KiB)]  # two address table runs, 4 frames of 64 KiB


@pytest.fixture(scope="module")
def raw_pair(tmp_path_factory):
    """Two uncompressed archives of identical geometry (same used map, frame size, lengths) and
    different data: every frame of one fits exactly where the same frame of the other is."""
    d = tmp_path_factory.mktemp("pair")
    out = []
    for seed in (1, 2):
        rng = random.Random(seed)
        vol = str(d / f"v{seed}.img")
        write_sparse(vol, PAIR_SIZE, [(a, rng.randbytes(b - a)) for a, b in PAIR_RUNS])
        arc = str(d / f"v{seed}.vpk")
        volpack.backup(vol, arc, frame_size=65536, compress="none", allow_mounted=True)
        out.append((vol, arc, pathlib.Path(arc).read_bytes()))
    return out


def layout(data: bytes) -> tuple[list[int], int, int]:
    """(frame header offsets, head length, trailer offset) read straight from the bytes."""
    foot = data[-R.FOOTER_SIZE :]
    _, toff, _tlen, *_ = R.FOOTER.unpack_from(foot)
    payload = data[toff + R.RECORD_SIZE : -R.FOOTER_SIZE]
    header = R.Header.decode(data[: R.HEADER_SIZE])
    offsets = R.split_trailer(payload, "", header.bound, header.hashed).index["offset"].tolist()
    return offsets, offsets[0] if offsets else toff, toff


def index_at(data: bytes) -> int:
    """Archive offset of the trailer's frame index (after the fixed fields and the copies)."""
    offsets, head_len, toff = layout(data)
    return toff + R.RECORD_SIZE + R.TRAILER_FIXED.size + head_len


def reseal(data: bytes, *, digest: bool = False) -> bytes:
    """Recompute the TRLR record's checksums after an edit (and with ``digest`` the archive digest
    too: a forger's full recomputation); lengths are unchanged, so the footer still holds."""
    _, _, toff = layout(data)
    payload = data[toff + R.RECORD_SIZE : -R.FOOTER_SIZE]
    if digest:
        body = payload[: -R.DIGEST_SIZE]
        payload = body + spec_digest(data[:toff], body)
    return data[:toff] + R.encode_record(R.TAG_TRLR, payload) + data[-R.FOOTER_SIZE :]


def rechecksummed_record(record: bytes) -> bytes:
    tag, _flags, _length, _psum = R.RECORD.unpack_from(record)
    return R.encode_record(tag, record[R.RECORD_SIZE :])


def renumbered_frame(frame: bytes, seq: int) -> bytes:
    """A frame whose header is rewritten (checksum recomputed) to sit at position ``seq``."""
    tag, codec, flags, res, _seq, _doff, raw, stored, rsum = R.FRAME.unpack_from(frame)
    body = R.FRAME.pack(tag, codec, flags, res, seq, seq * 65536, raw, stored, rsum)
    return body + R.checksum(body).to_bytes(8, "little") + frame[R.FRAME_HEADER_SIZE :]


def refused_everywhere(data: bytes, tmp_path, match: str, *, on_open: bool) -> None:
    """verify, restore (no target left behind) and random access (on open, or when the damaged
    bytes are read) all refuse the archive ``data``."""
    path = tmp_path / "edited.vpk"
    path.write_bytes(data)
    with pytest.raises(CorruptArchive, match=match):
        volpack.verify(str(path))
    out = tmp_path / "out.img"
    with pytest.raises(CorruptArchive):
        volpack.restore(str(path), str(out))
    assert not out.exists()
    if on_open:
        with pytest.raises(CorruptArchive, match=match):
            open_archive(str(path))
    else:
        with open_archive(str(path)) as a, pytest.raises(CorruptArchive, match=match):
            a.read(0, a.size)


def test_two_frames_swapped_with_their_headers_renumbered_are_refused_by_every_reader(
    raw_pair, tmp_path
):
    _, _, data = raw_pair[0]
    offsets, _, toff = layout(data)
    bounds = offsets + [toff]
    f1, f2 = (data[bounds[i] : bounds[i + 1]] for i in (1, 2))
    assert len(f1) == len(f2)
    swapped = (
        data[: bounds[1]] + renumbered_frame(f2, 1) + renumbered_frame(f1, 2) + data[bounds[3] :]
    )
    refused_everywhere(swapped, tmp_path, "frame 1 checksum", on_open=False)


def test_a_frame_copied_from_another_archive_of_identical_geometry_is_refused(raw_pair, tmp_path):
    (_, _, a), (_, _, b) = raw_pair
    offsets, _, toff = layout(a)
    assert layout(b) == (offsets, offsets[0], toff), "the two archives have identical geometry"
    start, end = offsets[2], offsets[3]
    mixed = a[:start] + b[start:end] + a[end:]
    refused_everywhere(mixed, tmp_path, "frame 2 checksum", on_open=False)


def test_random_access_reads_the_frames_around_a_foreign_one(raw_pair, tmp_path):
    (vol, _, a), (_, _, b) = raw_pair
    offsets, _, _ = layout(a)
    path = tmp_path / "mixed.vpk"
    path.write_bytes(a[: offsets[2]] + b[offsets[2] : offsets[3]] + a[offsets[3] :])
    volume = pathlib.Path(vol).read_bytes()
    with open_archive(str(path)) as arc:
        assert arc.read(0, 128 * KiB) == volume[: 128 * KiB]  # frames 0 and 1
        assert arc.read(320 * KiB, 64 * KiB) == volume[320 * KiB : 384 * KiB]  # frame 3
        with pytest.raises(CorruptArchive, match="frame 2 checksum"):
            arc.read(256 * KiB, 4096)


def edited_atab(record: bytes) -> bytes:
    """The ATAB record with its second run moved 16 blocks up (still a valid table), record
    checksums recomputed."""
    payload = bytearray(record[R.RECORD_SIZE :])
    first = 8 + R.ATAB_DTYPE.itemsize
    vblock = int.from_bytes(payload[first : first + 8], "little")
    payload[first : first + 8] = (vblock + 16).to_bytes(8, "little")
    return R.encode_record(R.TAG_ATAB, bytes(payload))


def atab_record(data: bytes) -> tuple[bytes, int]:
    _, head_len, _ = layout(data)
    head = data[:head_len]
    pos = head.index(b"ATAB")
    return head[pos:], pos


def test_a_trailer_table_edited_with_its_checksums_recomputed_is_refused(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    record, head_pos = atab_record(data)
    _, _, toff = layout(data)
    copy_pos = data.index(record, toff)
    edited = reseal(data[:copy_pos] + edited_atab(record) + data[copy_pos + len(record) :])
    refused_everywhere(edited, tmp_path, "differs from the head|head hash", on_open=True)
    with pytest.raises(CorruptArchive, match="hash to .* its head hash is"):
        open_archive(str(tmp_path / "edited.vpk"))


def test_a_head_table_edited_with_its_checksums_recomputed_is_refused(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    record, pos = atab_record(data)
    edited = data[:pos] + edited_atab(record) + data[pos + len(record) :]
    refused_everywhere(
        edited, tmp_path, "differs from the trailer's copy|differs from the head", on_open=True
    )


def test_head_and_trailer_tables_edited_alike_are_refused_by_the_head_hash(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    record, pos = atab_record(data)
    _, _, toff = layout(data)
    copy_pos = data.index(record, toff)
    new = edited_atab(record)
    edited = data[:pos] + new + data[pos + len(record) : copy_pos] + new
    edited = reseal(edited + data[copy_pos + len(record) :])
    refused_everywhere(edited, tmp_path, "head hash", on_open=True)


def test_an_edited_head_hash_with_the_trailer_checksum_recomputed_is_refused(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    _, _, toff = layout(data)
    at = toff + R.RECORD_SIZE + 32  # head_hash
    edited = reseal(data[:at] + bytes(32) + data[at + 32 :])
    refused_everywhere(edited, tmp_path, "head hash", on_open=True)


def test_the_digest_covers_the_trailer_up_to_the_digest(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    offsets, _, toff = layout(data)
    # A reserved byte of the last frame index entry: no other check looks at it.
    at = index_at(data) + len(offsets) * R.INDEX_DTYPE.itemsize - 1
    edited = reseal(data[:at] + b"\x01" + data[at + 1 :])
    (tmp_path / "e.vpk").write_bytes(edited)
    with pytest.raises(CorruptArchive, match="archive digest"):
        volpack.verify(str(tmp_path / "e.vpk"))


def test_verify_checks_the_frame_index_against_the_frames_it_read(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    stored_at = index_at(data) + R.INDEX_DTYPE.itemsize + 8  # frame 1's stored_length
    wrong = (65536 - 100).to_bytes(4, "little")
    # Even with every checksum and the digest recomputed, the index disagrees with the frames.
    edited = reseal(data[:stored_at] + wrong + data[stored_at + 4 :], digest=True)
    refused_everywhere(edited, tmp_path, "frame 1 stored length|does not tile", on_open=True)


def test_a_1_0_archive_whose_head_differs_from_the_trailer_is_refused_by_random_access(tmp_path):
    golden = pathlib.Path(__file__).parent.joinpath("golden", "v1.0.vpk").read_bytes()
    pos = golden.index(b"ATAB", R.HEADER_SIZE)
    end = golden.index(b"FRAM", pos)
    record = golden[pos:end]
    path = tmp_path / "old.vpk"
    path.write_bytes(golden[:pos] + edited_atab(record) + golden[end:])
    with pytest.raises(CorruptArchive, match="differs from the trailer's copy"):
        open_archive(str(path))


def test_a_1_1_header_without_the_bound_bit_is_refused(small_archive, tmp_path):
    _, _, data = small_archive
    with pytest.raises(CorruptArchive, match="without the BOUND feature bit"):
        stream_check(forge_header(data, incompat=0), tmp_path)


def test_an_unknown_incompatible_bit_is_refused_as_unsupported_naming_it(small_archive, tmp_path):
    _, _, data = small_archive
    forged = forge_header(data, incompat=R.FEATURE_BOUND | 1 << 9)
    with pytest.raises(UnsupportedArchive, match="bit 9") as e:
        stream_check(forged, tmp_path)
    assert e.value.exit_code == 6


def mixed_archive(raw_pair) -> bytes:
    """Archive 1 with its frame 2 taken from archive 2 (identical geometry)."""
    (_, _, a), (_, _, b) = raw_pair
    offsets, _, _ = layout(a)
    return a[: offsets[2]] + b[offsets[2] : offsets[3]] + a[offsets[3] :]


def test_a_foreign_frame_is_refused_when_restored_from_tape(raw_pair, tmp_path):
    from volpack.media import open_writer
    from volpack.media.tape import emulator as te
    from volpack.media.tape import tape_url

    cart = te.create_cartridge(str(tmp_path / "cart"), capacity=8 << 20, early_warning=1 << 20)
    drive = str(tmp_path / "drive")
    te.load(drive, cart)
    url = tape_url(f"tape+emu:{drive}")
    medium = open_writer(url)
    medium.write(mixed_archive(raw_pair))
    medium.commit()
    te.load(drive, cart)  # reloading rewinds
    with pytest.raises(CorruptArchive, match="frame 2 checksum"):
        volpack.verify(url)
    te.load(drive, cart)
    out = tmp_path / "out.img"
    with pytest.raises(CorruptArchive, match="frame 2 checksum"):
        volpack.restore(url, str(out))
    assert not out.exists()


def test_a_foreign_frame_is_refused_through_s3_ranged_reads(raw_pair, s3_bucket):
    from volpack.media import open_writer

    url = f"s3://{s3_bucket}/mixed.vpk"
    medium = open_writer(url)
    medium.write(mixed_archive(raw_pair))
    medium.commit()
    with open_archive(url) as a:
        assert len(a.read(0, 4096)) == 4096
        with pytest.raises(CorruptArchive, match="frame 2 checksum"):
            a.read(256 * KiB, 4096)


def serve(archive, tmp_path) -> tuple[subprocess.Popen, str, pathlib.Path]:
    sock = tmp_path / "vp.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "serve", "--socket", str(sock), "--name", "v", archive],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, f"nbd+unix:///v?socket={sock}", sock


def test_volpack_serve_gives_eio_for_a_foreign_frame_and_nbdcopy_fails(raw_pair, tmp_path):
    if shutil.which("nbdcopy") is None:
        pytest.skip("nbdcopy is not installed (scripts/test.sh installs it)")
    path = tmp_path / "mixed.vpk"
    path.write_bytes(mixed_archive(raw_pair))
    proc, url, sock = serve(str(path), tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "volpack serve did not start"
            time.sleep(0.1)
        copy = subprocess.run(
            ["nbdcopy", url, str(tmp_path / "copy.img")], capture_output=True, text=True, timeout=60
        )
        assert copy.returncode != 0
        assert "Input/output error" in copy.stderr or "EIO" in copy.stderr, copy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)  # reaps it and closes its pipes


def test_volpack_serve_refuses_an_archive_with_an_edited_trailer_table(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    record, _ = atab_record(data)
    _, _, toff = layout(data)
    copy_pos = data.index(record, toff)
    path = tmp_path / "edited.vpk"
    path.write_bytes(reseal(data[:copy_pos] + edited_atab(record) + data[copy_pos + len(record) :]))
    proc, _, _ = serve(str(path), tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 4
    assert len(err.strip().splitlines()) == 1 and "head hash" in err, err


# -- rules of 1.1 for every version: flags, unknown values, check order, lengths, gaps, footer ----
def with_trailer(data: bytes, toff: int, payload: bytes) -> bytes:
    """``data`` up to ``toff``, then a TRLR record of ``payload`` (with the digest recomputed)
    and a footer to match: a consistent archive except for what the caller changed."""
    body = payload[: -R.DIGEST_SIZE]
    try:
        payload = body + spec_digest(data[:toff], body)
    except ValueError:  # parts that do not tile (a gap): the spec defines no digest for them
        payload = body + bytes(R.DIGEST_SIZE)
    trailer = R.encode_record(R.TAG_TRLR, payload)
    h = R.Header.decode(data[: R.HEADER_SIZE])
    length = toff + len(trailer) + R.FOOTER_SIZE
    footer = R.Footer(toff, len(trailer), h.uuid, h.major, h.minor, length)
    return data[:toff] + trailer + R.encode_footer(footer)


def test_set_flag_bits_in_a_record_or_frame_are_unsupported_exit_6(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    offsets, _, _ = layout(data)
    # A frame header with flags 0x01 and a good checksum.
    off = offsets[1]
    fields = list(R.FRAME.unpack_from(data, off))
    fields[2] = 1
    body = R.FRAME.pack(*fields)
    frame = body + R.checksum(body).to_bytes(8, "little")
    forged = data[:off] + frame + data[off + R.FRAME_HEADER_SIZE :]
    (tmp_path / "f.vpk").write_bytes(forged)
    with pytest.raises(UnsupportedArchive, match="frame 1: flags 0x1") as e:
        volpack.verify(str(tmp_path / "f.vpk"))
    assert e.value.exit_code == 6
    with open_archive(str(tmp_path / "f.vpk")) as a, pytest.raises(UnsupportedArchive):
        a.read(64 * KiB, 4096)
    # A DESC record header with flags 0x100 and a good checksum.
    tag, _, length, psum = R.RECORD.unpack_from(data, R.HEADER_SIZE)
    head = R.RECORD.pack(tag, 0x100, length, psum)
    forged = (
        data[: R.HEADER_SIZE]
        + head
        + R.checksum(head).to_bytes(8, "little")
        + data[R.HEADER_SIZE + R.RECORD_SIZE :]
    )
    with pytest.raises(UnsupportedArchive, match="DESC record flags 0x100"):
        stream_check(forged, tmp_path)


def test_an_unknown_physical_map_run_flag_is_unsupported():
    h = R.Header("00000000-0000-0000-0000-000000000001", 4096, 65536, 8192, 2, 0)
    runs = np.zeros(1, R.PMAP_DTYPE)
    runs[0] = (0, 4096, 0, -1, 1 << 6)
    record = R.encode_pmap((), runs)
    with pytest.raises(UnsupportedArchive, match="physical map run flags 0x40"):
        R.decode_pmap(record[R.RECORD_SIZE :], h, "test")
    runs[0]["flags"] = 0x3F  # every defined bit
    R.decode_pmap(R.encode_pmap((), runs)[R.RECORD_SIZE :], h, "test")


def test_an_unknown_frame_codec_is_unsupported(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    off = layout(data)[0][0]
    fields = list(R.FRAME.unpack_from(data, off))
    fields[1] = 7
    body = R.FRAME.pack(*fields)
    forged = data[:off] + body + R.checksum(body).to_bytes(8, "little") + data[off + 48 :]
    with pytest.raises(UnsupportedArchive, match="frame 0: codec 7"):
        stream_check(forged, tmp_path)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"codec": 9}, "default codec 9"),
        ({"csum": 2}, "checksum algorithm 2"),
        ({"dig": 3}, "digest algorithm 3"),
    ],
)
def test_unknown_codec_checksum_or_digest_values_are_unsupported(
    small_archive, tmp_path, fields, message
):
    _, _, data = small_archive
    with pytest.raises(UnsupportedArchive, match=message) as e:
        stream_check(forge_header(data, **fields), tmp_path)
    assert e.value.exit_code == 6


def test_a_damaged_feature_bit_is_damage_not_an_unknown_feature(small_archive, tmp_path):
    _, _, data = small_archive
    flipped_bit = bytearray(data)
    flipped_bit[16] ^= 1 << 5  # incompat bit 5, header checksum left as it was
    with pytest.raises(CorruptArchive, match="header checksum") as e:
        stream_check(bytes(flipped_bit), tmp_path)
    assert not isinstance(e.value, UnsupportedArchive)


def test_another_major_version_is_unsupported_even_with_a_checksum_this_version_rejects(
    small_archive, tmp_path
):
    _, _, data = small_archive
    forged = bytearray(data)
    forged[8] = 2  # major 2; its header may be checksummed differently
    with pytest.raises(UnsupportedArchive, match=rf"version 2\.{R.MINOR}"):
        stream_check(bytes(forged), tmp_path)


def test_a_damaged_footer_magic_on_a_full_length_archive_is_corrupt_exit_4(small_archive, tmp_path):
    _, _, data = small_archive
    damaged = flipped(data, len(data) - R.FOOTER_SIZE + 2)
    path = tmp_path / "f.vpk"
    path.write_bytes(damaged)
    for call in (volpack.verify, open_archive):
        with pytest.raises(CorruptArchive, match="footer magic") as e:
            call(str(path))
        assert e.value.exit_code == 4
    out = tmp_path / "out.img"
    with pytest.raises(CorruptArchive, match="footer magic"):
        volpack.restore(str(path), str(out))
    assert not out.exists()


def test_a_footer_damaged_beyond_recognition_is_corrupt_for_the_sequential_reader(
    small_archive, tmp_path
):
    _, _, data = small_archive
    damaged = data[: -R.FOOTER_SIZE] + bytes(R.FOOTER_SIZE)
    with pytest.raises(CorruptArchive, match="footer magic"):
        stream_check(damaged, tmp_path)
    (tmp_path / "z.vpk").write_bytes(damaged)
    with pytest.raises(IncompleteArchive):  # from the end alone it looks truncated
        open_archive(str(tmp_path / "z.vpk"))


def test_a_trailer_longer_than_its_exact_length_is_refused(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    _, _, toff = layout(data)
    payload = data[toff + R.RECORD_SIZE : -R.FOOTER_SIZE]
    # 16 more bytes before the digest: room for a frame index entry no frame has (or, read from
    # the end, a hash table count and state digest out of place).
    longer = payload[: -R.DIGEST_SIZE] + bytes(16) + payload[-R.DIGEST_SIZE :]
    forged = with_trailer(data, toff, longer)
    with pytest.raises(CorruptArchive, match="exceeds|trailer length|no room"):
        stream_check(forged, tmp_path)
    (tmp_path / "t.vpk").write_bytes(forged)
    with pytest.raises(CorruptArchive):
        open_archive(str(tmp_path / "t.vpk"))


def test_the_desc_bound_is_on_the_payload_length():
    for length, ok in ((R.MAX_DESC, True), (R.MAX_DESC + 1, False)):
        head = R.RECORD.pack(R.TAG_DESC, 0, length, 0)
        record = head + R.checksum(head).to_bytes(8, "little")
        if ok:
            assert R.decode_record_header(record, "t", R.TAG_DESC, R.MAX_DESC)[0] == length
        else:
            with pytest.raises(CorruptArchive, match="exceeds 1048576"):
                R.decode_record_header(record, "t", R.TAG_DESC, R.MAX_DESC)


def test_a_gap_between_the_tables_and_the_first_frame_is_refused(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    offsets, head_len, toff = layout(data)
    gap = 8
    payload = bytearray(data[toff + R.RECORD_SIZE : -R.FOOTER_SIZE])
    frames = len(offsets)
    at = index_at(data) - toff - R.RECORD_SIZE
    index = np.frombuffer(payload, R.INDEX_DTYPE, frames, at).copy()
    index["offset"] += gap
    payload[at : at + index.nbytes] = index.tobytes()
    payload[24:32] = (toff + gap).to_bytes(8, "little")  # trailer_offset
    shifted = data[:head_len] + bytes(gap) + data[head_len:toff]
    forged = with_trailer(shifted, toff + gap, bytes(payload))
    with pytest.raises(CorruptArchive, match="tag"):
        stream_check(forged, tmp_path)
    (tmp_path / "g.vpk").write_bytes(forged)
    with pytest.raises(CorruptArchive, match="does not tile"):
        open_archive(str(tmp_path / "g.vpk"))


def test_a_frame_index_codec_that_differs_from_the_frame_is_refused(raw_pair, tmp_path):
    _, _, data = raw_pair[0]
    codec_at = index_at(data) + R.INDEX_DTYPE.itemsize + 12  # frame 1's codec: raw (0) → zstd (1)
    edited = reseal(data[:codec_at] + b"\x01" + data[codec_at + 1 :], digest=True)
    path = tmp_path / "c.vpk"
    path.write_bytes(edited)
    with pytest.raises(CorruptArchive, match="frame 1 codec 1"):
        volpack.verify(str(path))
    with open_archive(str(path)) as a:
        assert len(a.read(0, 64 * KiB)) == 64 * KiB  # frame 0 is fine
        with pytest.raises(CorruptArchive, match="codec 0, index says 65536 codec 1"):
            a.read(64 * KiB, 4096)
