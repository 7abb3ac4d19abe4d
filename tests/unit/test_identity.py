"""identity: the overlap algebra, paths not created yet, and partitions resolved to ranges of their
disk. Partition devices do not appear in every container, so the partition cases use real device
nodes (mknod) described by a sysfs tree built here in sysfs's own layout; loop devices and files
are covered for real by tests/cli/test_aliases.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from volpack import identity
from volpack.errors import UsageError
from volpack.identity import Role, Storage, check_distinct, overlaps, storage_of

MAJOR = 259  # blkext; the minors below are far beyond what a test machine has


def test_overlap_needs_the_same_object_and_a_shared_byte():
    a = ("inode", 1, 2)
    assert overlaps(Storage(a, "f"), Storage(a, "f"))
    assert overlaps(Storage(a, "f", 0, 10), Storage(a, "f", 9, None))
    assert not overlaps(Storage(a, "f", 0, 10), Storage(a, "f", 10, 20))
    assert not overlaps(Storage(a, "f", 20, None), Storage(a, "f", 0, 20))
    assert not overlaps(Storage(a, "f"), Storage(("inode", 1, 3), "g"))


def test_a_path_not_created_yet_is_known_by_its_resolved_parent_and_name(tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink("d", tmp_path / "e")
    assert overlaps(storage_of(str(tmp_path / "d" / "x")), storage_of(str(tmp_path / "e" / "x")))
    assert not overlaps(
        storage_of(str(tmp_path / "d" / "x")), storage_of(str(tmp_path / "d" / "y"))
    )
    (tmp_path / "d" / "x").write_bytes(b"")  # once it exists it is known by its inode
    assert not overlaps(
        storage_of(str(tmp_path / "d" / "x")), storage_of(str(tmp_path / "d" / "z"))
    )


def test_the_clash_names_both_roles_and_the_remedy(tmp_path):
    f = tmp_path / "v.img"
    f.write_bytes(b"x")
    os.link(f, tmp_path / "h.img")
    roles = [Role(str(f), "the source being backed up", "source")]
    with pytest.raises(UsageError, match=r"h.img: is the same file as .*v.img \(inode \d+"):
        check_distinct(
            [*roles, Role(str(tmp_path / "h.img"), "the archive", "archive path")], UsageError
        )
    with pytest.raises(UsageError, match="v.img: is the source being backed up; choose another x"):
        check_distinct([*roles, Role(str(f), "the archive", "x")], UsageError)


@pytest.fixture
def fake_disk(tmp_path, monkeypatch):
    """Nodes for a disk (minor 1000) with partitions at sectors [2048, +8192) and [10240, +8192),
    and a loop device (7:1000) over partition 1 at offset 4096, with their sysfs entries."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    sysfs = tmp_path / "sys"
    disk_dir = sysfs / "devices" / "virtual" / "block" / "fakedisk"
    nodes = {}
    for name, (major, minor) in {
        "fakedisk": (MAJOR, 1000),
        "fakedisk1": (MAJOR, 1001),
        "fakedisk2": (MAJOR, 1002),
        "fakeloop": (7, 1000),
    }.items():
        node = tmp_path / name
        r = subprocess.run(["mknod", str(node), "b", str(major), str(minor)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"mknod failed: {r.stderr.decode().strip()}")
        nodes[name] = str(node)
        d = disk_dir if name == "fakedisk" else disk_dir / name
        if name == "fakeloop":
            d = sysfs / "devices" / "virtual" / "block" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "dev").write_text(f"{major}:{minor}\n")
        link = sysfs / "dev" / "block" / f"{major}:{minor}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(d)
    for name, start in (("fakedisk1", 2048), ("fakedisk2", 10240)):
        (disk_dir / name / "partition").write_text("1\n")
        (disk_dir / name / "start").write_text(f"{start}\n")
        (disk_dir / name / "size").write_text("8192\n")
    loop = sysfs / "devices" / "virtual" / "block" / "fakeloop" / "loop"
    loop.mkdir()
    (loop / "backing_file").write_text(nodes["fakedisk1"] + "\n")
    (loop / "offset").write_text("4096\n")
    (loop / "sizelimit").write_text("0\n")
    monkeypatch.setattr(identity, "SYSFS", str(sysfs))
    return nodes


def test_a_partition_is_a_byte_range_of_its_disk(fake_disk):
    disk, p1, p2 = (storage_of(fake_disk[n]) for n in ("fakedisk", "fakedisk1", "fakedisk2"))
    assert disk.key == p1.key == p2.key == ("block", os.makedev(MAJOR, 1000))
    assert (p1.start, p1.end) == (2048 * 512, (2048 + 8192) * 512)
    assert overlaps(disk, p1) and overlaps(p2, disk)
    assert not overlaps(p1, p2)


def test_a_loop_device_over_a_partition_reaches_the_disk_range_behind_it(fake_disk):
    loop, p1, p2 = (storage_of(fake_disk[n]) for n in ("fakeloop", "fakedisk1", "fakedisk2"))
    assert loop.key == p1.key
    assert (loop.start, loop.end) == (2048 * 512 + 4096, (2048 + 8192) * 512)
    assert overlaps(loop, p1) and not overlaps(loop, p2)
    with pytest.raises(UsageError, match=r"overlaps .*fakedisk1, the source, in bytes \[1052672, "):
        check_distinct(
            [
                Role(fake_disk["fakedisk1"], "the source", "source"),
                Role(fake_disk["fakeloop"], "s", "x"),
            ],
            UsageError,
        )


def test_paths_of_any_kind_that_reach_nothing_shared_are_distinct(fake_disk, tmp_path):
    f = tmp_path / "f.img"
    f.write_bytes(b"x")
    check_distinct(
        [
            Role(fake_disk["fakedisk1"], "a", "a"),
            Role(fake_disk["fakedisk2"], "b", "b"),
            Role(str(f), "c", "c"),
            Role(str(tmp_path / "new.vpk"), "d", "d"),
            Role(str(Path("/dev/null")), "e", "e"),
        ],
        UsageError,
    )
