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
    import volpack
    from volpack.format.random_access import open_archive

    archive = str(tmp_path / "a.vpk")
    volpack.backup(volume, archive, frame_size=FRAME, encrypt=test_keys.encrypt(), threads=threads)
    expected = pathlib.Path(volume).read_bytes()
    keyring = test_keys.keyring(key_file=True)
    out = tmp_path / "out.img"
    volpack.restore(archive, str(out), keyring=keyring)
    assert out.read_bytes() == expected
    assert volpack.verify(archive, keyring=test_keys.keyring(key_file=True)).frame_count > 1
    # random access (serve, mount) opens frames of both codecs into its reused buffer
    with open_archive(archive, keyring=test_keys.keyring(key_file=True), cache_bytes=0) as a:
        codecs = set(a.trailer.index["codec"].tolist())
        assert codecs == {0, 1}, codecs  # raw and zstd frames both exercised
        assert a.read(0, a.size) == expected
        assert a.read(len(expected) - 4096 - 77, 4096) == expected[-4096 - 77 : -77]


def test_the_writer_never_seals_a_frame_twice_or_past_the_archive_s_frames(
    volume, test_keys, tmp_path
):
    import volpack
    from volpack.format.random_access import open_archive
    from volpack.format.sealing import Sealing

    archive = str(tmp_path / "a.vpk")
    volpack.backup(volume, archive, frame_size=FRAME, encrypt=test_keys.encrypt())
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


@pytest.mark.parametrize("threads", [1, 3])
def test_a_source_that_fails_mid_backup_stops_a_sealed_backup_with_its_error_and_no_archive(
    volume, test_keys, tmp_path, threads
):
    """Sealed frames are hashed in the pool in frame order: a frame whose read fails must not
    leave the frames after it waiting for their turn (the backup would hang)."""
    import shutil

    import volpack
    from volpack.errors import VolpackError

    source = tmp_path / "shrinks.img"
    shutil.copyfile(volume, source)
    archive = tmp_path / "a.vpk"

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "write" and source.stat().st_size:  # after the first frame is written
            with open(source, "r+b") as f:  # the image is cut short under the running backup
                f.truncate(0)

    with pytest.raises(VolpackError) as caught:
        volpack.backup(
            str(source),
            str(archive),
            frame_size=FRAME,
            encrypt=test_keys.encrypt(),
            threads=threads,
            progress=progress,
        )
    assert "shrank during the backup" in str(caught.value)
    assert not archive.exists()
    assert list(tmp_path.iterdir()) == [source]


@pytest.mark.parametrize("failing", [0, 2, 6])
def test_a_frame_that_fails_while_later_frames_wait_for_their_hash_turn_ends_the_write(
    test_keys, tmp_path, failing
):
    """The writer's contract with its producer: any frame's error ends ``write_frames`` with that
    error, even when later frames are read already and wait to be hashed in order."""
    import dataclasses
    import threading
    import time
    import uuid

    from volpack.compact.table import AddressTable
    from volpack.extents import Extents
    from volpack.format import records as R
    from volpack.format.hashtable import HashBuilder
    from volpack.format.sealing import Sealing
    from volpack.format.writer import ArchiveWriter
    from volpack.media import open_writer

    block, frames = 4096, 8
    table = AddressTable.from_used(Extents.span(0, frames * FRAME // block), block)
    header = R.Header(
        uuid=str(uuid.uuid4()),
        block_size=block,
        frame_size=FRAME,
        volume_size=frames * FRAME,
        used_blocks=table.used_blocks,
        created_ns=time.time_ns(),
        codec=R.CODEC_ZSTD,
        codec_level=1,
    )
    header = dataclasses.replace(
        header,
        incompat_features=header.incompat_features | R.FEATURE_ENCRYPTED,
        minor=R.MINOR_ENCRYPTED,
    )
    medium = open_writer(str(tmp_path / "a.vpk"))
    hashes = HashBuilder(table, header.volume_size, header.hash_block_size)
    sealing = Sealing(header, test_keys.encrypt())
    head = R.encode_atab(table.volume_block, table.count)
    writer = ArchiveWriter(medium, header, head, threads=4, hashes=hashes, sealing=sealing)
    writer.write_head()
    later_read = threading.Event()

    def produce(seq: int, view: memoryview) -> None:
        view[:] = bytes([seq]) * len(view)
        if seq == failing + 1:
            later_read.set()
        if seq == failing:
            later_read.wait(5)  # a later frame is read and waits for this one's turn
            raise OSError(5, f"read error in frame {seq}")

    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            writer.write_frames(produce)
        except BaseException as exc:
            failure.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(30), "write_frames hung after a frame failed"
    assert later_read.is_set()
    assert isinstance(failure[0], OSError) and f"frame {failing}" in str(failure[0])
    medium.abort()
