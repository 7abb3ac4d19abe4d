"""Frames are sealed in the encoding pool, out of order, and opened into reused buffers: archives
written so restore, verify and serve byte for byte, and no frame is ever sealed twice."""

from __future__ import annotations

import pathlib

import pytest
from sealed_cases import FRAME


@pytest.mark.parametrize("threads", [1, 4])
def test_frames_sealed_by_several_encoding_threads_restore_and_read_back_exactly(
    volume, test_keys, tmp_path, threads
):
    from volpack import pipeline
    from volpack.format.random_access import open_archive

    archive = str(tmp_path / "a.vpk")
    pipeline.backup(volume, archive, frame_size=FRAME, encrypt=test_keys.encrypt(), threads=threads)
    expected = pathlib.Path(volume).read_bytes()
    keyring = test_keys.keyring(key_file=True)
    out = tmp_path / "out.img"
    pipeline.restore(archive, str(out), keyring=keyring)
    assert out.read_bytes() == expected
    assert pipeline.verify(archive, keyring=test_keys.keyring(key_file=True)).frame_count > 1
    # random access (serve, mount) opens frames of both codecs into its reused buffer
    with open_archive(archive, keyring=test_keys.keyring(key_file=True), cache_bytes=0) as a:
        codecs = set(a.trailer.index["codec"].tolist())
        assert codecs == {0, 1}, codecs  # raw and zstd frames both exercised
        assert a.read(0, a.size) == expected
        assert a.read(len(expected) - 4096 - 77, 4096) == expected[-4096 - 77 : -77]


def test_the_writer_never_seals_a_frame_twice_or_past_the_archive_s_frames(
    volume, test_keys, tmp_path
):
    from volpack import pipeline
    from volpack.format.random_access import open_archive
    from volpack.format.sealing import Sealing

    archive = str(tmp_path / "a.vpk")
    pipeline.backup(volume, archive, frame_size=FRAME, encrypt=test_keys.encrypt())
    with open_archive(archive, public=True) as a:
        header = a.header
    sealing = Sealing(header, test_keys.encrypt())
    out = memoryview(bytearray(64))
    sealing.seal_frame_into(3, 0, 16, b"x" * 16, out[:32])
    with pytest.raises(ValueError, match="twice"):
        sealing.seal_frame_into(3, 0, 16, b"y" * 16, out[:32])
    sealing.seal_frame_into(1, 0, 16, b"x" * 16, out[:32])  # an earlier frame after it: fine
    with pytest.raises(ValueError, match="frames"):
        sealing.seal_frame_into(header.frame_count, 0, 16, b"x" * 16, out[:32])
