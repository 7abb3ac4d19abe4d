"""A full backup to a new file reads the source once: the zero scan fills the frames, and the
head is written last into the room left for it. The archive holds what the two-read way (a
pipe) writes, reads back sequentially and at random, and a used map too fragmented for the room
falls back to two reads with nothing left of the first attempt."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

import volpack
from volpack.errors import VolpackError
from volpack.format.random_access import open_archive
from volpack.pipeline.backup import BackupResult
from volumes import (
    CountingSource,
    allocated_bytes,
    same_bytes,
    write_scan_volume,
    write_sparse,
)

MiB = 1 << 20


def _backup_through_a_pipe(src: str, fifo: str, out: str, **options) -> BackupResult:
    """A backup whose medium is a FIFO (written in order: the two-read way), its bytes kept."""
    os.mkfifo(fifo)
    kept: list[bytes] = []

    def drain() -> None:
        with open(fifo, "rb") as f:
            kept.append(f.read())

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        result = volpack.backup(src, fifo, allow_mounted=True, **options)
    finally:
        reader.join(30)
    with open(out, "wb") as f:
        f.write(kept[0])
    return result


@pytest.mark.parametrize("detect", ["auto", "zeros"])
def test_a_full_to_a_file_reads_the_source_once_and_holds_what_two_reads_write(
    tmp_path, detect
) -> None:
    src = str(tmp_path / "v.img")
    write_scan_volume(src)
    counting = CountingSource(src)
    one = volpack.backup(
        src,
        str(tmp_path / "one.vpk"),
        frame_size=65536,
        detect=detect,
        allow_mounted=True,
        opened=counting,
    )
    # Each allocated byte once (the analysis of the volume's first blocks comes on top).
    assert counting.read <= allocated_bytes(src) + 2 * MiB
    counting_pipe = CountingSource(src)
    two = _backup_through_a_pipe(
        src,
        str(tmp_path / "fifo"),
        str(tmp_path / "two.vpk"),
        frame_size=65536,
        detect=detect,
        opened=counting_pipe,
    )
    assert counting_pipe.read >= allocated_bytes(src) - 2 * MiB + one.dense_size - MiB
    assert (one.used_blocks, one.dense_size) == (two.used_blocks, two.dense_size)
    with open_archive(str(tmp_path / "one.vpk")) as a, open_archive(str(tmp_path / "two.vpk")) as b:
        assert a.table == b.table and a.used == b.used
        assert a.hash_table is not None and b.hash_table is not None
        assert a.hash_table.equals(b.hash_table)
        for seq in range(a.header.frame_count):
            assert a.frame(seq) == b.frame(seq)
        assert a.desc.detection.regions == b.desc.detection.regions
    volpack.verify(str(tmp_path / "one.vpk"))
    volpack.restore(str(tmp_path / "one.vpk"), str(tmp_path / "out.img"))
    assert same_bytes(src, str(tmp_path / "out.img"))


def test_the_head_written_last_reads_from_a_pipe(tmp_path) -> None:
    """A sequential reader meets the head first, as it was written into its room."""
    src = str(tmp_path / "v.img")
    write_scan_volume(src)
    archive = tmp_path / "a.vpk"
    volpack.backup(src, str(archive), allow_mounted=True)
    head = archive.read_bytes()[:4096]
    assert head[256:260] == b"DESC"
    out = tmp_path / "out.img"
    with open(archive, "rb") as stdin:
        done = subprocess.run(
            ["volpack", "restore", "-", str(out)], stdin=stdin, capture_output=True, text=True
        )
    assert done.returncode == 0, done.stderr
    assert same_bytes(src, str(out))


def test_a_used_map_too_fragmented_for_the_room_is_written_in_two_reads(tmp_path) -> None:
    """Every other 4 KiB block of 8 MiB holds data: 1024 runs, more than the room made for
    one candidate run. The file is rewound and written the two-read way, whole and correct."""
    src = str(tmp_path / "v.img")
    pieces = [(b * 8192, os.urandom(4096) + bytes(4096)) for b in range(1024)]
    write_sparse(src, 8 * MiB, pieces)
    counting = CountingSource(src)
    result = volpack.backup(
        src, str(tmp_path / "a.vpk"), detect="zeros", allow_mounted=True, opened=counting
    )
    assert result.used_blocks == 1024
    # the first attempt stopped early; then the scan and the copy
    assert counting.read >= 8 * MiB + 4 * MiB
    assert sorted(os.listdir(tmp_path)) == ["a.vpk", "v.img"]
    with open_archive(str(tmp_path / "a.vpk")) as a:
        assert len(a.table) == 1024
    volpack.verify(str(tmp_path / "a.vpk"))
    volpack.restore(str(tmp_path / "a.vpk"), str(tmp_path / "out.img"))
    assert same_bytes(src, str(tmp_path / "out.img"))


def test_a_volume_of_allocated_zeros_makes_an_archive_without_frames(tmp_path) -> None:
    src = str(tmp_path / "z.img")
    write_sparse(src, 4 * MiB, [(0, bytes(4 * MiB))])
    result = volpack.backup(src, str(tmp_path / "z.vpk"), allow_mounted=True)
    assert (result.used_blocks, result.frame_count) == (0, 0)
    volpack.verify(str(tmp_path / "z.vpk"))
    volpack.restore(str(tmp_path / "z.vpk"), str(tmp_path / "out.img"))
    assert same_bytes(src, str(tmp_path / "out.img"))


def test_a_failed_one_read_backup_keeps_the_archive_it_would_replace(tmp_path) -> None:
    """The source shrinks under the backup: the one-read path fails with the source error and
    the old archive stays, byte for byte."""
    src = str(tmp_path / "v.img")
    write_scan_volume(src)
    archive = tmp_path / "a.vpk"
    volpack.backup(src, str(archive), allow_mounted=True)
    before = archive.read_bytes()

    class Shrinking(CountingSource):
        def read_into(self, offset: int, view: memoryview) -> None:
            if self.read > 2 * MiB:
                os.truncate(src, 4 * MiB)
            super().read_into(offset, view)

    with pytest.raises(VolpackError):
        volpack.backup(src, str(archive), force=True, allow_mounted=True, opened=Shrinking(src))
    assert archive.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.vpk", "v.img"]


@pytest.mark.s3
def test_a_full_to_s3_reads_the_source_once_and_restores(weed_mini, s3_bucket, tmp_path) -> None:
    """Part 1 of the upload, with the room for the head, goes up last; the archive spans two
    objects here."""
    from volpack.media.s3 import client as s3_client

    s3_client.configure(part_size=5 * MiB, object_size=12 * MiB)
    src = str(tmp_path / "v.img")
    write_scan_volume(src)
    with open(src, "r+b") as f:
        f.seek(12 * MiB)
        f.write(os.urandom(8 * MiB))
    counting = CountingSource(src)
    url = f"s3://{s3_bucket}/one.vpk"
    result = volpack.backup(src, url, compress="none", allow_mounted=True, opened=counting)
    assert result.archive_size > 12 * MiB
    assert counting.read <= allocated_bytes(src) + 2 * MiB
    volpack.verify(url)
    volpack.restore(url, str(tmp_path / "out.img"))
    assert same_bytes(src, str(tmp_path / "out.img"))
    uploads = weed_mini.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []
