"""A restore's frames decode into reused buffers (``frames(reuse=True)``): the bytes are the same
as with fresh buffers, buffers do come back, and a zstd frame that decompresses to another
length than its header says is refused either way."""

from __future__ import annotations

import random

import pytest
import zstandard

from volpack import pipeline
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
    pipeline.backup(str(vol), str(out), frame_size=FRAME, detect="all-used")
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
