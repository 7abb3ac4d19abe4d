"""``verify --against`` an unchanged original after a filesystem-aware backup: the deleted file's
blocks the archive rightly dropped are reported (count, first ranges), not called a difference;
used blocks must still be equal, and where the archive's detector made blocks unused because they
were holes or zeros (--detect holes/zeros, and the fallback region of an auto backup), nonzero
bytes still mean the volume changed (exit 10). Real ext4 images made by mkfs.ext4 and debugfs.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_fs_images import need, run, sparse_file

MiB = 1 << 20


def vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "volpack", *args], capture_output=True, text=True)


@pytest.fixture
def ext4(tmp_path):
    """A 64 MiB volume holding a 48 MiB ext4 (the tail is left to holes + zero scan) with one
    kept file and one deleted file whose 1 MiB of data is still on the volume."""
    need("mkfs.ext4", "debugfs")
    img = sparse_file(tmp_path / "fs.img", 64 * MiB)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", img, "48M")
    kept, doomed = tmp_path / "kept.bin", tmp_path / "doomed.bin"
    kept.write_bytes(os.urandom(300_000))
    doomed.write_bytes(os.urandom(MiB))
    run("debugfs", "-w", "-R", f"write {kept} /kept.bin", img)
    run("debugfs", "-w", "-R", f"write {doomed} /doomed.bin", img)
    block = int(run("debugfs", "-R", "bmap /doomed.bin 0", img).split()[-1])
    run("debugfs", "-w", "-R", "rm /doomed.bin", img)
    run("e2fsck", "-fn", img)
    with open(img, "rb") as f:  # the deleted data is still there
        f.seek(block * 4096)
        assert f.read(4096) == doomed.read_bytes()[:4096]
    return str(img)


def backup(img: str, tmp_path, detect: str) -> str:
    arc = str(tmp_path / f"{detect}.vpk")
    r = vp("backup", img, arc, "--detect", detect, "--no-catalog")
    assert r.returncode == 0, r.stderr
    return arc


def poke(img: str, offset: int, data: bytes) -> None:
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_verify_against_the_unchanged_original_reports_deleted_blocks_and_exits_0(ext4, tmp_path):
    arc = backup(ext4, tmp_path, "auto")
    r = vp("verify", arc, "--against", ext4)
    assert r.returncode == 0, r.stderr
    assert "every used block equals" in r.stdout
    note = [line for line in r.stderr.splitlines() if "not zero" in line]
    assert len(note) == 1 and "deleted or stale data" in note[0], r.stderr
    doc = json.loads(vp("verify", arc, "--against", ext4, "--json").stdout)
    assert doc["differences"] == []
    assert doc["unused_nonzero_blocks"] >= MiB // 4096  # the deleted file at least
    assert doc["unused_nonzero"] and all(a < b for a, b in doc["unused_nonzero"])


def test_a_changed_used_block_still_differs_after_a_filesystem_aware_backup(ext4, tmp_path):
    arc = backup(ext4, tmp_path, "auto")
    block = int(run("debugfs", "-R", "bmap /kept.bin 0", ext4).split()[-1])
    poke(ext4, block * 4096 + 100, b"changed")
    r = vp("verify", arc, "--against", ext4)
    assert r.returncode == 10, r.stderr
    assert f"[{block * 4096 + 100}, " in r.stderr


def test_nonzero_bytes_in_the_fallback_region_of_an_auto_backup_differ(ext4, tmp_path):
    arc = backup(ext4, tmp_path, "auto")
    poke(ext4, 56 * MiB, b"new data beyond the filesystem")
    r = vp("verify", arc, "--against", ext4)
    assert r.returncode == 10, r.stderr
    assert f"[{56 * MiB}, " in r.stderr


@pytest.mark.parametrize("detect", ["holes", "zeros"])
def test_nonzero_bytes_where_a_holes_or_zeros_backup_had_none_differ(ext4, tmp_path, detect):
    arc = backup(ext4, tmp_path, detect)
    assert vp("verify", arc, "--against", ext4).returncode == 0  # unchanged: identical
    free = 40 * MiB  # free in the filesystem, a hole in the image: unused in every mode
    poke(ext4, free, b"written after the backup")
    r = vp("verify", arc, "--against", ext4)
    assert r.returncode == 10, r.stderr
    assert f"[{free}, " in r.stderr
    # The filesystem-aware archive of the same volume calls the same bytes stale data.
    fs_arc = backup(ext4, tmp_path, "fs")
    poke(ext4, free + MiB, b"more free-space writes")
    assert vp("verify", fs_arc, "--against", ext4).returncode == 0
