"""NTFS detector against mkntfs + ntfscp images: partclone.ntfs, ntfsfix -n and ntfscat."""

from __future__ import annotations

import struct
import subprocess

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


def build(tmp_path, seed=3):
    need("mkntfs", "ntfscp", "ntfscat", "ntfsfix")
    tree = tmp_path / "tree"
    sums = random_tree(tree, seed, count=8)
    img = sparse_file(tmp_path / "ntfs.img", 96 << 20)
    run("mkntfs", "-q", "-F", "-Q", "-L", "VOLPACK", img)
    for rel in sums:
        # ntfscp writes into the root; nested names are flattened.
        run("ntfscp", img, tree / rel, "/" + rel.replace("/", "_"))
    return img, {rel.replace("/", "_"): digest for rel, digest in sums.items()}


def files_match(img, sums):
    import subprocess

    for name, digest in sums.items():
        data = subprocess.run(["ntfscat", str(img), "/" + name], capture_output=True, check=True)
        assert sha(data.stdout) == digest, name


def test_ntfs_used_map_covers_partclone_and_keeps_a_clean_filesystem(tmp_path):
    img, sums = build(tmp_path)
    fs = single_fs(img, "ntfs")
    assert fs.details["label"] == "VOLPACK"
    oracle = partclone_used("partclone.ntfs", img, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    # The backup boot sector in the volume's last sector is the only extra.
    assert fs.used.subtract(oracle).total() <= 512
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    assert "processed successfully" in run("ntfsfix", "-n", kept)
    files_match(kept, sums)


def _bitmap_record(img):
    data = img.read_bytes()
    cluster = struct.unpack_from("<H", data, 0x0B)[0] * data[0x0D]
    mft = struct.unpack_from("<Q", data, 0x30)[0] * cluster
    return mft + 6 * 1024


def test_ntfs_bitmap_runlist_outside_the_volume_falls_back_with_one_warning(tmp_path):
    img, _sums = build(tmp_path)
    rec_at = _bitmap_record(img)
    rec = bytearray(img.read_bytes()[rec_at : rec_at + 1024])
    pos = struct.unpack_from("<H", rec, 0x14)[0]
    while struct.unpack_from("<I", rec, pos)[0] != 0x80:
        pos += struct.unpack_from("<I", rec, pos + 4)[0]
    runs = pos + struct.unpack_from("<H", rec, pos + 0x20)[0]
    head = rec[runs]
    lsz = head & 0x0F
    osz = head >> 4
    rec[runs + 1 + lsz : runs + 1 + lsz + osz] = (2 ** (8 * osz - 1) - 1).to_bytes(osz, "little")
    with open(img, "r+b") as f:
        f.seek(rec_at)
        f.write(rec)
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "runlist" in warnings[0]
    assert regions[0].used is None and regions[0].detector == "ntfs"


def test_ntfs_torn_mft_record_falls_back(tmp_path):
    img, _sums = build(tmp_path)
    rec_at = _bitmap_record(img)
    with open(img, "r+b") as f:
        f.seek(rec_at + 510)
        f.write(b"\xee\xee")
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "torn" in warnings[0]
    assert regions[0].used is None


def test_ntfs_backup_restore_gives_a_clean_filesystem_with_identical_files(tmp_path):
    img, sums = build(tmp_path)
    restored, result = backup_restore(img, tmp_path)
    assert result.detection["regions"][0]["detector"] == "ntfs"
    assert "processed successfully" in run("ntfsfix", "-n", restored)
    files_match(restored, sums)


@pytest.mark.root
def test_ntfs_written_through_ntfs3g_with_deletes_keeps_every_live_file(tmp_path):
    import os
    import shutil
    import subprocess

    need("mkntfs", "ntfs-3g", "ntfscat", "ntfsfix")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse for ntfs-3g")
    img = sparse_file(tmp_path / "ntfs.img", 96 << 20)
    run("mkntfs", "-q", "-F", "-Q", img)
    tree = tmp_path / "tree"
    random_tree(tree, 13, count=12)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["ntfs-3g", str(img), str(mnt)], capture_output=True, timeout=60)
    if proc.returncode:
        pytest.skip(f"ntfs-3g mount failed: {proc.stderr.decode(errors='replace').strip()}")
    try:
        shutil.copytree(tree, mnt / "a")
        shutil.copytree(tree, mnt / "b")
        shutil.rmtree(mnt / "a")
        shutil.copytree(tree, mnt / "c")
    finally:
        run("umount", mnt)
    fs = single_fs(img, "ntfs")
    oracle = partclone_used("partclone.ntfs", img, tmp_path)
    assert oracle.subtract(fs.used).total() == 0
    assert fs.used.subtract(oracle).total() <= 512
    kept = keep_only(img, fs.used, tmp_path / "kept.img")
    assert "processed successfully" in run("ntfsfix", "-n", kept)
    for p in tree.rglob("*.bin"):
        rel = p.relative_to(tree).as_posix()
        for top in ("b", "c"):
            data = subprocess.run(
                ["ntfscat", str(kept), f"/{top}/{rel}"], capture_output=True, check=True
            )
            assert sha(data.stdout) == sha(p.read_bytes()), rel


