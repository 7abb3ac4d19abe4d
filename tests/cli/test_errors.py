"""Bad input gets one clear line on stderr and its documented exit code; never a traceback, and
the target is never touched."""

import os
import pathlib
import subprocess

import pytest

import volpack
from cli_helpers import one_error_line
from volumes import write_sparse


def vp(*args: str, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", "-m", "volpack", *args], capture_output=True, text=True, stdin=stdin
    )


@pytest.fixture
def archive(tmp_path):
    vol = str(tmp_path / "v.img")
    write_sparse(vol, 3 << 20, [(8192, os.urandom(300_000)), (2 << 20, b"x" * 5000)])
    arc = str(tmp_path / "v.vpk")
    volpack.backup(vol, arc, frame_size=65536, allow_mounted=True)
    return vol, arc


def test_missing_source(tmp_path):
    one_error_line(
        vp("backup", str(tmp_path / "nope.img"), str(tmp_path / "a.vpk")),
        3,
        "nope.img",
        "no such file",
    )
    assert not any(tmp_path.iterdir())


def test_source_is_a_directory(tmp_path):
    one_error_line(vp("backup", str(tmp_path), str(tmp_path / "a.vpk")), 3, "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_source(tmp_path):
    p = tmp_path / "secret.img"
    p.write_bytes(b"x" * 4096)
    p.chmod(0)
    one_error_line(vp("backup", str(p), str(tmp_path / "a.vpk")), 3, "secret.img")


def test_existing_archive_is_not_replaced_without_force(archive, tmp_path):
    vol, arc = archive
    before = pathlib.Path(arc).read_bytes()
    one_error_line(vp("backup", vol, arc, "--no-catalog"), 7, "already exists", "--force")
    assert pathlib.Path(arc).read_bytes() == before


def test_not_a_volpack_archive(tmp_path):
    p = tmp_path / "x.vpk"
    p.write_bytes(b"hello world" * 1000)
    one_error_line(vp("restore", str(p), str(tmp_path / "out")), 4, "not a volpack archive")
    one_error_line(vp("verify", str(p)), 4, "not a volpack archive")
    one_error_line(vp("info", str(p)), 4, "not a volpack archive")
    assert not (tmp_path / "out").exists()


def test_truncated_archive_is_incomplete_and_restores_nothing(archive, tmp_path):
    _, arc = archive
    cut = tmp_path / "cut.vpk"
    cut.write_bytes(pathlib.Path(arc).read_bytes()[:-100])
    out = tmp_path / "out.img"
    one_error_line(vp("restore", str(cut), str(out)), 5, "incomplete archive")
    one_error_line(vp("verify", str(cut)), 5, "incomplete archive")
    with open(cut, "rb") as f:
        one_error_line(vp("restore", "-", str(out), stdin=f), 5, "incomplete archive")
    assert not out.exists()


def test_corrupt_frame_stops_restore_and_keeps_the_existing_target(archive, tmp_path):
    _, arc = archive
    data = bytearray(pathlib.Path(arc).read_bytes())
    data[len(data) // 2] ^= 1
    bad = tmp_path / "bad.vpk"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.img"
    out.write_bytes(b"precious")
    one_error_line(vp("restore", str(bad), str(out), "--force"), 4, "bad.vpk")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vpk", "out.img", "v.img", "v.vpk"]


def test_existing_target_needs_force(archive, tmp_path):
    _, arc = archive
    out = tmp_path / "out.img"
    out.write_bytes(b"keep")
    one_error_line(vp("restore", arc, str(out)), 8, "already exists", "--force")
    assert out.read_bytes() == b"keep"


def test_target_is_the_archive_itself(archive):
    _, arc = archive
    before = pathlib.Path(arc).read_bytes()
    one_error_line(vp("restore", arc, arc, "--force"), 8, "is the archive being restored")
    assert pathlib.Path(arc).read_bytes() == before


def test_unknown_option_values_are_usage_errors(archive, tmp_path):
    vol, _ = archive
    one_error_line(
        vp("backup", vol, str(tmp_path / "a.vpk"), "--block-size", "3000"), 2, "power of two"
    )
    one_error_line(
        vp("backup", vol, str(tmp_path / "b.vpk"), "--compress", "lz4"), 2, "unknown codec"
    )
    one_error_line(vp("backup", vol, "nosuch://x"), 2, "unknown medium scheme")


def test_disk_full_while_writing_the_archive(archive):
    vol, _ = archive
    one_error_line(vp("backup", vol, "/dev/full", "--no-catalog"), 7, "no space left")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_removes_the_partial_archive_and_the_partial_restore(archive, tmp_path):
    vol, arc = archive
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    try:
        one_error_line(
            vp("backup", vol, str(small / "a.vpk"), "--compress", "none", "--no-catalog"),
            7,
            "no space left",
        )
        assert os.listdir(small) == []
        one_error_line(vp("restore", arc, str(small / "out.img")), 8, "free")
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)])


