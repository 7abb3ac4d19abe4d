"""Slow S3 checks: replication on the distributed SeaweedFS set, and bounded memory while
streaming a multi-hundred-MiB archive up and back down (peak RSS of a separate process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from volpack.media import open_reader, open_writer
from volpack.media.s3 import client as s3_client

pytestmark = [pytest.mark.s3, pytest.mark.slow]

MiB = 1 << 20


def _dat_bytes(directory: str) -> int:
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for name in os.listdir(directory)
        if name.endswith(".dat")
    )


def test_cluster_keeps_each_archive_on_both_volume_servers(weed_cluster, monkeypatch):
    from s3_server import use_s3_server

    use_s3_server(weed_cluster, monkeypatch)
    s3_client.configure(part_size=5 * MiB)
    bucket = weed_cluster.new_bucket()
    before = [_dat_bytes(os.path.join(weed_cluster.workdir, v)) for v in ("vol1", "vol2")]
    data = os.urandom(21 * MiB)
    writer = open_writer(f"s3://{bucket}/replicated.vpk")
    writer.write(data)
    writer.commit()
    with open_reader(f"s3://{bucket}/replicated.vpk") as reader:
        assert reader.read_at(0, len(data)) == data
    after = [_dat_bytes(os.path.join(weed_cluster.workdir, v)) for v in ("vol1", "vol2")]
    # Replication 001: one copy on each of the two volume servers.
    assert all(a - b >= len(data) for a, b in zip(after, before, strict=True)), (before, after)


# Peaks are the child's own VmHWM: ru_maxrss survives exec, so a child started from a pytest
# process that once grew to 400 MiB reported 400 MiB before doing anything.
_PEAK = (
    "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]) * 1024"
)
_UPLOAD = textwrap.dedent(
    """
    import json, os, sys
    from volpack.media import open_reader, open_writer
    url, total = sys.argv[1], int(sys.argv[2])
    block = bytearray(os.urandom(1 << 20))
    writer = open_writer(url)
    for i in range(total >> 20):
        block[:8] = i.to_bytes(8, "little")  # every MiB distinct
        writer.write(block)
    writer.commit()
    up = PEAK
    reader = open_reader(url)
    buf = memoryview(bytearray(1 << 20))
    seen = 0
    while n := reader.readinto(buf):
        seen += n
    reader.close()
    down = PEAK
    print(json.dumps({"up": up, "down": down, "size": seen}))
    """
).replace("PEAK", _PEAK)
_BASELINE = f"import json, boto3, volpack.media.s3; print(json.dumps({_PEAK}))"


def test_upload_and_download_memory_stay_bounded_for_a_large_archive(weed_mini):
    env = weed_mini.env()
    bucket = weed_mini.new_bucket()
    total = 640 * MiB
    baseline = json.loads(
        subprocess.run([sys.executable, "-c", _BASELINE], env=env, capture_output=True,
                       check=True).stdout
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _UPLOAD, f"s3://{bucket}/large.vpk", str(total)],
        env=env,
        capture_output=True,
        check=True,
    )
    peak = json.loads(done.stdout)
    assert peak["size"] == total
    # Default settings: 8 MiB parts, at most 4 in flight, one filling: about 40 MiB of buffers.
    assert peak["up"] - baseline < 120 * MiB, (baseline, peak)
    assert peak["down"] < 300 * MiB, (baseline, peak)
