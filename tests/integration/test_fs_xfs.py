"""XFS detector: images filled by mkfs.xfs protofiles (no mount), and with root by a loop mount
with deletes and rewrites; oracles are partclone.xfs, xfs_repair -n and the file contents.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

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


def protofile(tree: Path, sums: dict[str, str]) -> str:
    lines = ["/dummy", "0 0", "d--755 0 0"]
    top = sorted(r for r in sums if "/" not in r)
    sub = sorted(r for r in sums if r.startswith("sub/"))
    lines += [f"{r} ---644 0 0 {tree / r}" for r in top]
    lines.append("sub d--755 0 0")
    lines += [f"{r[4:]} ---644 0 0 {tree / r}" for r in sub]
    lines += ["$", "$", ""]
    return "\n".join(lines)


def build(tmp_path, opts=(), seed=4):
    need("mkfs.xfs", "xfs_repair", "xfs_db")
    tree = tmp_path / "tree"
    sums = random_tree(tree, seed, count=12)
    proto = tmp_path / "proto.txt"
    proto.write_text(protofile(tree, sums))
    img = sparse_file(tmp_path / "xfs.img", 320 << 20)
    run("mkfs.xfs", "-q", "-f", *opts, "-p", proto, img)
    run("xfs_repair", "-n", img)
    return img, sums


def xfs_cat(img: Path, path: str) -> bytes:
    """File contents read offline through xfs_db (no mount)."""
    out = subprocess.run(
        ["xfs_db", "-r", "-c", f"path /{path}", "-c", "bmap", str(img)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    sb = subprocess.run(
        ["xfs_db", "-r", "-c", "sb 0", "-c", "print blocksize agblocks agblklog", str(img)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    vals = dict(line.split(" = ") for line in sb.strip().splitlines())
    bs, agblocks, agblklog = int(vals["blocksize"]), int(vals["agblocks"]), int(vals["agblklog"])
    chunks = []
    with open(img, "rb") as f:
        for line in out.strip().splitlines():
            # data offset 0 startblock 24 (0/24) count 98 flag 0
            words = line.split()
            off, fsb, count = int(words[2]), int(words[4]), int(words[7])
            ag, agbno = fsb >> agblklog, fsb & ((1 << agblklog) - 1)
            f.seek((ag * agblocks + agbno) * bs)
            chunks.append((off, f.read(count * bs)))
    data = b"".join(c for _o, c in sorted(chunks))
    size = subprocess.run(
        ["xfs_db", "-r", "-c", f"path /{path}", "-c", "print core.size", str(img)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return data[: int(size.split(" = ")[1])]


def files_match(img, sums):
    for rel, digest in sums.items():
        assert sha(xfs_cat(img, rel)) == digest, rel


@pytest.mark.parametrize("opts", [(), ("-m", "crc=0"), ("-b", "size=1024")], ids=str)
def test_xfs_used_map_covers_partclone_and_keeps_a_clean_filesystem(tmp_path, opts):
    img, sums = build(tmp_path, opts)
    fs = single_fs(img, "xfs")
    oracle = partclone_used("partclone.xfs", img, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    # The AG free lists (AGFL, 4 blocks per AG) are reserved but not in the free-space tree.
    assert fs.used.subtract(oracle).total() <= 4 * fs.details["ag_count"] * fs.details["block_size"]
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    run("xfs_repair", "-n", kept)
    files_match(kept, sums)


def test_xfs_damaged_free_space_header_falls_back_with_one_warning(tmp_path):
    img, _sums = build(tmp_path)
    with open(img, "r+b") as f:
        f.seek(512 + 52)  # AG 0 AGF freeblks
        f.write(b"\x00\x00\x00\x07")
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "AGF" in warnings[0]
    assert regions[0].used is None and regions[0].detector == "xfs"


def test_xfs_backup_restore_gives_a_clean_filesystem_with_identical_files(tmp_path):
    img, sums = build(tmp_path)
    restored, result = backup_restore(img, tmp_path)
    assert result.detection["regions"][0]["detector"] == "xfs"
    run("xfs_repair", "-n", restored)
    files_match(restored, sums)


def _can_loop_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if (
        shutil.which("losetup") is None
        or subprocess.run(["losetup", "-f"], capture_output=True).returncode
    ):
        return "no free loop device"
    return None


@pytest.mark.root
def test_xfs_written_by_the_kernel_with_deletes_keeps_every_live_file(tmp_path):
    reason = _can_loop_mount()
    if reason:
        pytest.skip(reason)
    need("mkfs.xfs", "xfs_repair")
    img = sparse_file(tmp_path / "xfs.img", 400 << 20)
    run("mkfs.xfs", "-q", "-f", img)
    tree = tmp_path / "tree"
    random_tree(tree, 5, count=20)
    mnt = Path(tempfile.mkdtemp(dir=tmp_path))
    proc = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")
    try:
        for i in range(4):
            shutil.copytree(tree, mnt / f"t{i}")
        shutil.rmtree(mnt / "t1")
        for p in (mnt / "t2").glob("f*.bin"):
            p.unlink()
        shutil.copytree(tree, mnt / "t4")
    finally:
        run("umount", mnt)
    fs = single_fs(img, "xfs")
    oracle = partclone_used("partclone.xfs", img, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    assert fs.used.subtract(oracle).total() <= 4 * fs.details["ag_count"] * fs.details["block_size"]
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    run("xfs_repair", "-n", kept)
    sums = {}
    for p in sorted(tree.rglob("*.bin")):
        rel = p.relative_to(tree).as_posix()
        sums[f"t4/{rel}"] = sha(p.read_bytes())
        sums[f"t0/{rel}"] = sums[f"t4/{rel}"]
    files_match(kept, sums)


def _mounted(img: Path, mnt: Path):
    reason = _can_loop_mount()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"loop mount failed: {proc.stderr.decode(errors='replace').strip()}")


def _unmount(img: Path, mnt: Path) -> None:
    """Unmount, then detach the loop device at once and sync: a loop device the kernel detaches
    lazily may still hold the log's last writes when the image file is read right after."""
    run("umount", mnt)
    attached = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True).stdout
    for line in attached.splitlines():
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)
    os.sync()


