"""kill -9 never destroys the only good copy: a ``--force`` backup over an existing archive and a
``--force`` restore over an existing image are SIGKILLed mid-write (real ``python3 -m volpack``
processes); the archive and the image that were there are byte for byte what they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time

MiB = 1 << 20


def vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "volpack", *args], capture_output=True, text=True)


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def partials(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".partial")]


def wait_for_partial(proc: subprocess.Popen, directory) -> None:
    deadline = time.monotonic() + 60
    while not any(os.stat(os.path.join(directory, n)).st_size for n in partials(directory)):
        assert proc.poll() is None, "the run ended before it was caught mid-write"
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.005)


def random_image(path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))


def test_a_force_backup_killed_mid_write_leaves_the_old_archive_whole(tmp_path):
    image = tmp_path / "disk.img"
    random_image(image, 32)
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "disk.vpk"
    assert vp("backup", str(image), str(archive), "--no-catalog").returncode == 0
    before = sha(archive)

    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "backup", str(image), str(archive), "--force"]
        + ["--no-catalog", "--compress", "zstd:19", "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_partial(proc, out)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert sha(archive) == before
    assert vp("verify", str(archive), "--against", str(image)).returncode == 0


def test_a_force_restore_killed_mid_write_leaves_the_old_image_whole(tmp_path):
    image = tmp_path / "disk.img"
    random_image(image, 16)
    archive = tmp_path / "disk.vpk"
    assert (
        vp("backup", str(image), str(archive), "--no-catalog", "--compress", "none").returncode == 0
    )
    out = tmp_path / "out"
    out.mkdir()
    target = out / "old.img"
    random_image(target, 16)
    before = sha(target)

    # The archive arrives through a pipe that is fed only half of it, so the restore is caught
    # mid-write for certain, then killed.
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "restore", "-", str(target), "--force"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        data = archive.read_bytes()
        assert proc.stdin is not None
        proc.stdin.write(data[: len(data) // 2])
        proc.stdin.flush()
        wait_for_partial(proc, out)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdin:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
    assert sha(target) == before
    # The next restore to the same place removes the dead partial and replaces the image.
    r = vp("restore", str(archive), str(target), "--force")
    assert r.returncode == 0, r.stderr
    assert sha(target) == sha(image)
    assert partials(out) == []
