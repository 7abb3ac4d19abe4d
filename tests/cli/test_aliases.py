"""The source, the archive, the staging area and the restore target must be different storage, by
identity and not by name: the same path, a hard link, a symlink, a bind mount, a loop device or a
partition range reaching the same bytes is refused with one line and its exit code, before
anything is written; source and archive bytes stay exactly as they were (checked by hash)."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

import volpack
from cli_helpers import one_error_line
from volpack.errors import EXIT_TARGET, EXIT_USAGE
from volumes import write_sparse

MiB = 1 << 20


def vp(*args: str, stdout=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", "-m", "volpack", *args],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def sha(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def hashes(*paths: Path | str) -> list[str]:
    return [sha(p) for p in paths]


@pytest.fixture
def vol(tmp_path) -> Path:
    path = tmp_path / "v.img"
    write_sparse(str(path), 4 * MiB, [(8192, os.urandom(700_000)), (3 * MiB, os.urandom(9000))])
    return path


@pytest.fixture
def old_archive(tmp_path, vol) -> Path:
    """An archive already at out.vpk (what --force would replace)."""
    path = tmp_path / "out.vpk"
    volpack.backup(str(vol), str(path), frame_size=65536, allow_mounted=True)
    return path


def backup(*args: str) -> subprocess.CompletedProcess:
    return vp("backup", *args, "--no-catalog", "--allow-mounted")


# -- the same name ---------------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_backup_onto_its_own_source_is_refused_naming_the_source(tmp_path, vol, force):
    before = sha(vol)
    line = one_error_line(
        backup(str(vol), str(vol), *(["--force"] if force else [])),
        EXIT_USAGE,
        "is the source being backed up",
        "choose another archive path",
    )
    assert "--force" not in line and "old archive" not in line
    assert sha(vol) == before
    assert sorted(os.listdir(tmp_path)) == ["v.img"]  # no partial archive left behind


def test_staging_on_the_archive_path_is_refused_and_nothing_is_catalogued(tmp_path, vol):
    out = tmp_path / "out.vpk"
    catalog = tmp_path / "catalog.sqlite"
    r = vp("backup", str(vol), str(out), "--staging", str(out), "--catalog", str(catalog))
    one_error_line(r, EXIT_USAGE, "out.vpk", "is the archive being written", "staging path")
    assert sorted(os.listdir(tmp_path)) == ["v.img"]
    assert not catalog.exists()


def test_staging_on_an_existing_archive_path_with_force_keeps_the_old_archive(
    tmp_path, vol, old_archive
):
    before = hashes(vol, old_archive)
    r = backup(str(vol), str(old_archive), "--staging", str(old_archive), "--force")
    one_error_line(r, EXIT_USAGE, "is the archive being written", "choose another staging path")
    assert hashes(vol, old_archive) == before
    assert sorted(os.listdir(tmp_path)) == ["out.vpk", "v.img"]


def test_staging_on_the_source_is_refused_naming_the_source(tmp_path, vol):
    before = sha(vol)
    r = backup(str(vol), str(tmp_path / "a.vpk"), "--staging", str(vol), "--force")
    one_error_line(r, EXIT_USAGE, "is the source being backed up", "choose another staging path")
    assert sha(vol) == before
    assert sorted(os.listdir(tmp_path)) == ["v.img"]


def test_archive_on_stdout_redirected_into_the_source_is_refused(vol):
    before = sha(vol)
    with open(vol, "ab") as out:
        r = vp("backup", str(vol), "-", "--no-catalog", stdout=out)
    one_error_line(r, EXIT_USAGE, "is the same file as", "the source being backed up")
    assert sha(vol) == before


# -- hard links and symlinks for each pair ---------------------------------------------------------


def _make_alias(kind: str, original: Path, alias: Path) -> None:
    if kind == "hardlink":
        os.link(original, alias)
    else:
        os.symlink(original.name, alias)  # relative, as users write them


@pytest.mark.parametrize("kind", ["hardlink", "symlink"])
def test_archive_path_aliasing_the_source_is_refused(tmp_path, vol, kind):
    alias = tmp_path / "alias.vpk"
    _make_alias(kind, vol, alias)
    before = sha(vol)
    r = backup(str(vol), str(alias), "--force")
    one_error_line(r, EXIT_USAGE, "is the same file as", "the source being backed up")
    assert sha(vol) == before and sha(alias) == before


@pytest.mark.parametrize("kind", ["hardlink", "symlink"])
def test_staging_path_aliasing_the_source_is_refused(tmp_path, vol, kind):
    alias = tmp_path / "alias.stage"
    _make_alias(kind, vol, alias)
    before = sha(vol)
    r = backup(str(vol), str(tmp_path / "a.vpk"), "--staging", str(alias))
    one_error_line(r, EXIT_USAGE, "is the same file as", "choose another staging path")
    assert sha(vol) == before
    assert not (tmp_path / "a.vpk").exists()


@pytest.mark.parametrize("kind", ["hardlink", "symlink"])
def test_staging_path_aliasing_the_archive_is_refused(tmp_path, vol, old_archive, kind):
    alias = tmp_path / "alias.stage"
    _make_alias(kind, old_archive, alias)
    before = hashes(vol, old_archive)
    r = backup(str(vol), str(old_archive), "--staging", str(alias), "--force")
    one_error_line(r, EXIT_USAGE, "the archive being written", "choose another staging path")
    assert hashes(vol, old_archive) == before


def test_staging_symlink_to_the_new_archive_path_is_refused(tmp_path, vol):
    """A dangling symlink to where the archive will appear: both resolve to the same new file."""
    os.symlink("out.vpk", tmp_path / "stage")
    r = backup(str(vol), str(tmp_path / "out.vpk"), "--staging", str(tmp_path / "stage"))
    one_error_line(r, EXIT_USAGE, "the archive being written", "choose another staging path")
    assert not (tmp_path / "out.vpk").exists()


def test_new_archive_and_staging_through_a_symlinked_directory_are_refused(tmp_path, vol):
    (tmp_path / "d").mkdir()
    os.symlink("d", tmp_path / "e")
    r = backup(str(vol), str(tmp_path / "d" / "o.vpk"), "--staging", str(tmp_path / "e" / "o.vpk"))
    one_error_line(r, EXIT_USAGE, "the archive being written", "choose another staging path")
    assert os.listdir(tmp_path / "d") == []


def test_different_new_files_in_one_directory_are_accepted(tmp_path, vol):
    r = backup(str(vol), str(tmp_path / "a.vpk"), "--staging", str(tmp_path / "a.stage"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.vpk", "v.img"]


@pytest.mark.parametrize("kind", ["hardlink", "symlink"])
def test_restore_onto_an_alias_of_the_archive_is_refused(tmp_path, old_archive, kind):
    alias = tmp_path / "alias.img"
    _make_alias(kind, old_archive, alias)
    before = sha(old_archive)
    one_error_line(
        vp("restore", str(old_archive), str(alias), "--force"),
        EXIT_TARGET,
        "is the same file as",
        "the archive being restored",
    )
    one_error_line(
        vp("restore", str(old_archive), str(alias), "--force", "--layout", "physical"),
        EXIT_TARGET,
        "the archive being restored",
        "physical volume",
    )
    assert sha(old_archive) == before


# -- root: bind mounts, loop devices, partition ranges ---------------------------------------------


@pytest.fixture
def losetup():
    """attach(path, *losetup options) -> /dev/loopN, detached afterwards; skips when unavailable."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop device support (/dev/loop-control missing)")
    attached: list[str] = []

    def attach(path: Path | str, *options: str) -> str:
        r = subprocess.run(
            ["losetup", "-f", "--show", *options, str(path)], capture_output=True, text=True
        )
        if r.returncode != 0:
            pytest.skip(f"losetup failed: {r.stderr.strip()}")
        attached.append(r.stdout.strip())
        return attached[-1]

    yield attach
    for dev in reversed(attached):
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.mark.root
def test_bind_mounted_alias_of_the_source_is_refused_as_archive_and_staging(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    vol = tmp_path / "a" / "v.img"
    write_sparse(str(vol), 2 * MiB, [(4096, os.urandom(100_000))])
    r = subprocess.run(
        ["mount", "--bind", str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"bind mount failed: {r.stderr.strip()}")
    try:
        before = sha(vol)
        alias = tmp_path / "b" / "v.img"
        one_error_line(backup(str(vol), str(alias), "--force"), EXIT_USAGE, "the source being")
        one_error_line(
            backup(str(vol), str(tmp_path / "o.vpk"), "--staging", str(alias)),
            EXIT_USAGE,
            "the source being",
        )
        assert sha(vol) == before
        assert os.listdir(tmp_path / "a") == ["v.img"]
    finally:
        subprocess.run(["umount", str(tmp_path / "b")])


@pytest.mark.root
def test_loop_device_over_the_source_is_refused_as_staging(tmp_path, vol, losetup):
    dev = losetup(vol)
    before = sha(vol)
    r = backup(str(vol), str(tmp_path / "a.vpk"), "--staging", dev, "--force")
    one_error_line(r, EXIT_USAGE, dev, "the source being backed up", "choose another staging path")
    assert sha(vol) == before
    assert not (tmp_path / "a.vpk").exists()


@pytest.mark.root
def test_the_source_device_itself_as_staging_is_one_line_not_a_busy_traceback(
    tmp_path, vol, losetup
):
    dev = losetup(vol)
    before = sha(vol)
    r = backup(dev, str(tmp_path / "a.vpk"), "--staging", dev, "--force")
    one_error_line(r, EXIT_USAGE, "is the source being backed up", "staging path")
    assert sha(vol) == before


@pytest.mark.root
def test_archive_at_the_backing_file_of_a_loop_source_is_refused(tmp_path, vol, losetup):
    dev = losetup(vol)
    before = sha(vol)
    r = backup(dev, str(vol), "--force")
    one_error_line(r, EXIT_USAGE, "is the same file as", dev, "choose another archive path")
    assert sha(vol) == before


@pytest.mark.root
def test_loop_device_over_the_archive_is_refused_as_staging(tmp_path, vol, old_archive, losetup):
    dev = losetup(old_archive)
    before = hashes(vol, old_archive)
    r = backup(str(vol), str(old_archive), "--staging", dev, "--force")
    one_error_line(r, EXIT_USAGE, "the archive being written", "choose another staging path")
    assert hashes(vol, old_archive) == before


@pytest.mark.root
def test_archive_at_the_backing_file_of_the_staging_device_is_refused(tmp_path, vol, losetup):
    backing = tmp_path / "stage.img"
    backing.write_bytes(b"\x5a" * (2 * MiB))
    dev = losetup(backing)
    r = backup(str(vol), str(backing), "--staging", dev, "--force")
    one_error_line(r, EXIT_USAGE, dev, "the archive being written", "choose another staging path")
    assert backing.read_bytes() == b"\x5a" * (2 * MiB)


@pytest.mark.root
def test_restore_onto_a_loop_device_over_the_archive_is_refused(tmp_path, old_archive, losetup):
    dev = losetup(old_archive)
    before = sha(old_archive)
    one_error_line(
        vp("restore", str(old_archive), dev, "--force"), EXIT_TARGET, "the archive being restored"
    )
    one_error_line(
        vp("restore", str(old_archive), dev, "--force", "--layout", "physical"),
        EXIT_TARGET,
        "the archive being restored",
    )
    assert sha(old_archive) == before


def _disk_with_two_partitions(path: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """A 16 MiB disk image with an MBR and two 4 MiB partitions of random data; their byte
    ranges as (offset, size)."""
    p1, p2 = (1 * MiB, 4 * MiB), (8 * MiB, 4 * MiB)
    write_sparse(str(path), 16 * MiB, [(p1[0], os.urandom(p1[1])), (p2[0], os.urandom(p2[1]))])
    table = f"label: dos\nstart={p1[0] // 512}, size={p1[1] // 512}\n"
    table += f"start={p2[0] // 512}, size={p2[1] // 512}\n"
    r = subprocess.run(["sfdisk", "-q", str(path)], input=table, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"sfdisk failed: {r.stderr.strip()}")
    return p1, p2


def _range_sha(path: Path, offset: int, size: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(size)).hexdigest()


@pytest.mark.root
def test_loop_devices_over_overlapping_partition_ranges_clash_and_disjoint_ones_do_not(
    tmp_path, losetup
):
    disk = tmp_path / "disk.img"
    (o1, n1), (o2, n2) = _disk_with_two_partitions(disk)
    part1 = losetup(disk, "-o", str(o1), "--sizelimit", str(n1))
    before = _range_sha(disk, o1, n1)
    # A staging device over the last MiB of partition 1 and the gap after it.
    overlap = losetup(disk, "-o", str(o1 + n1 - MiB), "--sizelimit", str(2 * MiB))
    r = backup(part1, str(tmp_path / "a.vpk"), "--staging", overlap, "--force")
    line = one_error_line(r, EXIT_USAGE, overlap, "overlaps", part1, "the source being backed up")
    assert f"[{o1 + n1 - MiB}, {o1 + n1})" in line
    assert _range_sha(disk, o1, n1) == before
    # Partition 2's range is other storage: two-phase backup through it works.
    part2 = losetup(disk, "-o", str(o2), "--sizelimit", str(n2))
    r = backup(part1, str(tmp_path / "a.vpk"), "--staging", part2, "--force")
    assert r.returncode == 0, r.stderr
    assert _range_sha(disk, o1, n1) == before


@pytest.mark.root
def test_partition_device_and_its_whole_disk_clash(tmp_path, losetup):
    disk = tmp_path / "disk.img"
    (o1, n1), _ = _disk_with_two_partitions(disk)
    whole = losetup(disk, "-P")
    part = whole + "p1"
    for _ in range(50):  # the kernel adds partition nodes asynchronously
        if os.path.exists(part):
            break
        time.sleep(0.02)
    else:
        pytest.skip(
            f"{part} did not appear: this kernel or container does not scan loop partitions"
        )
    before = _range_sha(disk, o1, n1)
    r = backup(part, str(tmp_path / "a.vpk"), "--staging", whole, "--force")
    one_error_line(r, EXIT_USAGE, whole, "overlaps", "the source being backed up")
    r = backup(whole, str(tmp_path / "a.vpk"), "--staging", part, "--force")
    one_error_line(r, EXIT_USAGE, part, "overlaps", "the source being backed up")
    assert _range_sha(disk, o1, n1) == before


# -- a staging area that is full: the same exit code up front and mid-copy -------------------------


@pytest.fixture
def small_fs(tmp_path, losetup):
    """A 64 MiB ext4 (no reserved blocks) loop-mounted at tmp_path/small; yields (mountpoint,
    device)."""
    image = tmp_path / "small.ext4"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {r.stderr.decode().strip()}")
    dev = losetup(image)
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", dev, str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a small ext4 failed: {r.stderr.strip()}")
    yield mnt, dev
    subprocess.run(["umount", str(mnt)], capture_output=True)


def _fill(path: Path, leave: int = 0) -> None:
    """Write a file until the filesystem has at most ``leave`` bytes free."""
    with open(path, "wb") as f:
        for chunk in (MiB, 4096):
            data = bytes(chunk)
            while True:
                vfs = os.statvfs(path)
                if vfs.f_bavail * vfs.f_frsize - chunk < leave:
                    break
                try:
                    f.write(data)
                    f.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        if leave == 0:
            try:
                while True:  # whatever statvfs left unreported
                    f.write(bytes(4096))
                    f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        os.fsync(f.fileno())


def _scattered_volume(path: Path, used: int) -> None:
    """``used`` bytes of random data in 4 KiB pieces with holes between: many small copies."""
    blob = os.urandom(used)
    pieces = [(2 * i, blob[i : i + 4096]) for i in range(0, used, 4096)]
    write_sparse(str(path), 2 * used, pieces)


@pytest.mark.root
@pytest.mark.parametrize("detect", ["holes", "zeros"])
def test_staging_full_up_front_and_mid_copy_give_the_same_exit_code(tmp_path, small_fs, detect):
    # zeros: the scan fills staging as it reads (one pass), so "mid-copy" is mid-scan.
    mnt, _ = small_fs
    vol = tmp_path / "v.img"
    _scattered_volume(vol, 40 * MiB)
    before = sha(vol)
    stage = mnt / "stage"
    out = tmp_path / "a.vpk"
    args = ("backup", str(vol), str(out), "--staging", str(stage), "--no-catalog", "--detect")

    _fill(mnt / "filler", leave=8 * MiB)
    up_front = vp(*args, detect)
    one_error_line(up_front, EXIT_USAGE, "stage", "free", "dense volume needs")
    (mnt / "filler").unlink()

    # Mid-copy: pause volpack once the space check passed and the (unnamed) staging file has
    # started to take space, take the rest of the space, and let it go on.
    def free() -> int:
        st = os.statvfs(mnt)
        return st.f_bavail * st.f_frsize

    free_before = free()
    proc = subprocess.Popen(
        ["python3", "-m", "volpack", *args, detect],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while free() > free_before - MiB and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGSTOP)
        copied = free_before - free()
        if proc.poll() is not None or copied >= 40 * MiB:
            os.kill(proc.pid, signal.SIGCONT)
            proc.communicate()  # reaps it and closes its pipes
            pytest.skip(f"could not pause the staging copy in time (copied {copied})")
        _fill(mnt / "filler")
        os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.communicate()
    mid = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    one_error_line(mid, up_front.returncode, "stage", "no space left", "larger staging")
    assert sha(vol) == before
    assert not out.exists() and not stage.exists()


@pytest.mark.root
def test_staging_too_small_for_one_pass_scans_first_and_stages_the_exact_dense_volume(
    tmp_path, small_fs
):
    # 24 MiB allocated, 12 of them zeros: 16 MiB free is too little to stage whatever the scan
    # reads, enough for the 12 MiB it keeps. volpack scans first, then stages (two reads).
    mnt, _ = small_fs
    vol = tmp_path / "v.img"
    data = os.urandom(12 * MiB)
    write_sparse(
        str(vol),
        64 * MiB,
        [(0, data[: 6 * MiB]), (8 * MiB, bytes(12 * MiB)), (40 * MiB, data[6 * MiB :])],
    )
    _fill(mnt / "filler", leave=16 * MiB)
    stage = mnt / "stage"
    out = tmp_path / "a.vpk"
    r = vp("backup", str(vol), str(out), "--staging", str(stage), "--no-catalog")
    assert r.returncode == 0, r.stderr
    assert not stage.exists()
    r = vp("restore", str(out), str(tmp_path / "out.img"))
    assert r.returncode == 0, r.stderr
    assert sha(tmp_path / "out.img") == sha(vol)


@pytest.mark.root
def test_staging_on_a_mounted_device_is_one_line(tmp_path, vol, small_fs):
    _, dev = small_fs
    r = backup(str(vol), str(tmp_path / "a.vpk"), "--staging", dev, "--force")
    one_error_line(r, EXIT_USAGE, dev, "in use", "choose a staging")
    assert not (tmp_path / "a.vpk").exists()


@pytest.mark.root
def test_archive_path_on_an_unrelated_block_device_is_refused_and_the_node_kept(
    tmp_path, vol, losetup
):
    other = tmp_path / "other.img"
    other.write_bytes(b"\x5a" * MiB)
    dev = losetup(other)
    before = os.stat(dev)
    r = backup(str(vol), dev, "--force")
    one_error_line(r, 7, dev, "block device", "file path")
    after = os.stat(dev)
    assert stat.S_ISBLK(after.st_mode) and after.st_rdev == before.st_rdev
    assert other.read_bytes() == b"\x5a" * MiB
