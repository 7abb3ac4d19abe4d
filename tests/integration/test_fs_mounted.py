"""Mounted volumes are refused: an image mounted through a loop device, the loop device itself,
a disk whose partition is mounted, and an active swap file; idle volumes pass.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from test_fs_images import need, run, sparse_file

from volpack.detect.mounted import check_not_mounted, is_mounted, mount_users
from volpack.errors import SourceError


def _loop_ok() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if subprocess.run(["losetup", "-f"], capture_output=True).returncode:
        return "no free loop device"
    return None


@pytest.fixture
def ext_image(tmp_path):
    need("mkfs.ext4")
    img = sparse_file(tmp_path / "e.img", 32 << 20)
    run("mkfs.ext4", "-q", "-F", img)
    return img


def test_an_idle_image_is_not_mounted(ext_image):
    assert not is_mounted(str(ext_image))
    check_not_mounted(str(ext_image))


def test_a_missing_path_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="cannot stat"):
        check_not_mounted(str(tmp_path / "nope.img"))


@pytest.mark.root
def test_image_mounted_through_a_loop_device_is_refused_with_the_mount_point(ext_image, tmp_path):
    reason = _loop_ok()
    if reason:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-o", "loop,ro", str(ext_image), str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")
    try:
        with pytest.raises(SourceError, match=f"mounted on {mnt}.*--allow-mounted"):
            check_not_mounted(str(ext_image))
        loop = run("losetup", "-j", ext_image).split(":")[0]
        assert is_mounted(loop)
    finally:
        run("umount", mnt)
    assert not is_mounted(str(ext_image))


@pytest.mark.root
def test_disk_with_a_mounted_partition_is_refused(tmp_path):
    reason = _loop_ok()
    if reason:
        pytest.skip(reason)
    need("sfdisk", "mkfs.ext4")
    disk = sparse_file(tmp_path / "d.img", 64 << 20)
    run("sfdisk", "-q", disk, stdin=b"label: gpt\nsize=32MiB\n")
    loop = run("losetup", "-f", "-P", "--show", disk).strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        part = f"{loop}p1"
        sysdev = Path(f"/sys/class/block/{Path(part).name}/dev")
        if not Path(part).exists() and sysdev.exists():
            # Without udev the node is not created; make it from sysfs.
            major, minor = map(int, sysdev.read_text().split(":"))
            os.mknod(part, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        if not Path(part).exists():
            pytest.skip("partition device node did not appear (no udev, no sysfs entry)")
        run("mkfs.ext4", "-q", "-F", part)
        run("mount", part, mnt)
        try:
            assert any("mounted on" in u for u in mount_users(loop))
            with pytest.raises(SourceError):
                check_not_mounted(str(disk))
        finally:
            run("umount", mnt)
    finally:
        run("losetup", "-d", loop)


@pytest.mark.root
def test_active_swap_file_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    need("mkswap", "swapon", "swapoff")
    swap = tmp_path / "swap.img"
    swap.write_bytes(bytes(8 << 20))
    swap.chmod(0o600)
    run("mkswap", swap)
    proc = subprocess.run(["swapon", str(swap)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"swapon not permitted here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        assert "active swap" in mount_users(str(swap))
    finally:
        run("swapoff", swap)


@pytest.mark.root
def test_btrfs_mount_with_an_anonymous_device_number_is_found_by_its_source(tmp_path):
    # btrfs reports a 0:NN device in mountinfo; the mount source (the loop device) still names it.
    reason = _loop_ok()
    if reason:
        pytest.skip(reason)
    need("mkfs.btrfs")
    img = sparse_file(tmp_path / "b.img", 160 << 20)
    run("mkfs.btrfs", "-q", "-f", img)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")
    try:
        assert mount_users(str(img)) == [f"mounted on {mnt}"]
    finally:
        run("umount", mnt)
    assert not is_mounted(str(img))


@pytest.mark.root
def test_disk_image_with_a_partition_mounted_by_offset_is_refused(tmp_path):
    reason = _loop_ok()
    if reason:
        pytest.skip(reason)
    need("sfdisk", "mkfs.ext4")
    disk = sparse_file(tmp_path / "d.img", 64 << 20)
    run("sfdisk", "-q", disk, stdin=b"label: gpt\nstart=2048, size=32MiB\n")
    part = sparse_file(tmp_path / "p.img", 32 << 20)
    run("mkfs.ext4", "-q", "-F", part)
    with open(part, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(1 << 20)
        dst.write(src.read())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-o", "loop,ro,offset=1048576,sizelimit=33554432", str(disk), str(mnt)],
        capture_output=True,
    )
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")
    try:
        with pytest.raises(SourceError, match=f"mounted on {mnt}"):
            check_not_mounted(str(disk))
    finally:
        run("umount", mnt)
    check_not_mounted(str(disk))
