"""Only volumes whose size can be trusted are read: backup, map and verify --against refuse procfs
and sysfs files, character devices, FIFOs (without blocking), sockets and directories with one
line naming the path and what it is, exit 3; regular files, qcow2 images and block devices keep
working.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

import volpack
from volumes import write_sparse

INSTEAD = "volpack backs up volumes"


def vp(*args: str) -> subprocess.CompletedProcess:
    # A FIFO source used to block in open() until a writer came: the timeout makes that a failure.
    return subprocess.run(
        ["python3", "-m", "volpack", *args], capture_output=True, text=True, timeout=60
    )


def sys_file() -> str:
    for path in ("/sys/kernel/uevent_seqnum", "/sys/kernel/mm/transparent_hugepage/enabled"):
        if os.path.isfile(path):
            return path
    pytest.skip("no readable /sys/kernel file here")


@pytest.fixture
def archive(tmp_path):
    vol = tmp_path / "v.img"
    write_sparse(str(vol), 1 << 20, [(4096, os.urandom(10_000))])
    arc = tmp_path / "v.vpk"
    volpack.backup(str(vol), str(arc), frame_size=65536)
    return str(arc)


@pytest.fixture(params=["procfs", "sysfs", "dev-null", "dev-zero", "fifo", "socket", "directory"])
def not_a_volume(request, tmp_path):
    """(path, words the message must contain) for each kind of path that is not a volume."""
    kind = request.param
    if kind == "procfs":
        return "/proc/self/status", ["proc pseudo filesystem"]
    if kind == "sysfs":
        return sys_file(), ["sysfs pseudo filesystem"]
    if kind == "dev-null":
        return "/dev/null", ["character device"]
    if kind == "dev-zero":
        return "/dev/zero", ["character device"]
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        return str(path), ["FIFO"]
    if kind == "socket":
        path = tmp_path / "sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        request.addfinalizer(s.close)
        return str(path), ["socket"]
    path = tmp_path / "dir"
    path.mkdir()
    return str(path), ["is a directory"]


def one_source_error(r: subprocess.CompletedProcess, path: str, words: list[str]) -> None:
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith(f"volpack: error: {path}: is "), line
    for w in [*words, INSTEAD]:
        assert w in line, (w, line)


def test_backup_refuses_a_source_whose_size_cannot_be_trusted(tmp_path, not_a_volume):
    path, words = not_a_volume
    arc = tmp_path / "out.vpk"
    one_source_error(vp("backup", path, str(arc), "--no-catalog"), path, words)
    assert not arc.exists()


def test_map_refuses_a_source_whose_size_cannot_be_trusted(not_a_volume):
    path, words = not_a_volume
    one_source_error(vp("map", path), path, words)


def test_verify_against_refuses_a_volume_whose_size_cannot_be_trusted(archive, not_a_volume):
    path, words = not_a_volume
    one_source_error(vp("verify", archive, "--against", path), path, words)


def test_a_qcow2_backing_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    base = tmp_path / "base.img"
    base.write_bytes(b"\1" * 65536)
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", str(top)],
        check=True,
    )
    base.unlink()
    os.mkfifo(base)
    one_source_error(vp("map", str(top)), str(base), ["FIFO"])


def test_regular_files_and_qcow2_images_still_back_up(tmp_path):
    vol = tmp_path / "v.img"
    write_sparse(str(vol), 1 << 20, [(0, os.urandom(5000))])
    r = vp("backup", str(vol), str(tmp_path / "v.vpk"), "--no-catalog")
    assert r.returncode == 0, r.stderr
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    q = tmp_path / "v.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(vol), str(q)], check=True)
    r = vp("backup", str(q), str(tmp_path / "q.vpk"), "--no-catalog")
    assert r.returncode == 0, r.stderr
    assert vp("verify", str(tmp_path / "q.vpk"), "--against", str(vol)).returncode == 0


def test_a_block_device_still_backs_up_and_verifies(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    vol = tmp_path / "v.img"
    write_sparse(str(vol), 1 << 20, [(8192, os.urandom(5000))])
    r = subprocess.run(["losetup", "-f", "--show", "-r", str(vol)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"loop devices unavailable: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        arc = str(tmp_path / "d.vpk")
        r = vp("backup", dev, arc, "--no-catalog")
        assert r.returncode == 0, r.stderr
        assert vp("verify", arc, "--against", dev).returncode == 0
        assert vp("map", dev).returncode == 0
    finally:
        subprocess.run(["losetup", "-d", dev])