@pytest.mark.root
def test_xfs_snapshot_with_a_dirty_log_falls_back_and_a_wrapped_clean_log_does_not(tmp_path):
    need("mkfs.xfs", "xfs_io", "xfs_logprint")
    img = sparse_file(tmp_path / "xfs.img", 320 << 20)
    run("mkfs.xfs", "-q", "-f", img)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _mounted(img, mnt)
    try:
        # Enough metadata traffic to wrap the 64 MiB log at least once.
        for r in range(6):
            d = mnt / f"r{r}"
            d.mkdir()
            for i in range(20000):
                (d / str(i)).touch()
            os.sync()
            shutil.rmtree(d)
            os.sync()
        random_tree(mnt / "live", 10, count=6)
        os.sync()
        snap = tmp_path / "snap.img"
        shutil.copyfile(img, snap)  # what a block-level snapshot of the mounted volume holds
    finally:
        _unmount(img, mnt)
    assert "DIRTY" in run("xfs_logprint", "-t", snap)
    regions, warnings = analyse_file(snap)
    assert len(warnings) == 1 and "unmount record" in warnings[0]
    assert regions[0].used is None
    assert "CLEAN" in run("xfs_logprint", "-t", img)
    vals = dict(
        line.split(" = ")
        for line in run(
            "xfs_db", "-r", "-c", "sb 0", "-c", "p logstart agblocks agblklog blocksize", img
        )
        .strip()
        .splitlines()
    )
    start = int(vals["logstart"])
    ag, agbno = start >> int(vals["agblklog"]), start & ((1 << int(vals["agblklog"])) - 1)
    with open(img, "rb") as f:
        f.seek((ag * int(vals["agblocks"]) + agbno) * int(vals["blocksize"]))
        w0, w1 = struct.unpack(">II", f.read(8))
    assert (w1 if w0 == 0xFEEDBABE else w0) >= 2, "the log wrapped at least once"
    single_fs(img, "xfs")


def test_xfs_free_record_moved_without_crc_is_caught_by_the_by_size_tree(tmp_path):
    # A v4 filesystem has no CRCs: moving a free extent keeps counts and order intact, but the
    # by-size tree still lists the old extent, so the detector falls back instead of dropping
    # the blocks the moved record now claims are free.
    img, _sums = build(tmp_path, ("-m", "crc=0"))
    data = img.read_bytes()
    block_size = struct.unpack_from(">I", data, 4)[0]
    root = struct.unpack_from(">I", data, 512 + 16)[0]
    leaf = root * block_size
    assert data[leaf : leaf + 4] == b"ABTB"
    start, count = struct.unpack_from(">II", data, leaf + 16)
    with open(img, "r+b") as f:
        f.seek(leaf + 16)
        f.write(struct.pack(">I", start - 1))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "disagree" in warnings[0]
    assert regions[0].used is None


def test_xfs_v5_tree_block_with_a_flipped_byte_fails_its_crc(tmp_path):
    img, _sums = build(tmp_path)
    data = img.read_bytes()
    block_size = struct.unpack_from(">I", data, 4)[0]
    root = struct.unpack_from(">I", data, 512 + 16)[0]
    leaf = root * block_size
    assert data[leaf : leaf + 4] == b"AB3B"
    with open(img, "r+b") as f:
        f.seek(leaf + 24)  # the block's LSN: no structural check looks at it
        f.write(bytes([data[leaf + 24] ^ 0x01]))
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "CRC" in warnings[0]
    assert regions[0].used is None