def test_source_changed_during_the_backup_fails_and_leaves_no_archive(tmp_path):
    vol = tmp_path / "v.img"
    write_sparse(str(vol), 8 << 20, [(0, os.urandom(6 << 20))])
    arc = tmp_path / "v.vpk"
    touched = []

    def progress(phase, done, total):
        if phase == "write" and not touched:
            with open(vol, "r+b") as f:
                f.seek(4096)
                f.write(b"changed")
            touched.append(True)

    from volpack.errors import SourceError

    with pytest.raises(SourceError, match="changed during the backup"):
        volpack.backup(str(vol), str(arc), frame_size=65536, progress=progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.img"]


def test_staging_device_smaller_than_the_dense_volume_is_refused_before_copying(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    vol = tmp_path / "v.img"
    write_sparse(str(vol), 8 << 20, [(0, os.urandom(4 << 20))])
    small = tmp_path / "stage-backing.img"
    small.write_bytes(b"\x5a" * (1 << 20))
    r = subprocess.run(["losetup", "-f", "--show", str(small)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"loop devices unavailable: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        one_error_line(
            vp(
                "backup",
                str(vol),
                str(tmp_path / "a.vpk"),
                "--staging",
                dev,
                "--force",
                "--no-catalog",
            ),
            2,
            "use a larger device",
        )
        assert small.read_bytes() == b"\x5a" * (1 << 20)
        assert not (tmp_path / "a.vpk").exists()
    finally:
        subprocess.run(["losetup", "-d", dev])


def test_staging_file_needs_more_space_than_is_free(tmp_path):
    vol = tmp_path / "v.img"
    # A sparse volume claiming more used data than any test disk has free.
    write_sparse(str(vol), 1 << 43, [(0, b"x"), ((1 << 43) - 1, b"y")])
    one_error_line(
        vp(
            "backup",
            str(vol),
            str(tmp_path / "a.vpk"),
            "--staging",
            str(tmp_path / "stage.img"),
            "--detect",
            "all-used",
            "--no-catalog",
        ),
        2,
        "free",
        "dense volume needs",
    )
    assert not (tmp_path / "stage.img").exists()


def test_hash_block_outside_the_format_or_unlike_the_base_is_refused_and_writes_nothing(
    archive, tmp_path
):
    vol, arc = archive
    out = tmp_path / "i.vpk"
    for bad in ("3M", "32K", "128M"):
        r = vp("backup", vol, str(out), "--hash-block", bad)
        one_error_line(r, 2, "--hash-block", "power of two from 65536 to 67108864")
        assert not out.exists()
    # the full chose 64 KiB (little is used); an incremental keeps it or refuses another
    r = vp("backup", vol, str(out), "--base", arc, "--hash-block", "1M", "--no-catalog")
    one_error_line(r, 2, "--hash-block 1048576", "hash blocks of 65536 B", "leave out --hash-block")
    assert not out.exists()
    r = vp("backup", vol, str(out), "--base", arc, "--hash-block", "64K", "--no-catalog")
    assert r.returncode == 0, r.stderr
    info = vp("info", str(out))
    assert "hash blocks  64.0 KiB each" in info.stdout, info.stdout
