"""Images in QEMU formats volpack has no reader for (vmdk, vdi, vhdx, vpc, qed), read through a
private qemu-storage-daemon (or qemu-nbd): backup → restore equals `qemu-img convert -O raw`, and
the server volpack started is gone afterwards on every exit path (success, an error, SIGINT, and
volpack killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.integration.nbd_servers import need

from volpack.source.qemu_image import SERVERS, QemuImageSource

MiB = 1 << 20


def volpack(*args: str, cwd: Path, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def servers_of(image: Path) -> list[int]:
    """PIDs of qemu-nbd or qemu-storage-daemon processes whose command line names ``image``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = any(str(image).encode() in arg for arg in cmd[1:])
        if cmd and cmd[0].endswith((b"qemu-nbd", b"qemu-storage-daemon")) and named:
            found.append(int(pid))
    return found


def make_image(tmp_path: Path, fmt: str, size: int = 64 * MiB) -> tuple[Path, Path]:
    """A sparse raw volume converted to ``fmt``, and qemu-img's raw reading of that image."""
    need("qemu-img")
    need("qemu-nbd")
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
        for at, n in ((MiB, 3 * MiB), (40 * MiB + 4096, 65536), (size - 8192, 8192)):
            f.seek(at)
            f.write(os.urandom(n))
    image = tmp_path / f"disk.{fmt}"
    subprocess.run(["qemu-img", "convert", "-O", fmt, str(raw), str(image)], check=True)
    oracle = tmp_path / "oracle.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(oracle)], check=True)
    return image, oracle


@pytest.mark.parametrize("fmt", ["vmdk", "vdi", "vhdx", "vpc", "qed"])
def test_backup_of_a_qemu_format_image_restores_what_qemu_img_convert_reads(tmp_path, fmt):
    image, oracle = make_image(tmp_path, fmt)
    private = tmp_path / "tmp"
    private.mkdir()
    r = volpack("backup", str(image), "a.vpk", cwd=tmp_path, tmpdir=private)
    assert r.returncode == 0, r.stderr
    assert servers_of(image) == [] and list(private.iterdir()) == []
    r = volpack("restore", "a.vpk", "out.raw", cwd=tmp_path, tmpdir=private)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.raw").read_bytes() == oracle.read_bytes()
    r = volpack("info", "a.vpk", "--json", cwd=tmp_path, tmpdir=private)
    assert f'"kind": "{fmt}"' in r.stdout
    assert '"reader": "qemu-storage-daemon"' in r.stdout
    r = volpack("verify", "a.vpk", "--against", str(image), cwd=tmp_path, tmpdir=private)
    assert r.returncode == 0, r.stderr
    assert servers_of(image) == []


def test_the_private_server_is_stopped_when_the_backup_fails(tmp_path):
    image, _ = make_image(tmp_path, "vmdk")
    private = tmp_path / "tmp"
    private.mkdir()
    r = volpack("backup", str(image), "no/such/dir/a.vpk", cwd=tmp_path, tmpdir=private)
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert servers_of(image) == [] and list(private.iterdir()) == []


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_the_private_server_is_stopped_when_the_backup_is_interrupted(tmp_path, sig, code):
    need("qemu-img")
    need("qemu-nbd")
    raw = tmp_path / "src.raw"
    raw.write_bytes(os.urandom(96 * MiB))
    image = tmp_path / "disk.vdi"
    subprocess.run(["qemu-img", "convert", "-O", "vdi", str(raw), str(image)], check=True)
    private = tmp_path / "tmp"
    private.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "backup", str(image), "a.vpk", "--compress", "zstd:19"],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(private)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not servers_of(image) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None, "the backup ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err, err
    assert servers_of(image) == [] and list(private.iterdir()) == []
    assert not (tmp_path / "a.vpk").exists()


def test_source_format_raw_backs_up_the_image_file_itself(tmp_path):
    image, _ = make_image(tmp_path, "vmdk")
    private = tmp_path / "tmp"
    private.mkdir()
    r = volpack(
        "backup", str(image), "a.vpk", "--source-format", "raw", cwd=tmp_path, tmpdir=private
    )
    assert r.returncode == 0, r.stderr
    assert volpack("restore", "a.vpk", "out", cwd=tmp_path, tmpdir=private).returncode == 0
    assert (tmp_path / "out").read_bytes() == image.read_bytes()


@pytest.mark.parametrize("server", SERVERS)
def test_either_private_server_reads_what_qemu_img_convert_reads(tmp_path, server):
    need(server)
    image, oracle = make_image(tmp_path, "vhdx")
    src = QemuImageSource(str(image), "vhdx", server)
    try:
        assert src.info.details["reader"] == server
        buf = bytearray(src.size)
        src.read_into(0, memoryview(buf))
    finally:
        src.close()
    assert buf == oracle.read_bytes()
    assert servers_of(image) == []


def test_the_private_server_dies_with_a_backup_killed_by_sigkill(tmp_path):
    need("qemu-img")
    raw = tmp_path / "src.raw"
    raw.write_bytes(os.urandom(96 * MiB))
    image = tmp_path / "disk.vdi"
    subprocess.run(["qemu-img", "convert", "-O", "vdi", str(raw), str(image)], check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "backup", str(image), "a.vpk", "--compress", "zstd:19"],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not servers_of(image) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None, "the backup ended before it could be killed"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while servers_of(image) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servers_of(image) == []
