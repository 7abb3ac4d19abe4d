"""The medium contract: every medium in tests/media/conftest.py CASES passes these tests.

Media move opaque bytes: what is written and committed reads back equal (sequentially and at
any offset), an abort leaves nothing, an existing archive is only replaced with force, and
failures are the documented MediumError subclasses.
"""

from __future__ import annotations

import os

import pytest

from volpack.catalog.prune import location_of
from volpack.errors import MediumError, MediumNotFound, UsageError
from volpack.media import (
    canonical_url,
    capabilities,
    delete,
    list_archives,
    local_file,
    open_reader,
    open_writer,
)


def _payload(size: int) -> bytes:
    # Random bytes: a misplaced, repeated or zero-filled range cannot pass.
    return os.urandom(size)


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


def test_committed_archive_reads_back_equal_sequentially(medium):
    data = _payload(11 * 1024 * 1024 + 12_345)
    url = medium.url("seq.vpk")
    # Odd chunk sizes, an empty write and one write larger than a part (S3: three parts).
    medium.write(url, [b"", *_chunks(data[:1_500_000], [1, 4096, 65_537, 0]), data[1_500_000:]])
    assert medium.read_stream(url) == data


def test_sequential_reads_with_a_tiny_buffer_see_every_byte(medium):
    data = _payload(200_001)
    url = medium.url("tiny-buffer.vpk")
    medium.write(url, [data])
    assert medium.read_stream(url, bufsize=4093) == data


def test_empty_archive_round_trips(medium):
    url = medium.url("empty.vpk")
    medium.write(url, [])
    assert medium.read_stream(url) == b""


def test_read_at_returns_the_bytes_at_any_offset(medium):
    if not medium.random_access:
        pytest.skip(f"{medium.name} is a stream; see test_stream_media_refuse_read_at")
    data = _payload(2 * 1024 * 1024 + 777)
    url = medium.url("random.vpk")
    medium.write(url, _chunks(data, [300_000]))
    reader = open_reader(url)
    try:
        for offset, length in [
            (0, 1),
            (0, 4096),
            (1_048_575, 2),
            (len(data) - 10, 10),  # the footer
            (len(data) - 1, 1),
            (123_457, 999_999),
            (len(data), 0),
            (0, len(data)),
        ]:
            assert reader.read_at(offset, length) == data[offset : offset + length], (
                offset,
                length,
            )
    finally:
        reader.close()


def test_size_is_the_archive_length(medium):
    if not medium.random_access:
        pytest.skip(f"{medium.name} is a stream: its size is unknown (None)")
    data = _payload(1_234_567)
    url = medium.url("size.vpk")
    medium.write(url, [data])
    reader = open_reader(url)
    try:
        assert reader.size == len(data)
    finally:
        reader.close()


def test_read_at_beyond_the_end_raises_medium_error(medium):
    if not medium.random_access:
        pytest.skip(f"{medium.name} is a stream; see test_stream_media_refuse_read_at")
    url = medium.url("short.vpk")
    medium.write(url, [b"x" * 1000])
    reader = open_reader(url)
    try:
        with pytest.raises(MediumError):
            reader.read_at(990, 11)
        with pytest.raises(MediumError):
            reader.read_at(5000, 1)
        assert reader.read_at(990, 10) == b"x" * 10
    finally:
        reader.close()


def test_stream_media_refuse_read_at(medium):
    if medium.random_access:
        pytest.skip(f"{medium.name} has random access")
    import subprocess
    import sys

    code = (
        "from volpack.media import open_reader\n"
        "from volpack.errors import MediumError\n"
        "r = open_reader('-')\n"
        "try:\n    r.read_at(0, 1)\nexcept MediumError as e:\n    print('refused:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=b"abc", capture_output=True, check=True
    )
    assert done.stdout.startswith(b"refused:")


def test_abort_leaves_nothing_visible(medium):
    if not medium.atomic:
        pytest.skip(f"{medium.name} cannot take bytes back; readers refuse the trailerless stream")
    url = medium.url("aborted.vpk")
    before = medium.stored(url)
    medium.write_and_abort(url, _chunks(_payload(2_500_000), [700_000]))
    assert medium.stored(url) == before
    with pytest.raises(MediumNotFound):
        open_reader(url)


def test_abort_before_any_write_leaves_nothing(medium):
    if not medium.atomic:
        pytest.skip(f"{medium.name} cannot take bytes back")
    url = medium.url("aborted-empty.vpk")
    before = medium.stored(url)
    medium.write_and_abort(url, [])
    assert medium.stored(url) == before


def test_writer_refuses_to_overwrite_an_archive_without_force(medium):
    if not medium.atomic:
        pytest.skip(f"{medium.name} has no names to protect")
    url = medium.url("kept.vpk")
    medium.write(url, [b"first archive"])
    with pytest.raises(MediumError, match="force"):
        medium.write(url, [b"second archive"])
    assert medium.read_stream(url) == b"first archive"


def test_force_replaces_an_existing_archive(medium):
    if not medium.atomic:
        pytest.skip(f"{medium.name} has no names to protect")
    url = medium.url("replaced.vpk")
    medium.write(url, [_payload(1_500_000)])
    second = _payload(10_000)
    medium.write(url, [second], force=True)
    assert medium.read_stream(url) == second


def test_failed_replacement_keeps_the_old_archive(medium):
    if not medium.atomic:
        pytest.skip(f"{medium.name} has no names to protect")
    url = medium.url("still-there.vpk")
    old = _payload(50_000)
    medium.write(url, [old])
    writer = open_writer(url, force=True)
    writer.write(_payload(2_200_000))
    writer.abort()
    assert medium.read_stream(url) == old


def test_reading_a_missing_archive_raises_medium_not_found(medium):
    if not medium.addressable:
        pytest.skip(f"{medium.name} has no names")
    with pytest.raises(MediumNotFound):
        open_reader(medium.url("never-written.vpk"))


def test_the_declared_capabilities_are_what_the_medium_does(medium):
    url = medium.url("declared.vpk")
    declared = capabilities(url)
    assert declared.random_access == medium.random_access
    assert declared.file_modes == (medium.name in ("file", "file-url"))
    local = local_file(url, stdio="/dev/stdout")
    if medium.name in ("file", "file-url"):
        assert local == os.path.join(medium.dir, "declared.vpk")
    else:
        assert local == ("/dev/stdout" if url == "-" else None)
    if not declared.can_list:
        with pytest.raises(UsageError, match="cannot list"):
            list_archives(url)
    if not declared.can_delete:
        with pytest.raises(UsageError, match="cannot delete"):
            delete(url)
    if not (declared.can_list and declared.can_delete):
        return
    medium.write(url, [b"listed and deleted"])
    listed = [u for u, size, _ in list_archives(location_of(url))]
    assert canonical_url(url) in listed  # listings are canonical, as the catalog records
    delete(url)
    with pytest.raises(MediumNotFound):
        open_reader(url)
