"""The point-in-time view of a middle link: ``volpack serve`` of generation 1 read whole with the
real ``nbdcopy``, and ``volpack mount`` of it (FUSE) read through the kernel, both equal to that
generation's saved copy (and not to the newest)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from chainkit import sha


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)  # reaps it and closes its pipes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait(ready, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        assert proc.poll() is None, f"{what} exited: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.05)


def test_serve_of_a_middle_link_gives_that_generation_to_nbdcopy(chain, tmp_path):
    if shutil.which("nbdcopy") is None:
        pytest.skip("nbdcopy is not installed (scripts/test.sh installs it)")
    sock = tmp_path / "vp.sock"
    argv = [sys.executable, "-m", "volpack", "serve", "--socket", str(sock), "--name", "g1"]
    proc = subprocess.Popen(
        [*argv, str(chain.archive(1))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait(sock.exists, proc, "volpack serve")
        copy = tmp_path / "copy.img"
        r = subprocess.run(
            ["nbdcopy", f"nbd+unix:///g1?socket={sock}", str(copy)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
    finally:
        _stop(proc)
    assert sha(copy) == sha(chain.copies[1])
    assert sha(copy) != sha(chain.copies[2])


def test_mount_of_a_middle_link_reads_that_generation_through_fuse(chain, tmp_path):
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("/dev/fuse or fusermount3 is missing: FUSE cannot be used here")
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"mfusepy/libfuse3 not usable: {exc}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "mount", str(chain.archive(1)), str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: os.path.ismount(mnt), proc, "volpack mount")
        seen = sha(mnt / "volume.img")
    finally:
        _stop(proc)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert seen == sha(chain.copies[1])