def test_ntfs_bitmap_that_frees_the_mft_falls_back(tmp_path):
    img, _sums = build(tmp_path)
    data = img.read_bytes()
    cluster = struct.unpack_from("<H", data, 0x0B)[0] * data[0x0D]
    mft_lcn = struct.unpack_from("<Q", data, 0x30)[0]
    # The first run of $Bitmap's $DATA: where the cluster bitmap lives.
    rec_at = _bitmap_record(img)
    rec = data[rec_at : rec_at + 1024]
    pos = struct.unpack_from("<H", rec, 0x14)[0]
    while struct.unpack_from("<I", rec, pos)[0] != 0x80:
        pos += struct.unpack_from("<I", rec, pos + 4)[0]
    runs = pos + struct.unpack_from("<H", rec, pos + 0x20)[0]
    lsz, osz = rec[runs] & 0x0F, rec[runs] >> 4
    bitmap_lcn = int.from_bytes(rec[runs + 1 + lsz : runs + 1 + lsz + osz], "little", signed=True)
    with open(img, "r+b") as f:
        f.seek(bitmap_lcn * cluster + mft_lcn // 8)  # clear the bits of $MFT's first clusters
        f.write(b"\x00")
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "marks" in warnings[0]
    assert regions[0].used is None


def _bitmap_lcn(img):
    """Where $Bitmap's data (the cluster bitmap) starts: its first run's LCN."""
    data = img.read_bytes()
    rec_at = _bitmap_record(img)
    rec = data[rec_at : rec_at + 1024]
    pos = struct.unpack_from("<H", rec, 0x14)[0]
    while struct.unpack_from("<I", rec, pos)[0] != 0x80:
        pos += struct.unpack_from("<I", rec, pos + 4)[0]
    runs = pos + struct.unpack_from("<H", rec, pos + 0x20)[0]
    lsz, osz = rec[runs] & 0x0F, rec[runs] >> 4
    return int.from_bytes(rec[runs + 1 + lsz : runs + 1 + lsz + osz], "little", signed=True)


def _file_runs(img, name, segment=0):
    """(lcn, length) runs of one $DATA segment of a file as ``ntfsinfo -v`` prints them (with an
    attribute list, segment -1 is the one in the last extension record)."""
    out = run("ntfsinfo", "-v", "-F", f"/{name}", img)
    lines = out.split("Runlist:")[1:][segment].splitlines()
    runs = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != 3 or not parts[0].startswith("0x"):
            break
        if parts[1].startswith("<"):  # a sparse run
            continue
        runs.append((int(parts[1], 16), int(parts[2], 16)))
    return runs


def _clear_bitmap_bit(img, lcn):
    cluster = struct.unpack_from("<H", img.read_bytes(), 0x0B)[0] * img.read_bytes()[0x0D]
    at = _bitmap_lcn(img) * cluster + lcn // 8
    with open(img, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        assert byte & (1 << (lcn % 8))
        f.seek(at)
        f.write(bytes([byte & ~(1 << (lcn % 8))]))


def test_ntfs_bitmap_bit_cleared_under_a_live_file_falls_back_and_restores_every_byte(tmp_path):
    # $Bitmap has no checksum: one cleared bit under a live file's data is all it takes.
    need("ntfsinfo", "ntfscluster")
    img, _sums = build(tmp_path)
    data = bytes(range(249)) * 1300
    (tmp_path / "live.bin").write_bytes(data)
    run("ntfscp", img, tmp_path / "live.bin", "/live.bin")
    lcn, length = _file_runs(img, "live.bin")[0]
    victim = lcn + length // 2
    _clear_bitmap_bit(img, victim)
    # NTFS's own view: the cluster belongs to the live file, yet its bitmap bit is clear.
    # (ntfsfix -n does not compare $Bitmap with the runlists and still reports success; ntfsck
    # is not packaged here. ntfscluster reads the runlists, so it is the oracle.)
    assert "live.bin" in run("ntfscluster", "-c", str(victim), img)
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "$Bitmap marks it free" in warnings[0]
    assert regions[0].used is None
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 1
    assert len(fallback_lines(backup.stderr)) == 1
    got = subprocess.run(["ntfscat", str(restored), "/live.bin"], capture_output=True, check=True)
    assert got.stdout == data


def test_ntfs_undamaged_volume_walks_its_records_and_warns_nothing(tmp_path):
    img, sums = build(tmp_path)
    fs = single_fs(img, "ntfs")
    assert fs.details["records_checked"] >= 16 + len(sums)
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 0 and fallback_lines(backup.stderr) == []
    files_match(restored, sums)


@pytest.mark.root
def test_ntfs_cluster_mapped_from_an_extension_record_marked_free_falls_back(tmp_path):
    # A file fragmented into hundreds of runs through ntfs-3g: its $DATA continues in extension
    # records listed by an $ATTRIBUTE_LIST. A cluster of the last segment is marked free.
    import os

    need("mkntfs", "ntfs-3g", "ntfsinfo", "ntfscluster", "ntfscat")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse for ntfs-3g")
    img = sparse_file(tmp_path / "ntfs.img", 48 << 20)
    run("mkntfs", "-q", "-F", "-Q", img)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["ntfs-3g", str(img), str(mnt)], capture_output=True, timeout=60)
    if proc.returncode:
        pytest.skip(f"ntfs-3g mount failed: {proc.stderr.decode(errors='replace').strip()}")
    data = bytes(range(256)) * (16 * 2400)
    try:
        count = 0
        try:
            while True:  # fill the volume with one-cluster files, then free every other one
                (mnt / f"s{count}").write_bytes(b"x" * 4096)
                count += 1
        except OSError:
            pass
        for i in range(0, count, 2):
            (mnt / f"s{i}").unlink()
        (mnt / "big.bin").write_bytes(data)
    finally:
        run("umount", mnt)
    info = run("ntfsinfo", "-v", "-F", "/big.bin", img)
    assert "$ATTRIBUTE_LIST" in info and info.count("Dumping attribute $DATA") >= 2
    fs = single_fs(img, "ntfs")
    assert fs.details["records_checked"] > count // 2
    lcn, length = _file_runs(img, "big.bin", segment=-1)[-1]
    _clear_bitmap_bit(img, lcn + length - 1)
    assert "big.bin" in run("ntfscluster", "-c", str(lcn + length - 1), img)
    regions, warnings = analyse_file(img)
    assert len(warnings) == 1 and "$Bitmap marks it free" in warnings[0]
    assert regions[0].used is None
    restored, backup = cli_backup_restore(img, tmp_path)
    assert backup.returncode == 1
    got = subprocess.run(["ntfscat", str(restored), "/big.bin"], capture_output=True, check=True)
    assert got.stdout == data
