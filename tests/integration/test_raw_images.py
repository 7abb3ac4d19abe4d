"""Raw images end to end through the real CLI, judged by external oracles: cmp, qemu-img
compare and map, e2fsck."""

import json
import os
import random
import shutil
import subprocess

import pytest

from volumes import same_bytes

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")


def vp(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "volpack", *args], capture_output=True, text=True, **kw)


def run(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, shell=isinstance(cmd, str), **kw)
    assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory):
    """A 96 MiB ext4 made by mkfs.ext4 -d from random and text files, then files deleted and
    rewritten with debugfs so usage is scattered and deleted data stays behind."""
    d = tmp_path_factory.mktemp("ext4")
    tree = d / "tree"
    tree.mkdir()
    rng = random.Random(11)
    for i in range(40):
        (tree / f"rand{i}.bin").write_bytes(rng.randbytes(rng.randrange(1000, 900_000)))
        (tree / f"text{i}.txt").write_text("".join(f"{i} line {j}\n" for j in range(3000)))
    img = d / "disk.img"
    run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img), "96M"])
    extra = d / "extra.bin"
    extra.write_bytes(rng.randbytes(2_000_000))
    cmds = [f"rm rand{i}.bin" for i in range(0, 40, 3)] + [
        f"write {extra} new{i}.bin" for i in range(5)
    ]
    run(["debugfs", "-w", "-f", "-", str(img)], input="\n".join(cmds) + "\n")
    run(["e2fsck", "-fn", str(img)])
    return str(img)


def test_ext4_image_backup_and_restore_are_identical_by_cmp_qemu_img_and_e2fsck(
    ext4_image, tmp_path
):
    arc, out = str(tmp_path / "d.vpk"), str(tmp_path / "out.img")
    r = vp("backup", ext4_image, arc, "--json", "--no-catalog")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["archive_size"] < os.path.getsize(ext4_image) / 2
    r = vp("restore", arc, out)
    assert r.returncode == 0, r.stderr
    run(["cmp", ext4_image, out])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", ext4_image, out])
    run(["e2fsck", "-fn", out])
    assert os.stat(out).st_blocks * 512 < os.path.getsize(out), "restored thin"
    r = vp("verify", arc, "--against", out)
    assert r.returncode == 0, r.stderr


def test_pipe_backup_to_stdout_restores_from_stdin_in_one_pass(ext4_image, tmp_path):
    out = tmp_path / "piped.img"
    r = run(
        f"python3 -m volpack backup {ext4_image} - -q --no-catalog --compress none | "
        f"python3 -m volpack restore - {out}"
    )
    assert r.returncode == 0
    assert same_bytes(ext4_image, str(out))


def test_staging_mode_archive_restores_identically_and_removes_its_staging_file(
    ext4_image, tmp_path
):
    arc, out, stage = tmp_path / "s.vpk", tmp_path / "s.img", tmp_path / "stage.img"
    r = vp("backup", ext4_image, str(arc), "--staging", str(stage), "--no-catalog")
    assert r.returncode == 0, r.stderr
    assert "may be released now" in r.stderr
    assert not stage.exists()
    assert vp("restore", str(arc), str(out)).returncode == 0
    assert same_bytes(ext4_image, str(out))


def test_holes_map_agrees_with_qemu_img_map(tmp_path):
    img = tmp_path / "sparse.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
        for off in (0, 5 << 20, 20 << 20, (64 << 20) - 8192):
            f.seek(off)
            f.write(os.urandom(8192))
    r = vp("map", str(img), "--detect", "holes", "--json")
    assert r.returncode == 0, r.stderr
    ours = [
        (e["start"], e["start"] + e["length"]) for e in json.loads(r.stdout)["extents"] if e["data"]
    ]
    q = json.loads(run(["qemu-img", "map", "--output=json", "-f", "raw", str(img)]).stdout)
    theirs = [(e["start"], e["start"] + e["length"]) for e in q if e["data"]]
    merged: list[tuple[int, int]] = []
    for a, b in theirs:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    assert ours == merged


