"""Damaged archives: every truncation is refused as incomplete, flipped bytes are detected, and
hostile but checksummed fields are refused before anything large is allocated."""

import os
import random
import struct

import pytest

from volpack import pipeline
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
    pipeline.backup(vol, arc, frame_size=65536, compress="zstd:3", allow_mounted=True)
    return vol, arc, open(arc, "rb").read()


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
    pipeline.verify(str(path))


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
            pipeline.verify(str(path))
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
        pipeline.restore(str(path), str(out))
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
            pipeline.restore(str(tmp_path / "bad.vpk"), str(out))
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
        ({"codec": 9}, "codec"),
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
    with pytest.raises(UnsupportedArchive, match="ENCRYPTED"):
        stream_check(forge_header(data, incompat=R.FEATURE_ENCRYPTED), tmp_path)


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
        pipeline.verify(str(p))
