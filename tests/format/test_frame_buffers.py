"""A restore's frames decode into reused buffers (``frames(reuse=True)``): the bytes are the same
as with fresh buffers, buffers do come back, and a zstd frame that decompresses to another
length than its header says is refused either way."""

from __future__ import annotations

import random

import pytest
import zstandard

import volpack
from volpack.errors import CorruptArchive
from volpack.format import records as R
from volpack.format.reader import ArchiveStream, decode_frame_payload
from volpack.media import open_reader

FRAME = 64 << 10


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    """Text (zstd frames) then random bytes (frames stored raw), many frames of each."""
    d = tmp_path_factory.mktemp("frames")
    rng = random.Random(15)
    vol = d / "v.img"
    vol.write_bytes(
        b"".join(b"line %08d of text\n" % i for i in range(60000)) + rng.randbytes(40 * FRAME)
    )
    out = d / "v.vpk"
    volpack.backup(str(vol), str(out), frame_size=FRAME, detect="all-used")
    return str(out)


def frames(path: str, reuse: bool) -> tuple[list[bytes], list[int], set[int]]:
    stream = ArchiveStream(open_reader(path))
    stream.read_head()
    data, codecs, owners = [], [], set()
    for _, raw in stream.frames(threads=3, reuse=reuse):
        data.append(bytes(raw))  # copied while it is valid
        owners.add(id(raw.obj))
    codecs = stream._frame_codecs
    stream.read_tail()
    return data, list(codecs), owners


def test_frames_in_reused_buffers_are_the_frames(archive):
    fresh, codecs, _ = frames(archive, reuse=False)
    reused, _, owners = frames(archive, reuse=True)
    assert {R.CODEC_NONE, R.CODEC_ZSTD} <= set(codecs), codecs
    assert reused == fresh
    # far fewer buffers than frames: they come back once the caller moves on
    assert len(owners) < len(fresh) // 4, (len(owners), len(fresh))


@pytest.mark.parametrize("told", [99, 101])
@pytest.mark.parametrize("into", [False, True])
def test_a_zstd_frame_of_another_length_than_its_header_says_is_refused(told, into):
    raw = bytes(range(100))
    packed = zstandard.ZstdCompressor(level=1).compress(raw)
    fh = R.FrameHeader(R.CODEC_ZSTD, 0, 0, told, len(packed), R.checksum(raw, 0))
    out = bytearray(FRAME + 1) if into else None
    with pytest.raises(CorruptArchive, match=f"holds 100 bytes, expected {told}|decompress"):
        decode_frame_payload(zstandard.ZstdDecompressor(), fh, packed, "test", 0, out)
    fh = R.FrameHeader(R.CODEC_ZSTD, 0, 0, 100, len(packed), R.checksum(raw, 0))
    assert bytes(decode_frame_payload(zstandard.ZstdDecompressor(), fh, packed, "t", 0, out)) == raw


def test_each_zstd_frame_is_one_zstd_frame_with_its_content_size(archive):
    """docs/format.md section 4: frames are compressed independently, one zstd frame each,
    content size included (the writer compresses through a stream into its own buffer)."""
    from volpack.format.random_access import open_archive

    with open_archive(archive) as a:
        index = a.trailer.index
        zstd = [seq for seq in range(len(index)) if int(index["codec"][seq]) == R.CODEC_ZSTD]
        assert zstd
        with open(archive, "rb") as f:
            for seq in zstd:
                f.seek(int(index["offset"][seq]) + R.FRAME_HEADER_SIZE)
                stored = f.read(int(index["stored"][seq]))
                params = zstandard.get_frame_parameters(stored)
                assert params.content_size == a.header.frame_length(seq)
                assert len(zstandard.ZstdDecompressor().decompress(stored)) == params.content_size


def test_the_writer_stores_zstd_only_when_it_has_fewer_bytes_than_the_raw_frame():
    """docs/format.md section 4: stored_length ≤ raw_length, a frame that does not shrink is
    stored raw. The writer compresses through a stream into a buffer of the raw length and
    stops when the output fills it."""
    from volpack.format.writer import _Encoder

    enc = _Encoder(R.CODEC_ZSTD, 1, None, FRAME)
    noise = memoryview(random.Random(3).randbytes(FRAME))
    assert enc.compress(noise) is None
    text = memoryview(b"".join(b"line %08d\n" % i for i in range(FRAME // 14))[:FRAME])
    packed = enc.compress(text)
    assert packed is not None and len(packed) < len(text)
    assert zstandard.ZstdDecompressor().decompress(bytes(packed)) == bytes(text)
    assert enc.compress(memoryview(b"x")) is None  # one byte never shrinks
    assert _Encoder(R.CODEC_NONE, 0, None, FRAME).compress(text) is None


def test_random_access_reuses_frame_buffers_but_never_one_a_reader_still_holds(archive):
    """Random access (restore of a chain, merge, serve) decodes into reused buffers too; a view
    handed out keeps its bytes however far the cache moves on, and buffers nobody holds are
    used again (no new 64 KiB buffer per frame)."""
    from volpack import open_archive
    from volpack.format.random_access import Archive

    expected, _, _ = frames(archive, reuse=False)
    with open_archive(archive, cache_bytes=FRAME) as arch:  # a cache of one frame
        assert isinstance(arch, Archive)
        held = {seq: arch.frame(seq) for seq in (0, len(expected) - 1)}
        for seq in range(len(expected)):
            assert bytes(arch.frame(seq)) == expected[seq]
        for seq, view in held.items():
            assert bytes(view) == expected[seq]  # never written over while held
        kept = len(arch._buffers._bufs)
        assert kept <= arch._buffers.keep
        for seq in range(len(expected)):  # nothing held: no new buffer is kept
            assert bytes(arch.frame(seq)) == expected[seq]
        assert len(arch._buffers._bufs) == kept


def test_a_read_into_past_the_end_of_an_archive_file_is_refused(archive):
    from volpack.errors import MediumError

    reader = open_reader(archive)
    try:
        size = reader.size
        with pytest.raises(MediumError, match="past the end"):
            reader.read_at_into(size - 10, memoryview(bytearray(20)))
        buf = bytearray(8)
        reader.read_at_into(0, memoryview(buf))
        assert bytes(buf) == reader.read_at(0, 8)
    finally:
        reader.close()