def test_verify_against_a_changed_volume_names_the_first_differing_range(ext4_image, tmp_path):
    arc = str(tmp_path / "d.vpk")
    assert vp("backup", ext4_image, arc, "--no-catalog").returncode == 0
    changed = tmp_path / "changed.img"
    shutil.copyfile(ext4_image, changed)
    with open(changed, "r+b") as f:
        f.seek(1024 + 120)  # the superblock's volume name: a used block (free space is not judged)
        f.write(b"\xff" * 10)
    r = vp("verify", arc, "--against", str(changed))
    assert r.returncode == 10, r.stderr
    assert "[1144, 1154)" in r.stderr


def loop_device(path: str) -> str:
    r = subprocess.run(["losetup", "-f", "--show", path], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"loop devices unavailable: {r.stderr.strip()}")
    return r.stdout.strip()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
def test_restore_to_a_loop_device_zeroes_unused_ranges_and_refuses_a_small_device(
    ext4_image, tmp_path
):
    arc = str(tmp_path / "d.vpk")
    assert vp("backup", ext4_image, arc, "--no-catalog").returncode == 0
    size = os.path.getsize(ext4_image)
    backing = tmp_path / "dev.img"
    backing.write_bytes(b"\xaa" * size)  # garbage that must be zeroed
    small = tmp_path / "small.img"
    small.write_bytes(b"\xbb" * (size // 2))
    dev = loop_device(str(backing))
    sdev = loop_device(str(small))
    try:
        r = vp("restore", arc, dev)
        assert r.returncode == 8 and "--force" in r.stderr
        r = vp("restore", arc, dev, "--force")
        assert r.returncode == 0, r.stderr
        run(["cmp", ext4_image, dev])
        r = vp("restore", arc, sdev, "--force")
        assert r.returncode == 8 and "use a larger device" in r.stderr
        assert small.read_bytes() == b"\xbb" * (size // 2), "refused target untouched"
    finally:
        subprocess.run(["losetup", "-d", dev, sdev])


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
def test_block_device_source_backs_up_through_a_pipe_and_restores_equal(ext4_image, tmp_path):
    dev = loop_device(ext4_image)
    try:
        out = tmp_path / "from-dev.img"
        run(
            f"python3 -m volpack backup {dev} - -q --no-catalog | "
            f"python3 -m volpack restore - {out}"
        )
        assert same_bytes(ext4_image, str(out))
        r = vp("map", dev, "--json", "--detect", "holes")
        assert json.loads(r.stdout)["source"]["kind"] == "blockdev"
    finally:
        subprocess.run(["losetup", "-d", dev])


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
def test_allow_smaller_accepts_a_device_holding_every_used_block_and_assume_zeroed_skips_zeroing(
    tmp_path,
):
    vol = tmp_path / "v.img"
    with open(vol, "wb") as f:
        f.truncate(16 << 20)
        f.write(os.urandom(1 << 20))
    arc = str(tmp_path / "v.vpk")
    assert vp("backup", str(vol), arc, "--no-catalog").returncode == 0
    backing = tmp_path / "dev.img"
    backing.write_bytes(b"\xcc" * (4 << 20))  # smaller than the volume, larger than its data
    dev = loop_device(str(backing))
    try:
        r = vp("restore", arc, dev, "--force")
        assert r.returncode == 8 and "--allow-smaller" in r.stderr
        r = vp("restore", arc, dev, "--force", "--allow-smaller", "--assume-zeroed")
        assert r.returncode == 0, r.stderr
        data = backing.read_bytes()
        assert data[: 1 << 20] == vol.read_bytes()[: 1 << 20]
        assert data[1 << 20 :] == b"\xcc" * (3 << 20), "--assume-zeroed left unused bytes alone"
        r = vp("restore", arc, dev, "--force", "--allow-smaller")
        assert r.returncode == 0, r.stderr
        assert backing.read_bytes()[1 << 20 :] == bytes(3 << 20), "unused range zeroed"
    finally:
        subprocess.run(["losetup", "-d", dev])
