"""Whole-disk images: sfdisk GPT and MBR (extended/logical) tables with ext4, FAT, NTFS, swap and
unknown partitions; regions compared with ``sfdisk --json`` and backup → restore → fsck per
partition.
"""

from __future__ import annotations

import json

import pytest
from test_fs_images import (
    analyse_file,
    backup_restore,
    need,
    random_tree,
    run,
    sparse_file,
)

MiB = 1 << 20


def dd_in(disk, part, offset):
    with open(part, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(offset)
        while chunk := src.read(8 * MiB):
            dst.write(chunk)


def make_parts(tmp_path):
    need("mkfs.ext4", "mkfs.vfat", "mcopy", "mkntfs", "ntfscp", "mkswap")
    tree = tmp_path / "tree"
    random_tree(tree, 8, count=6)
    ext = sparse_file(tmp_path / "p_ext.img", 60 * MiB)
    run("mkfs.ext4", "-q", "-F", "-d", tree, ext)
    fat = sparse_file(tmp_path / "p_fat.img", 40 * MiB)
    run("mkfs.vfat", fat)
    run("mcopy", "-i", fat, tree / "f0.bin", "::/f0.bin")
    ntfs = sparse_file(tmp_path / "p_ntfs.img", 40 * MiB)
    run("mkntfs", "-q", "-F", "-Q", ntfs)
    run("ntfscp", ntfs, tree / "f1.bin", "/f1.bin")
    swap = sparse_file(tmp_path / "p_swap.img", 16 * MiB)
    run("mkswap", swap)
    return ext, fat, ntfs, swap


def sfdisk_parts(disk):
    table = json.loads(run("sfdisk", "--json", disk))["partitiontable"]
    return table, [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]


def test_gpt_disk_regions_follow_the_table_and_every_filesystem_is_recognised(tmp_path):
    need("sfdisk")
    ext, fat, ntfs, swap = make_parts(tmp_path)
    disk = sparse_file(tmp_path / "disk.img", 200 * MiB)
    layout = "label: gpt\nsize=60MiB\nsize=40MiB\nsize=40MiB\nsize=16MiB\nsize=20MiB\n"
    run("sfdisk", "-q", disk, stdin=layout.encode())
    _table, parts = sfdisk_parts(disk)
    for img, (start, _len) in zip((ext, fat, ntfs, swap), parts, strict=False):
        dd_in(disk, img, start)
    regions, warnings = analyse_file(disk)
    assert warnings == []
    assert regions[0].start == 0 and regions[-1].end == 200 * MiB
    assert all(a.end == b.start for a, b in zip(regions, regions[1:], strict=False))
    by_start = {r.start: r for r in regions}
    kinds = [by_start[start].detector for start, _len in parts]
    assert kinds == ["ext4", "fat16", "ntfs", "swap", "unknown"]
    assert [by_start[s].details["partition"] for s, _l in parts] == [1, 2, 3, 4, 5]
    gpt = [r for r in regions if r.detector == "gpt"]
    assert [(r.start, r.end) for r in gpt] == [(0, 34 * 512), (200 * MiB - 33 * 512, 200 * MiB)]
    restored, result = backup_restore(disk, tmp_path)
    for name, (start, length) in zip(("ext", "fat", "ntfs"), parts, strict=False):
        part = tmp_path / f"r_{name}.img"
        with open(restored, "rb") as f:
            f.seek(start)
            part.write_bytes(f.read(length))
        {
            "ext": lambda p: run("e2fsck", "-fn", p),
            "fat": lambda p: run("fsck.vfat", "-n", p),
            "ntfs": lambda p: run("ntfsfix", "-n", p),
        }[name](part)
    assert result.used_blocks * 4096 < 40 * MiB


def test_gpt_with_damaged_primary_header_uses_the_backup_and_warns(tmp_path):
    need("sfdisk", "mkfs.ext4")
    ext, _fat, _ntfs, _swap = make_parts(tmp_path)
    disk = sparse_file(tmp_path / "disk.img", 100 * MiB)
    run("sfdisk", "-q", disk, stdin=b"label: gpt\nsize=60MiB\n")
    _table, parts = sfdisk_parts(disk)
    dd_in(disk, ext, parts[0][0])
    with open(disk, "r+b") as f:
        f.seek(512 + 24)
        f.write(b"\xff")
    regions, warnings = analyse_file(disk)
    assert any("primary GPT header" in w for w in warnings)
    assert [r.detector for r in regions if r.start == parts[0][0]] == ["ext4"]


def test_mbr_disk_with_logical_partitions_is_walked_through_the_ebr_chain(tmp_path):
    need("sfdisk")
    ext, fat, _ntfs, swap = make_parts(tmp_path)
    disk = sparse_file(tmp_path / "disk.img", 200 * MiB)
    layout = (
        "label: dos\nstart=2048, size=60MiB, type=83\nstart=124928, size=120MiB, type=5\n"
        "start=126976, size=40MiB, type=c\nstart=210944, size=16MiB, type=82\n"
        "start=247808, size=10MiB, type=83\n"
    )
    run("sfdisk", "-q", disk, stdin=layout.encode())
    _table, parts = sfdisk_parts(disk)
    starts = {p: s for p, (s, _l) in zip((1, 2, 5, 6, 7), parts, strict=True)}
    dd_in(disk, ext, starts[1])
    dd_in(disk, fat, starts[5])
    dd_in(disk, swap, starts[6])
    regions, warnings = analyse_file(disk)
    assert warnings == []
    found = {r.details.get("partition"): r.detector for r in regions if "partition" in r.details}
    assert found == {1: "ext4", 5: "fat16", 6: "swap", 7: "unknown"}
    ebrs = [r.start for r in regions if r.detector == "mbr"]
    assert ebrs[0] == 0 and len(ebrs) == 4  # the MBR and three EBRs
    assert all(r.used is not None and r.used.total() == 512 for r in regions if r.detector == "mbr")


def test_partition_past_the_end_of_the_disk_is_ignored_with_a_warning(tmp_path):
    need("sfdisk")
    disk = sparse_file(tmp_path / "disk.img", 64 * MiB)
    run("sfdisk", "-q", disk, stdin=b"label: dos\nstart=2048, size=20MiB, type=83\n")
    with open(disk, "r+b") as f:
        f.seek(446 + 16 + 4)
        f.write(
            bytes([0x83, 0, 0, 0]) + (100000).to_bytes(4, "little") + (10**6).to_bytes(4, "little")
        )
    regions, warnings = analyse_file(disk)
    assert len(warnings) == 1 and "outside" in warnings[0]
    assert regions[-1].end == 64 * MiB


@pytest.mark.parametrize("scheme", ["dos", "gpt"])
def test_regions_tile_the_disk_without_gaps_or_overlaps(tmp_path, scheme):
    need("sfdisk")
    disk = sparse_file(tmp_path / "disk.img", 32 * MiB + 4096)
    run("sfdisk", "-q", disk, stdin=f"label: {scheme}\nsize=8MiB\nsize=1MiB\nsize=4MiB\n".encode())
    regions, _w = analyse_file(disk)
    assert regions[0].start == 0 and regions[-1].end == 32 * MiB + 4096
    assert all(
        a.end == b.start and a.start < a.end for a, b in zip(regions, regions[1:], strict=False)
    )


@pytest.mark.root
def test_lvm_physical_volume_is_named_and_left_to_the_conservative_detectors(tmp_path):
    import os
    import subprocess

    need("pvcreate", "losetup")
    if os.geteuid() != 0 or subprocess.run(["losetup", "-f"], capture_output=True).returncode:
        pytest.skip("needs root and a free loop device")
    img = sparse_file(tmp_path / "pv.img", 32 * MiB)
    loop = run("losetup", "-f", "--show", img).strip()
    try:
        env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
        proc = subprocess.run(
            ["pvcreate", "-q", "-ff", "-y", "--config", "devices { use_devicesfile=0 }", loop],
            capture_output=True,
            env=env,
        )
        if proc.returncode:
            pytest.skip(f"pvcreate failed: {proc.stderr.decode(errors='replace').strip()}")
    finally:
        run("losetup", "-d", loop)
    regions, warnings = analyse_file(img)
    assert warnings == []
    assert [(r.detector, r.used) for r in regions] == [("lvm2-pv", None)]


def test_tables_larger_than_one_read_are_read_in_pieces_with_the_same_result(tmp_path, monkeypatch):
    from volpack.detect.fs import _common

    need("sfdisk")
    ext, fat, ntfs, _swap = make_parts(tmp_path)
    disk = sparse_file(tmp_path / "disk.img", 160 * MiB)
    run("sfdisk", "-q", disk, stdin=b"label: gpt\nsize=60MiB\nsize=40MiB\nsize=40MiB\n")
    _table, parts = sfdisk_parts(disk)
    for img, (start, _len) in zip((ext, fat, ntfs), parts, strict=True):
        dd_in(disk, img, start)
    whole, _w = analyse_file(disk)
    # 1 KiB pieces: the ext bitmaps (flex_bg runs), the FAT and NTFS's $Bitmap all span several.
    monkeypatch.setattr(_common, "MAX_READ", 1024)
    pieces, warnings = analyse_file(disk)
    assert warnings == []
    assert [(r.start, r.end, r.detector) for r in pieces] == [
        (r.start, r.end, r.detector) for r in whole
    ]
    assert all(a.used == b.used for a, b in zip(whole, pieces, strict=True))
