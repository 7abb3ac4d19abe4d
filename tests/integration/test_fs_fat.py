"""FAT12/16/32 detector against mkfs.vfat + mcopy images: fsck.vfat, mcopy and partclone.fat.

partclone.fat's map is used as an oracle for FAT16/32 only: for FAT12 it reports ranges that hold
no files (checked by hand: the kept-only-used image is clean and every file reads back).
"""

from __future__ import annotations

import pytest
from test_fs_images import (
    analyse_file,
    backup_restore,
    keep_only,
    need,
    partclone_used,
    random_tree,
    run,
    sha,
    single_fs,
    sparse_file,
)

SIZES = {"fat12": (4 << 20, 30_000), "fat16": (64 << 20, 400_000), "fat32": (300 << 20, 400_000)}


def build(tmp_path, kind, seed=2):
    need("mkfs.vfat", "mcopy", "mdel", "fsck.vfat")
    size, max_file = SIZES[kind]
    tree = tmp_path / "tree"
    sums = random_tree(tree, seed, count=10, max_size=max_file)
    img = sparse_file(tmp_path / "fat.img", size)
    run("mkfs.vfat", "-F", kind[3:], "-n", "VOLPACK", img)
    run("mmd", "-i", img, "::/sub")
    for rel in sums:
        run("mcopy", "-i", img, tree / rel, f"::/{rel}")
    for rel in ("f0.bin", "sub/g5.bin"):
        run("mdel", "-i", img, f"::/{rel}")
        sums.pop(rel)
    extra = bytes(range(256)) * 100
    (tree / "extra.bin").write_bytes(extra)
    run("mcopy", "-i", img, tree / "extra.bin", "::/extra.bin")
    sums["extra.bin"] = sha(extra)
    run("fsck.vfat", "-n", img)
    return img, sums


def files_match(img, sums, tmp_path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for rel, digest in sums.items():
        dest = out / rel.replace("/", "_")
        run("mcopy", "-n", "-o", "-i", img, f"::/{rel}", dest)
        assert sha(dest.read_bytes()) == digest, rel


@pytest.mark.parametrize("kind", ["fat12", "fat16", "fat32"])
def test_fat_kept_used_clusters_give_a_clean_filesystem_with_identical_files(tmp_path, kind):
    img, sums = build(tmp_path, kind)
    fs = single_fs(img, kind)
    assert fs.details["label"] == "VOLPACK"
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    run("fsck.vfat", "-n", kept)
    files_match(kept, sums, tmp_path)
    if kind != "fat12":
        oracle = partclone_used("partclone.fat", img, tmp_path)
        assert oracle.subtract(fs.used).total() == 0
        assert fs.used.subtract(oracle).total() == 0


def test_fat_copies_that_disagree_fall_back_with_one_warning(tmp_path):
    img, _sums = build(tmp_path, "fat16")
    fs = single_fs(img)
    boot = img.read_bytes()[:512]
    reserved = int.from_bytes(boot[14:16], "little")
    with open(img, "r+b") as f:
        f.seek(reserved * 512 + 2 * 40)  # cluster 40 in the first FAT only
        f.write(b"\x00\x00")
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "differ" in warnings[0]
    assert regions[0].used is None and fs.used is not None


def test_fat_entry_pointing_past_the_last_cluster_falls_back(tmp_path):
    img, _sums = build(tmp_path, "fat32")
    boot = img.read_bytes()[:512]
    reserved = int.from_bytes(boot[14:16], "little")
    fat_sectors = int.from_bytes(boot[36:40], "little")
    for copy in (0, 1):
        with open(img, "r+b") as f:
            f.seek((reserved + copy * fat_sectors) * 512 + 4 * 10)
            f.write((0x0FFFFF00 - 1).to_bytes(4, "little"))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "points to cluster" in warnings[0]
    assert regions[0].used is None


def test_fat_backup_restore_gives_a_clean_filesystem_with_identical_files(tmp_path):
    img, sums = build(tmp_path, "fat32")
    restored, result = backup_restore(img, tmp_path)
    assert result.detection["regions"][0]["detector"] == "fat32"
    run("fsck.vfat", "-n", restored)
    files_match(restored, sums, tmp_path)


@pytest.mark.parametrize(
    ("kind", "where"), [("fat16", "state"), ("fat32", "state"), ("fat32", "fat1")]
)
def test_fat_volume_marked_dirty_falls_back(tmp_path, kind, where):
    img, _sums = build(tmp_path, kind)
    data = bytearray(img.read_bytes()[:512])
    reserved = int.from_bytes(data[14:16], "little")
    with open(img, "r+b") as f:
        if where == "state":  # Linux: bit 0 of the boot sector's state byte while mounted
            f.seek(65 if kind == "fat32" else 37)
            f.write(bytes([data[65 if kind == "fat32" else 37] | 1]))
        else:  # Windows: the clean-shutdown bit of FAT entry 1 cleared, in both copies
            fat_sectors = int.from_bytes(data[36:40], "little")
            for copy in (0, 1):
                f.seek((reserved + copy * fat_sectors) * 512 + 4)
                f.write((0x07FFFFFF).to_bytes(4, "little"))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "dirty" in warnings[0]
    assert regions[0].used is None
