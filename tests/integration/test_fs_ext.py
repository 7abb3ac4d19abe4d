"""ext2/3/4 detector against mke2fs/debugfs-built images: partclone's map, e2fsck and debugfs.

Every variant is checked three ways: partclone.extfs's used map must be covered (0 missed bytes,
excess bounded), a copy that keeps only the used bytes must pass ``e2fsck -fn`` with every file
identical (``debugfs -R dump``), and damaged metadata must fall back with one warning.
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

from volpack.extents import Extents

VARIANTS = {
    "ext4": ["-t", "ext4", "-b", "4096"],
    "ext4-1k": ["-t", "ext4", "-b", "1024"],
    "ext2": ["-t", "ext2"],
    "ext3-2k": ["-t", "ext3", "-b", "2048"],
    "ext4-gdt-csum": ["-t", "ext4", "-O", "^metadata_csum,uninit_bg", "-b", "4096"],
    "ext4-no-flex-bg": ["-t", "ext4", "-O", "^flex_bg", "-b", "4096"],
    "ext4-meta-bg": ["-t", "ext4", "-O", "meta_bg,^resize_inode", "-b", "1024"],
    "ext4-sparse-super2": ["-t", "ext4", "-O", "sparse_super2", "-b", "4096"],
    "ext4-64bit-nocsum": ["-t", "ext4", "-O", "64bit,^metadata_csum", "-b", "4096"],
}


def build(tmp_path, opts, size=160 << 20, seed=1):
    """mkfs -d a random tree, then delete files and write more so usage is scattered."""
    need("mkfs.ext4", "debugfs")
    tree = tmp_path / "tree"
    sums = random_tree(tree, seed, count=15)
    img = sparse_file(tmp_path / "fs.img", size)
    run("mkfs.ext4", "-q", "-F", *opts, "-d", tree, img)
    for rel in ("f0.bin", "f4.bin", "sub/g5.bin"):
        run("debugfs", "-w", "-R", f"rm /{rel}", img)
        sums.pop(rel)
    extra = tmp_path / "extra.bin"
    extra.write_bytes(bytes(range(256)) * 3000)
    run("debugfs", "-w", "-R", f"write {extra} /extra.bin", img)
    sums["extra.bin"] = sha(extra.read_bytes())
    run("e2fsck", "-fn", img)
    return img, sums


def files_match(img, sums):
    for rel, digest in sums.items():
        data = run_bytes("debugfs", "-R", f"dump /{rel} /dev/stdout", img)
        assert sha(data) == digest, rel


def run_bytes(*cmd):
    import subprocess

    return subprocess.run([str(c) for c in cmd], capture_output=True, check=True).stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ext_used_map_covers_partclone_and_keeps_a_clean_filesystem(tmp_path, variant):
    img, sums = build(tmp_path, VARIANTS[variant])
    fs = single_fs(img)
    assert fs.detector in ("ext2", "ext3", "ext4")
    assert fs.details["uuid"] == run("blkid", "-o", "value", "-s", "UUID", img).strip()
    oracle = partclone_used("partclone.extfs", img, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    # Only the boot block of a 1 KiB-block filesystem is extra (partclone skips block 0).
    assert fs.used.subtract(oracle).total() <= 1024
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    run("e2fsck", "-fn", kept)
    files_match(kept, sums)


def test_ext4_bigalloc_keeps_a_clean_filesystem(tmp_path):
    # partclone cannot read bigalloc; e2fsck and the file contents are the oracle.
    img, sums = build(tmp_path, ["-t", "ext4", "-O", "bigalloc", "-C", "16384", "-b", "4096"])
    fs = single_fs(img, "ext4")
    assert fs.details["cluster_size"] == 16384
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    run("e2fsck", "-fn", kept)
    files_match(kept, sums)


def test_ext_filesystem_smaller_than_its_volume_leaves_the_tail_to_fallback(tmp_path):
    need("mkfs.ext4")
    img = sparse_file(tmp_path / "fs.img", 64 << 20)
    run("mkfs.ext4", "-q", "-F", img, "48M")
    regions, warnings = analyse_file(img)
    assert warnings == []
    assert [(r.start, r.end, r.detector) for r in regions] == [
        (0, 48 << 20, "ext4"),
        (48 << 20, 64 << 20, "unknown"),
    ]
    assert regions[1].used is None


def _sb(img):
    with open(img, "rb") as f:
        f.seek(1024)
        return bytearray(f.read(1024))


def _poke(img, offset, data):
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_ext_damaged_group_descriptor_falls_back_with_one_warning(tmp_path):
    img, _sums = build(tmp_path, VARIANTS["ext4"])
    _poke(img, 4096 + 64 + 2, b"\x99\x99")  # group 1 inode bitmap pointer (checksummed)
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "checksum" in warnings[0]
    assert regions[0].used is None and regions[0].detector == "ext"


def test_ext_zeroed_bitmap_falls_back_instead_of_dropping_blocks(tmp_path):
    # Without checksums only the free counts can tell: they must disagree with the bitmap.
    img, _sums = build(tmp_path, VARIANTS["ext4-64bit-nocsum"])
    with open(img, "rb") as f:
        f.seek(4096)
        (bitmap,) = struct.unpack("<I", f.read(4))
    _poke(img, bitmap * 4096, bytes(4096))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "free count" in warnings[0]
    assert regions[0].used is None


def test_ext_journal_needing_recovery_contributes_its_bitmap_copies(tmp_path):
    # debugfs writes a transaction holding a new copy of group 0's block bitmap (64 more blocks
    # in use) and leaves the journal unrecovered, as a snapshot of a mounted ext4 would be.
    img, _sums = build(tmp_path, VARIANTS["ext4"])
    before = single_fs(img).used
    with open(img, "rb") as f:
        f.seek(4096)
        (bitmap,) = struct.unpack("<I", f.read(4))
        f.seek(bitmap * 4096)
        data = bytearray(f.read(4096))
    free_byte = max(i for i, b in enumerate(data[:4096]) if b == 0)
    data[free_byte - 7 : free_byte + 1] = b"\xff" * 8
    new_blocks = Extents.span((free_byte - 7) * 8 * 4096, (free_byte + 1) * 8 * 4096)
    image = tmp_path / "bitmap.bin"
    image.write_bytes(bytes(data))
    script = tmp_path / "journal.cmd"
    script.write_text(f"jo\njw -b {bitmap} {image}\njc\n")
    run("debugfs", "-w", "-f", script, img)
    assert "needs_recovery" in run("dumpe2fs", "-h", img)
    fs = single_fs(img, "ext4")
    assert fs.details["journal_bitmaps"] == 1
    assert fs.used.contains(before) and fs.used.contains(new_blocks)
    # The oracle: what e2fsck's journal replay makes of it.
    recovered = tmp_path / "recovered.img"
    recovered.write_bytes(img.read_bytes())
    run("e2fsck", "-fy", recovered, ok=(0, 1))
    oracle = partclone_used("partclone.extfs", recovered, tmp_path)
    assert oracle.subtract(fs.used).total() == 0


def test_ext_backup_restore_gives_a_clean_filesystem_with_identical_files(tmp_path):
    img, sums = build(tmp_path, VARIANTS["ext4"])
    restored, result = backup_restore(img, tmp_path)
    regions = result.detection["regions"]
    assert regions[0]["detector"] == "ext4"
    run("e2fsck", "-fn", restored)
    files_match(restored, sums)


def test_ext_backup_of_damaged_filesystem_still_restores_every_file(tmp_path):
    img, sums = build(tmp_path, VARIANTS["ext4"])
    with open(img, "rb") as f:
        f.seek(4096 + 64 + 2)
        original = f.read(2)
    _poke(img, 4096 + 64 + 2, b"\x99\x99")
    restored, result = backup_restore(img, tmp_path)
    assert any("checksum" in w for w in result.detection["warnings"])
    # The damaged image is unreadable for debugfs; holes + zero scan keep every non-zero byte,
    # so the restore equals it byte for byte, and repairing the pointer gives back every file.
    assert restored.read_bytes() == img.read_bytes()
    _poke(restored, 4096 + 64 + 2, original)
    files_match(restored, sums)


@pytest.mark.slow
@pytest.mark.parametrize("size", [4 << 30, 1 << 40], ids=["4GiB", "1TiB"])
def test_ext_detection_of_large_filesystems_is_fast_and_matches_partclone(tmp_path, size):
    import time

    need("mkfs.ext4")
    tree = tmp_path / "tree"
    random_tree(tree, 9, count=30, max_size=4 << 20)
    img = sparse_file(tmp_path / "big.img", size)
    run("mkfs.ext4", "-q", "-F", "-d", tree, img)
    single_fs(img)  # warm the page cache
    elapsed = []
    for _ in range(3):
        t0 = time.perf_counter()
        fs = single_fs(img, "ext4")
        elapsed.append(time.perf_counter() - t0)
    # 8192 groups for 1 TiB: bitmaps are read and expanded in chunks, still well under a second.
    assert min(elapsed) < (0.1 if size == 4 << 30 else 1.0)
    oracle = partclone_used("partclone.extfs", img, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    assert fs.used.subtract(oracle).total() == 0


@pytest.mark.root
def test_ext2_snapshot_of_a_mounted_filesystem_is_not_trusted(tmp_path):
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or subprocess.run(["losetup", "-f"], capture_output=True).returncode:
        pytest.skip("needs root and a free loop device")
    need("mkfs.ext4")
    img = sparse_file(tmp_path / "fs.img", 64 << 20)
    run("mkfs.ext4", "-q", "-F", "-t", "ext2", img)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")
    try:
        random_tree(mnt / "t", 11, count=5)
        os.sync()
        shutil.copyfile(img, tmp_path / "snap.img")
    finally:
        run("umount", mnt)
    regions, warnings = analyse_file(tmp_path / "snap.img")
    assert len(warnings) == 1 and regions[0].used is None
    assert "not cleanly unmounted" in warnings[0]
    single_fs(img)  # after the unmount it is trusted again


@pytest.mark.root
def test_ext4_snapshot_of_a_mounted_filesystem_keeps_what_journal_replay_needs(tmp_path):
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or subprocess.run(["losetup", "-f"], capture_output=True).returncode:
        pytest.skip("needs root and a free loop device")
    need("mkfs.ext4", "debugfs")
    img = sparse_file(tmp_path / "fs.img", 256 << 20)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", img)
    tree = tmp_path / "tree"
    sums = random_tree(tree, 14, count=15)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")
    snap = tmp_path / "snap.img"
    try:
        shutil.copytree(tree, mnt / "a")
        os.sync()
        shutil.copytree(tree, mnt / "b")
        shutil.rmtree(mnt / "a")
        os.sync()
        shutil.copyfile(img, snap)  # a crash-consistent snapshot: the journal needs recovery
    finally:
        run("umount", mnt)
    assert "needs_recovery" in run("dumpe2fs", "-h", snap)
    fs = single_fs(snap, "ext4")
    recovered = tmp_path / "recovered.img"
    recovered.write_bytes(snap.read_bytes())
    run("e2fsck", "-fy", recovered, ok=(0, 1))
    oracle = partclone_used("partclone.extfs", recovered, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    kept = keep_only(snap, fs.used, tmp_path / "kept.img")
    run("e2fsck", "-fy", kept, ok=(0, 1))
    run("e2fsck", "-fn", kept)
    files_match(kept, {f"b/{rel}": digest for rel, digest in sums.items()})


def test_ext_bitmap_with_moved_bits_fails_its_checksum_and_falls_back(tmp_path):
    # Free counts still agree (one bit cleared, another set); only the metadata_csum bitmap
    # checksum can tell, and the region must not trust the bitmap.
    img, _sums = build(tmp_path, VARIANTS["ext4"])
    with open(img, "rb") as f:
        f.seek(4096)
        (bitmap,) = struct.unpack("<I", f.read(4))
        f.seek(bitmap * 4096)
        first = f.read(4096)
    data = bytearray(first)
    used_byte = next(i for i, b in enumerate(data) if b == 0xFF)
    free_byte = next(i for i, b in enumerate(data) if b == 0x00 and i > used_byte)
    data[used_byte] = 0xFE
    data[free_byte] = 0x01
    _poke(img, bitmap * 4096, bytes(data))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "block bitmap checksum" in warnings[0]
    assert regions[0].used is None


def _live_file(tmp_path, img):
    """A 300 KB file written with debugfs; returns (its bytes as debugfs reads them, blocks)."""
    data = bytes(range(251)) * 1200
    src = tmp_path / "live.bin"
    src.write_bytes(data)
    run("debugfs", "-w", "-R", f"write {src} /live.bin", img)
    assert run_bytes("debugfs", "-R", "dump /live.bin /dev/stdout", img) == data
    blocks = [int(b) for b in run("debugfs", "-R", "blocks /live.bin", img).split()]
    return data, blocks


def _move_bitmap_bit(tmp_path, img, used_block):
    """Mark a block of a live file free and a free block of the same group used, with debugfs:
    free counts and (with metadata_csum) bitmap and descriptor checksums stay consistent."""
    out = run("debugfs", "-R", f"ffb 1 {used_block}", img)
    free_block = int(out.split(":")[1].split()[0])
    script = tmp_path / "move.cmd"
    script.write_text(f"freeb {used_block}\nsetb {free_block}\n")
    run("debugfs", "-w", "-f", script, img)
    assert "marked in use" not in run("debugfs", "-R", f"testb {used_block}", img)


@pytest.mark.parametrize("variant", ["ext2", "ext3-2k", "ext4-64bit-nocsum", "ext4"])
def test_ext_bitmap_bit_moved_off_a_live_file_falls_back_and_restores_every_byte(tmp_path, variant):
    # A live file's block marked free, another block of its group marked
    # used; the free count does not change. Without metadata_csum nothing else can tell, and
    # with it (ext4) debugfs rewrites the checksums: a consistent but wrong bitmap.
    img, _sums = build(tmp_path, VARIANTS[variant])
    data, blocks = _live_file(tmp_path, img)
    _move_bitmap_bit(tmp_path, img, blocks[len(blocks) // 2])
    out = run("e2fsck", "-fn", img, ok=(4,))
    assert "differences" in out.lower() or "bitmap" in out.lower()
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "bitmap marks it free" in warnings[0]
    assert regions[0].used is None
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 1
    assert len(fallback_lines(backup.stderr)) == 1
    assert run_bytes("debugfs", "-R", "dump /live.bin /dev/stdout", restored) == data


def test_ext_metadata_block_marked_free_falls_back(tmp_path):
    img, _sums = build(tmp_path, VARIANTS["ext4-64bit-nocsum"])
    with open(img, "rb") as f:
        f.seek(4096 + 8)
        (table,) = struct.unpack("<I", f.read(4))  # group 0's inode table
    _move_bitmap_bit(tmp_path, img, table + 1)
    run("e2fsck", "-fn", img, ok=(4,))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "metadata" in warnings[0]
    assert regions[0].used is None


def test_ext_undamaged_filesystem_walks_its_inodes_and_warns_nothing(tmp_path):
    img, _sums = build(tmp_path, VARIANTS["ext2"])
    data, _blocks = _live_file(tmp_path, img)
    fs = single_fs(img, "ext2")
    assert fs.details["inodes_checked"] >= 12
    oracle = partclone_used("partclone.extfs", img, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 0 and fallback_lines(backup.stderr) == []
    assert run_bytes("debugfs", "-R", "dump /live.bin /dev/stdout", restored) == data


def _fragmented(tmp_path, opts):
    """A 600 KB file written into the gaps left by deleted small files: several extents (an
    extent tree block) on ext4, indirect and double indirect blocks on ext3 with 1 KiB blocks."""
    need("mkfs.ext4", "debugfs")
    tree = tmp_path / "small"
    tree.mkdir()
    for i in range(40):
        (tree / f"s{i}.bin").write_bytes(bytes([i + 1]) * 20000)
    img = sparse_file(tmp_path / "frag.img", 32 << 20)
    run("mkfs.ext4", "-q", "-F", *opts, "-d", tree, img)
    script = tmp_path / "rm.cmd"
    script.write_text("".join(f"rm /s{i}.bin\n" for i in range(0, 40, 2)))
    run("debugfs", "-w", "-f", script, img)
    data = bytes(range(241)) * 2500
    (tmp_path / "big.bin").write_bytes(data)
    run("debugfs", "-w", "-R", f"write {tmp_path / 'big.bin'} /big.bin", img)
    return img, data


@pytest.mark.parametrize(
    ("opts", "tag", "what"),
    [
        (["-t", "ext4", "-O", "64bit,^metadata_csum"], "ETB0", "extent tree block"),
        (["-t", "ext3", "-b", "1024"], "IND", "indirect block"),
        (["-t", "ext3", "-b", "1024"], "DIND", "indirect block"),
    ],
    ids=["extent-tree-block", "indirect", "double-indirect"],
)
def test_ext_tree_block_of_a_live_file_marked_free_falls_back(tmp_path, opts, tag, what):
    import re

    img, data = _fragmented(tmp_path, opts)
    stat = run("debugfs", "-R", "stat /big.bin", img)
    block = int(re.search(rf"\({tag}\):(\d+)", stat).group(1))
    _move_bitmap_bit(tmp_path, img, block)
    run("e2fsck", "-fn", img, ok=(4,))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and what in warnings[0] and "marks it free" in warnings[0]
    assert regions[0].used is None
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 1
    assert run_bytes("debugfs", "-R", "dump /big.bin /dev/stdout", restored) == data
