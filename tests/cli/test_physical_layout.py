"""``restore --layout physical`` is only for the source kinds it was made for (LVM logical volumes):
an archive of a plain file or a qcow2 image records host-disk or image-file offsets, and writing
there would corrupt other data. It is refused with one line and exit 2 before anything is written.
(The LVM case still working is tests/integration/test_lvm_cli.py and test_lvm_restore.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from volumes import write_sparse


def vp(*args: str, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", "-m", "volpack", *args], capture_output=True, text=True, stdin=stdin
    )


def image(tmp_path) -> str:
    vol = tmp_path / "vm.img"
    write_sparse(str(vol), 4 << 20, [(0, os.urandom(300_000)), (3 << 20, os.urandom(70_000))])
    return str(vol)


def qcow2_image(tmp_path) -> str:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    q = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", image(tmp_path), str(q)], check=True)
    return str(q)


def host_disk(tmp_path) -> str:
    """A stand-in for the disk the image lived on: large enough for any recorded offset not to
    be refused for size, filled with bytes that must survive."""
    host = tmp_path / "host.img"
    with open(host, "wb") as f:
        f.write(b"\x5a" * (1 << 20))
        f.truncate(1 << 42)
    return str(host)


def one_usage_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.mark.parametrize("make,kind", [(image, "file"), (qcow2_image, "qcow2")])
def test_layout_physical_refuses_an_archive_of_a_file_or_qcow2_image(tmp_path, make, kind):
    src = make(tmp_path)
    arc = str(tmp_path / "vm.vpk")
    r = vp("backup", src, arc, "--no-catalog")
    assert r.returncode == 0, r.stderr
    host = host_disk(tmp_path)
    before = os.stat(host)
    r = vp("restore", arc, host, "--force", "--layout", "physical")
    one_usage_line(r, arc, "--layout physical is for LVM logical volumes", f"a {kind} source")
    after = os.stat(host)
    assert (after.st_mtime_ns, after.st_size, after.st_blocks) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_blocks,
    )
    with open(host, "rb") as f:
        assert f.read(1 << 20) == b"\x5a" * (1 << 20)


def test_layout_physical_refuses_a_file_archive_read_from_a_pipe_too(tmp_path):
    arc = str(tmp_path / "vm.vpk")
    assert vp("backup", image(tmp_path), arc, "--no-catalog").returncode == 0
    host = host_disk(tmp_path)
    before = os.stat(host).st_mtime_ns
    with open(arc, "rb") as f:
        r = vp("restore", "-", host, "--force", "--layout", "physical", stdin=f)
    one_usage_line(r, "--layout physical is for LVM logical volumes", "a file source")
    assert os.stat(host).st_mtime_ns == before
