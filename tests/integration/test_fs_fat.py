"""FAT12/16/32 detector against mkfs.vfat + mcopy images: fsck.vfat, mcopy and partclone.fat.

partclone.fat's map is used as an oracle for FAT16/32 only: for FAT12 it reports ranges that hold
no files (checked by hand: the kept-only-used image is clean and every file reads back).
"""

from __future__ import annotations

import struct

import pytest
from test_fs_images import (
    analyse_file,
    backup_restore,
    cli_backup_restore,
    fallback_lines,
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


def build(tmp_path, kind, seed=2, fats=2):
    need("mkfs.vfat", "mcopy", "mdel", "fsck.vfat")
    size, max_file = SIZES[kind]
    tree = tmp_path / "tree"
    sums = random_tree(tree, seed, count=10, max_size=max_file)
    img = sparse_file(tmp_path / "fat.img", size)
    run("mkfs.vfat", "-F", kind[3:], "-f", str(fats), "-n", "VOLPACK", img)
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


def _geometry(img):
    boot = img.read_bytes()[:512]
    bps, spc, reserved, fats, root_entries, total16 = struct.unpack_from("<HBHBHH", boot, 11)
    fat_sectors = struct.unpack_from("<H", boot, 22)[0] or struct.unpack_from("<I", boot, 36)[0]
    root_sectors = -(-(root_entries * 32) // bps)
    data_start = (reserved + fats * fat_sectors + root_sectors) * bps
    return reserved * bps, fat_sectors * bps, fats, data_start, spc * bps


def _clusters(img, name):
    """The file's cluster chain as mtools reads it (``mshowfat``: ``<2-5> <9>``)."""
    out = run("mshowfat", "-i", img, f"::/{name}")
    chain = []
    for part in out.split("<")[1:]:
        bounds = part.split(">")[0].split("-")  # "<5>" for a single cluster
        chain.extend(range(int(bounds[0]), int(bounds[-1]) + 1))
    return chain


def _zero_entry(img, kind, cluster):
    fat_at, fat_bytes, fats, _d, _c = _geometry(img)
    with open(img, "r+b") as f:
        for copy in range(fats):
            base = fat_at + copy * fat_bytes
            if kind == "fat12":
                at = base + cluster * 3 // 2
                f.seek(at)
                (pair,) = struct.unpack("<H", f.read(2))
                pair &= 0x000F if cluster & 1 else 0xF000
                f.seek(at)
                f.write(struct.pack("<H", pair))
            else:
                width = 4 if kind == "fat32" else 2
                f.seek(base + cluster * width)
                f.write(bytes(width))


@pytest.mark.parametrize(
    ("kind", "fats", "which"),
    [("fat16", 1, "middle"), ("fat12", 1, "first"), ("fat32", 2, "last"), ("fat16", 2, "middle")],
)
def test_fat_zeroed_chain_entry_of_a_live_file_falls_back_and_restores_every_byte(
    tmp_path, kind, fats, which
):
    # A zeroed entry in every FAT copy (one copy, or both alike): the FAT alone would call a
    # cluster of a live file free.
    img, _sums = build(tmp_path, kind, fats=fats)
    data = bytes(range(253)) * (120 if kind == "fat12" else 1200)
    (tmp_path / "live.bin").write_bytes(data)
    run("mcopy", "-i", img, tmp_path / "live.bin", "::/live.bin")
    chain = _clusters(img, "live.bin")
    assert len(chain) >= 3
    victim = {"first": chain[0], "middle": chain[len(chain) // 2], "last": chain[-1]}[which]
    _zero_entry(img, kind, victim)
    run("fsck.vfat", "-n", img, ok=(1,))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "marks it free" in warnings[0]
    assert regions[0].used is None
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 1
    assert len(fallback_lines(backup.stderr)) == 1
    _fa, _fb, _n, data_start, cluster = _geometry(restored)
    with open(restored, "rb") as f:
        got = b""
        for c in chain:
            f.seek(data_start + (c - 2) * cluster)
            got += f.read(cluster)
    assert got[: len(data)] == data


def test_fat_undamaged_single_copy_filesystem_warns_nothing_and_matches_partclone(tmp_path):
    img, sums = build(tmp_path, "fat16", fats=1)
    fs = single_fs(img, "fat16")
    assert fs.details["entries_checked"] >= len(sums)
    oracle = partclone_used("partclone.fat", img, tmp_path)
    assert oracle == fs.used
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 0 and fallback_lines(backup.stderr) == []
    files_match(restored, sums, tmp_path)
