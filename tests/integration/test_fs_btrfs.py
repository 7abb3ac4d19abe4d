"""btrfs detector: mkfs.btrfs --rootdir images (and with root, kernel-written ones with deletes,
snapshots and subvolumes); oracles are btrfs check --readonly and btrfs restore (offline read).

partclone.btrfs is not used as the oracle: its map also marks logical addresses as if they were
physical ones (ranges that hold nothing), and it skips metadata that ``btrfs check`` needs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_fs_images import (
    analyse_file,
    backup_restore,
    keep_only,
    need,
    random_tree,
    run,
    single_fs,
    sparse_file,
)


def build(tmp_path, opts=(), seed=6):
    need("mkfs.btrfs", "btrfs")
    tree = tmp_path / "tree"
    sums = random_tree(tree, seed, count=12)
    img = sparse_file(tmp_path / "btrfs.img", 512 << 20)
    run("mkfs.btrfs", "-q", "-f", *opts, "--rootdir", tree, img)
    return img, sums


def restored_sums(img: Path, workdir: Path) -> dict[str, str]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    run("btrfs", "restore", img, out)
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in out.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize(
    "opts", [(), ("-m", "single"), ("-O", "^no-holes", "-R", "^free-space-tree")], ids=str
)
def test_btrfs_kept_used_bytes_pass_btrfs_check_with_identical_files(tmp_path, opts):
    img, sums = build(tmp_path, opts)
    fs = single_fs(img, "btrfs")
    assert fs.details["uuid"] == run("blkid", "-o", "value", "-s", "UUID", img).strip()
    assert fs.details["chunks"], "the chunk tree is recorded"
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    run("btrfs", "check", "--readonly", kept)
    assert restored_sums(kept, tmp_path) == sums
    # Used is what the extent tree allocates plus the first MiB and superblock copies.
    assert fs.used.total() < sum((tmp_path / "tree" / r).stat().st_size for r in sums) + (12 << 20)


def test_btrfs_superblock_checksum_mismatch_falls_back_with_one_warning(tmp_path):
    img, _sums = build(tmp_path)
    with open(img, "r+b") as f:
        f.seek(0x10000 + 0x78)  # bytes_used
        f.write(b"\x01")
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "checksum" in warnings[0]
    assert regions[0].used is None


def test_btrfs_tree_node_of_another_filesystem_falls_back(tmp_path):
    img, _sums = build(tmp_path)
    fs = single_fs(img)
    # The root tree node: overwrite its fsid, as if the node were stale or foreign.
    data = img.read_bytes()
    root_phys = None
    for logical, length, _t, stripes in fs.details["chunks"]:
        sb_root = int.from_bytes(data[0x10000 + 0x50 : 0x10000 + 0x58], "little")
        if logical <= sb_root < logical + length:
            root_phys = stripes[0][1] + sb_root - logical
    assert root_phys is not None
    with open(img, "r+b") as f:
        f.seek(root_phys + 32)
        f.write(bytes(16))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "identity" in warnings[0]
    assert regions[0].used is None


def test_btrfs_backup_restore_passes_check_with_identical_files(tmp_path):
    img, sums = build(tmp_path)
    restored, result = backup_restore(img, tmp_path)
    assert result.detection["regions"][0]["detector"] == "btrfs"
    run("btrfs", "check", "--readonly", restored)
    assert restored_sums(restored, tmp_path) == sums


@pytest.mark.root
def test_btrfs_written_by_the_kernel_with_deletes_and_subvolumes_keeps_every_file(tmp_path):
    if os.geteuid() != 0 or subprocess.run(["losetup", "-f"], capture_output=True).returncode:
        pytest.skip("needs root and a free loop device")
    need("mkfs.btrfs", "btrfs")
    img = sparse_file(tmp_path / "btrfs.img", 1 << 30)
    run("mkfs.btrfs", "-q", "-f", img)
    tree = tmp_path / "tree"
    random_tree(tree, 7, count=20)
    mnt = Path(tempfile.mkdtemp(dir=tmp_path))
    proc = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")
    try:
        shutil.copytree(tree, mnt / "a")
        shutil.copytree(tree, mnt / "b")
        run("btrfs", "subvolume", "create", mnt / "sv")
        shutil.copytree(tree, mnt / "sv" / "c")
        run("btrfs", "subvolume", "snapshot", mnt / "sv", mnt / "snap")
        shutil.rmtree(mnt / "a")
        shutil.rmtree(mnt / "sv" / "c" / "sub")
        shutil.copytree(tree, mnt / "d")
    finally:
        run("umount", mnt)
    fs = single_fs(img, "btrfs")
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    run("btrfs", "check", "--readonly", kept)
    assert restored_sums(kept, tmp_path) == restored_sums(img, tmp_path)


@pytest.mark.root
def test_btrfs_raid1_device_alone_keeps_a_complete_copy(tmp_path):
    if os.geteuid() != 0 or subprocess.run(["losetup", "-f"], capture_output=True).returncode:
        pytest.skip("needs root and free loop devices")
    need("mkfs.btrfs", "btrfs")
    a = sparse_file(tmp_path / "a.img", 300 << 20)
    b = sparse_file(tmp_path / "b.img", 300 << 20)
    run("mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", a, b)
    tree = tmp_path / "tree"
    random_tree(tree, 12, count=10)
    loops = [run("losetup", "-f", "--show", img).strip() for img in (a, b)]
    mnt = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        opts = ",".join(f"device={dev}" for dev in loops)
        proc = subprocess.run(["mount", "-o", opts, loops[0], str(mnt)], capture_output=True)
        if proc.returncode:
            pytest.skip(f"mount failed: {proc.stderr.decode(errors='replace').strip()}")
        try:
            shutil.copytree(tree, mnt / "t")
            shutil.copytree(tree, mnt / "gone")
            shutil.rmtree(mnt / "gone")
        finally:
            run("umount", mnt)
    finally:
        for dev in loops:
            run("losetup", "-d", dev)
    expected = {
        f"t/{p.relative_to(tree).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tree.rglob("*")
        if p.is_file()
    }
    for devid, img in ((1, a), (2, b)):
        fs = single_fs(img, "btrfs")
        assert fs.details["devid"] == devid and fs.details["num_devices"] == 2
        kept = keep_only(img, fs.used, tmp_path / f"kept{devid}.img")
        # Each device alone (degraded) gives back every file.
        assert restored_sums(kept, tmp_path) == expected


@pytest.mark.parametrize("csum", ["crc32c", "xxhash", "sha256", "blake2"])
def test_btrfs_tree_node_with_a_flipped_byte_fails_its_checksum_and_falls_back(tmp_path, csum):
    img, _sums = build(tmp_path, ("--csum", csum))
    fs = single_fs(img)
    data = img.read_bytes()
    sb_root = int.from_bytes(data[0x10000 + 0x50 : 0x10000 + 0x58], "little")
    phys = next(
        stripes[0][1] + sb_root - logical
        for logical, length, _t, stripes in fs.details["chunks"]
        if logical <= sb_root < logical + length
    )
    # Item data sits at the end of a leaf: a flip there passes every structural check.
    at = phys + fs.details["node_size"] - 40
    with open(img, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "checksum" in warnings[0]
    assert regions[0].used is None
