"""Permission bits and owners of what volpack creates: archives, raw and qcow2 restore targets,
the partial files they are written to, and the staging file. New files are 0600 unless --mode
says otherwise (the umask only takes bits away); a file replaced with --force keeps its mode and,
where permitted, its owner. Checked by stat on the real results of the real CLI.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from volpack.compact.staging import Staging
from volumes import write_sparse


def vp(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], capture_output=True, text=True, umask=umask
    )


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def volume(tmp_path):
    vol = str(tmp_path / "v.img")
    write_sparse(vol, 3 << 20, [(0, os.urandom(70_000)), (2 << 20, b"d" * 9000)])
    return vol


@pytest.fixture
def archive(tmp_path, volume):
    arc = str(tmp_path / "v.vpk")
    p = vp("backup", volume, arc, "--no-catalog")
    assert p.returncode == 0, p.stderr
    return arc


def test_a_new_archive_is_created_0600_even_under_a_permissive_umask(tmp_path, volume):
    arc = tmp_path / "new.vpk"
    p = vp("backup", volume, str(arc), "--no-catalog", umask=0)
    assert p.returncode == 0, p.stderr
    assert mode_of(arc) == 0o600


def test_backup_force_over_a_0640_archive_keeps_0640_and_its_owner(tmp_path, volume, archive):
    os.chmod(archive, 0o640)
    if os.geteuid() == 0:
        os.chown(archive, 4321, 4322)
    p = vp("backup", volume, archive, "--no-catalog", "--force")
    assert p.returncode == 0, p.stderr
    st = os.stat(archive)
    assert stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert vp("verify", archive).returncode == 0


def test_backup_mode_option_sets_the_archive_mode_also_over_an_existing_one(tmp_path, volume):
    arc = tmp_path / "m.vpk"
    p = vp("backup", volume, str(arc), "--no-catalog", "--mode", "0640")
    assert p.returncode == 0, p.stderr
    assert mode_of(arc) == 0o640
    p = vp("backup", volume, str(arc), "--no-catalog", "--force", "--mode", "600")
    assert p.returncode == 0, p.stderr
    assert mode_of(arc) == 0o600


def test_the_umask_can_only_take_bits_away_from_mode(tmp_path, volume):
    arc = tmp_path / "u.vpk"
    p = vp("backup", volume, str(arc), "--no-catalog", "--mode", "0664", umask=0o027)
    assert p.returncode == 0, p.stderr
    assert mode_of(arc) == 0o640


def test_restore_creates_a_new_file_0600(tmp_path, archive):
    out = tmp_path / "r.img"
    p = vp("restore", archive, str(out), umask=0)
    assert p.returncode == 0, p.stderr
    assert mode_of(out) == 0o600


def test_restore_force_over_an_existing_0644_image_keeps_0644_and_its_owner(tmp_path, archive):
    out = tmp_path / "r.img"
    out.write_bytes(b"old image")
    os.chmod(out, 0o644)
    if os.geteuid() == 0:
        os.chown(out, 4321, 4322)
    p = vp("restore", archive, str(out), "--force", umask=0o077)
    assert p.returncode == 0, p.stderr
    st = os.stat(out)
    assert stat.S_IMODE(st.st_mode) == 0o644
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert st.st_size == 3 << 20


def test_restore_mode_option_sets_the_target_mode(tmp_path, archive):
    out = tmp_path / "r.img"
    p = vp("restore", archive, str(out), "--mode", "0640")
    assert p.returncode == 0, p.stderr
    assert mode_of(out) == 0o640


def test_qcow2_target_is_created_0600_keeps_a_replaced_mode_and_honours_mode(tmp_path, archive):
    out = tmp_path / "r.qcow2"
    p = vp("restore", archive, str(out), "--target-format", "qcow2", umask=0)
    assert p.returncode == 0, p.stderr
    assert mode_of(out) == 0o600
    os.chmod(out, 0o640)
    p = vp("restore", archive, str(out), "--target-format", "qcow2", "--force")
    assert p.returncode == 0, p.stderr
    assert mode_of(out) == 0o640
    p = vp("restore", archive, str(out), "--target-format", "qcow2", "--force", "--mode", "0604")
    assert p.returncode == 0, p.stderr
    assert mode_of(out) == 0o604


def test_the_staging_file_is_0600_and_never_has_a_name(tmp_path):
    path = tmp_path / "stage.img"
    old = os.umask(0)
    try:
        stage = Staging(str(path), 1 << 20, force=False)
    finally:
        os.umask(old)
    try:
        st = os.fstat(stage.fd)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_nlink == 0  # nothing for a killed backup to leave behind
        assert not path.exists() and os.listdir(tmp_path) == []
    finally:
        stage.close()


@pytest.mark.parametrize("bad", ["0999", "rw-r-----", "1777", ""])
def test_a_bad_mode_is_one_line_and_exit_2(tmp_path, volume, bad):
    p = vp("backup", volume, str(tmp_path / "b.vpk"), "--no-catalog", "--mode", bad)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "--mode" in p.stderr and "0640" in p.stderr
    assert not (tmp_path / "b.vpk").exists()


def test_mode_is_refused_for_media_without_file_modes(tmp_path, volume):
    p = vp("backup", volume, "s3://bucket/key.vpk", "--no-catalog", "--mode", "0640")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "'s3:' media have none" in p.stderr


def test_mode_is_refused_for_a_block_device_target_which_keeps_its_own(tmp_path, archive):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "dev-backing.img"
    backing.write_bytes(b"\x5a" * (4 << 20))
    r = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"loop devices unavailable: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        before = os.stat(dev).st_mode
        p = vp("restore", archive, dev, "--force", "--mode", "0600")
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "block device" in p.stderr and "--mode" in p.stderr
        assert os.stat(dev).st_mode == before
        assert backing.read_bytes() == b"\x5a" * (4 << 20)
    finally:
        subprocess.run(["losetup", "-d", dev])


def test_mode_is_refused_with_layout_physical(tmp_path, archive):
    p = vp("restore", archive, str(tmp_path / "pv.img"), "--layout", "physical", "--mode", "0600")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--layout physical" in p.stderr
