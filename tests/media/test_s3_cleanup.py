"""``volpack cleanup s3://bucket/prefix`` against a real SeaweedFS: open multipart uploads (made
with boto3, or left by a SIGKILLed ``volpack backup``) older than ``--older-than`` are aborted,
younger ones and other prefixes are kept, and a listing failure is an error, never "nothing".
The oracle is the server's own ``list_multipart_uploads``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import s3_server

pytestmark = pytest.mark.s3

MiB = 1 << 20


def vp(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], env=env, capture_output=True, text=True
    )


def open_uploads(client, bucket: str) -> set[tuple[str, str]]:
    page = client.list_multipart_uploads(Bucket=bucket)
    return {(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])}


def start_upload(client, bucket: str, key: str) -> str:
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1000)
    return upload_id


def uploading_backup(env: dict[str, str], tmp_path, url: str) -> subprocess.Popen[str]:
    """A slow backup (32 MiB of random data, zstd level 19, one thread, 5 MiB parts) to
    ``url``; its stderr is a text pipe."""
    image = tmp_path / "dense.img"
    with open(image, "wb") as f:
        for _ in range(32):
            f.write(os.urandom(MiB))
    return subprocess.Popen(
        [sys.executable, "-m", "volpack", "backup", str(image), url, "--no-catalog"]
        + ["--compress", "zstd:19", "--threads", "1"],
        env={**env, "VOLPACK_S3_PART_SIZE": "5Mi"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_upload(proc: subprocess.Popen[str], client, bucket: str) -> None:
    deadline = time.monotonic() + 120
    while not open_uploads(client, bucket):
        assert proc.poll() is None, "the backup ended before its upload was seen"
        assert time.monotonic() < deadline, "the backup never started its upload"
        time.sleep(0.05)


@pytest.fixture
def env(weed_mini, tmp_path):
    env = weed_mini.env()
    env["VOLPACK_S3_ATTEMPTS"] = "2"
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    return env


def test_cleanup_aborts_old_uploads_under_the_prefix_and_keeps_fresh_ones_by_default(
    s3_bucket, weed_mini, env
):
    c = weed_mini.client()
    mine = start_upload(c, s3_bucket, "web1/disk.vpk")
    elsewhere = start_upload(c, s3_bucket, "db1/disk.vpk")
    url = f"s3://{s3_bucket}/web1/"

    p = vp(env, "cleanup", url, "--json")  # default: only uploads older than 24 h
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["older_than"] == 86400
    (item,) = result["leftovers"]
    assert item["upload_id"] == mine and item["action"] == "kept"
    assert "younger than 1.0 d" in item["reason"]
    assert open_uploads(c, s3_bucket) == {("web1/disk.vpk", mine), ("db1/disk.vpk", elsewhere)}

    p = vp(env, "cleanup", url, "--older-than", "0", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert f"would remove s3://{s3_bucket}/web1/disk.vpk upload {mine}" in p.stdout
    assert len(open_uploads(c, s3_bucket)) == 2

    p = vp(env, "cleanup", url, "--older-than", "0")
    assert p.returncode == 0, p.stderr
    assert f"removed      s3://{s3_bucket}/web1/disk.vpk upload {mine}" in p.stdout
    assert open_uploads(c, s3_bucket) == {("db1/disk.vpk", elsewhere)}


def test_cleanup_aborts_the_upload_of_a_backup_killed_mid_write(
    s3_bucket, weed_mini, env, tmp_path
):
    proc = uploading_backup(env, tmp_path, f"s3://{s3_bucket}/hosts/disk.vpk")
    c = weed_mini.client()
    try:
        wait_for_upload(proc, c, s3_bucket)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)  # reaps it and closes its stderr pipe
    assert proc.returncode == -signal.SIGKILL
    ((key, _),) = open_uploads(c, s3_bucket)  # SIGKILL left it open
    assert key == "hosts/disk.vpk"

    p = vp(env, "cleanup", f"s3://{s3_bucket}/hosts/", "--older-than", "0s")
    assert p.returncode == 0, p.stderr
    assert "1 removed" in p.stdout
    assert open_uploads(c, s3_bucket) == set()


def test_a_backup_stopped_by_sigterm_mid_upload_aborts_its_upload_itself(
    s3_bucket, weed_mini, env, tmp_path
):
    """Unlike SIGKILL, SIGTERM (``kill``, ``timeout``, a service manager) leaves nothing for
    ``cleanup``: the upload is aborted on the way out and no object appears."""
    proc = uploading_backup(env, tmp_path, f"s3://{s3_bucket}/hosts/disk.vpk")
    c = weed_mini.client()
    try:
        wait_for_upload(proc, c, s3_bucket)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "volpack: terminated (SIGTERM)", err
    assert open_uploads(c, s3_bucket) == set()
    assert c.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_cleanup_of_a_missing_bucket_is_an_error_not_nothing_there(weed_mini, env):
    p = vp(env, "cleanup", "s3://vp-no-such-bucket-here/x/", "--older-than", "0")
    assert p.returncode == 7, p.stdout
    assert p.stderr.count("\n") == 1 and "bucket" in p.stderr


def test_cleanup_with_refused_credentials_is_an_error_not_nothing_there(s3_bucket, weed_mini, env):
    start_upload(weed_mini.client(), s3_bucket, "a.vpk")
    env["AWS_SECRET_ACCESS_KEY"] = "wrong" + s3_server.SECRET_KEY
    p = vp(env, "cleanup", f"s3://{s3_bucket}/", "--older-than", "0")
    assert p.returncode == 7, p.stdout
    assert p.stderr.count("\n") == 1 and "credentials" in p.stderr
    assert len(open_uploads(weed_mini.client(), s3_bucket)) == 1
