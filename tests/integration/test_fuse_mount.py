"""The read-only FUSE mount (libfuse3 via mfusepy): exact bytes, read-only, clean unmount on
SIGINT/SIGTERM, and a filesystem loop-mounted from inside the FUSE file (root only).

The mount runs in a child process, as in real use, so libfuse's signal handling is the real one.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing (no FUSE in this machine)"
)

# Serves a sparse file through volpack.serve.fuse.mount; the used map is the file's data runs.
_CHILD = textwrap.dedent(
    """
    import os, sys
    from volpack.extents import Extents
    from volpack.serve.fuse import mount

    class FileVolume:
        def __init__(self, path):
            self.fd = os.open(path, os.O_RDONLY)
            self.size = os.fstat(self.fd).st_size
        def read(self, offset, length):
            return os.pread(self.fd, length, offset)
        def used_bytes(self):
            return Extents.span(0, self.size)

    mount(FileVolume(sys.argv[1]), sys.argv[2], file_name=sys.argv[3])
    """
)


def _need_mfusepy() -> None:
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"mfusepy/libfuse3 not usable: {exc}")


def wait_mounted(mnt: Path, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        if proc.poll() is not None:
            raise AssertionError(f"mount exited with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{mnt} did not get mounted within {timeout} s")


def unmount_quietly(mnt: Path) -> None:
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


class Mounted:
    def __init__(self, proc: subprocess.Popen, mnt: Path, source: Path, name: str) -> None:
        self.proc = proc
        self.mnt = mnt
        self.source = source
        self.file = mnt / name


def mount_file(source: Path, mnt: Path, name: str = "volume.img") -> Mounted:
    _need_mfusepy()
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(source), str(mnt), name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_mounted(mnt, proc)
    except BaseException:
        proc.kill()
        proc.communicate()  # reaps it and closes its pipes
        unmount_quietly(mnt)
        raise
    return Mounted(proc, mnt, source, name)


def stop(m: Mounted, sig: int = signal.SIGTERM) -> int:
    m.proc.send_signal(sig)
    try:
        m.proc.communicate(timeout=20)  # reaps it and closes its pipes
        return m.proc.returncode
    finally:
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.communicate()
        unmount_quietly(m.mnt)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    source = tmp_path / "src.img"
    rnd = random.Random(3)
    with open(source, "wb") as f:
        f.truncate(9 * MiB + 777)
        for at in (0, 4 * MiB + 5, 9 * MiB):
            f.seek(at)
            f.write(rnd.randbytes(300_000 if at < 9 * MiB else 777))
    m = mount_file(source, tmp_path / "mnt")
    yield m
    if m.proc.poll() is None:
        stop(m)


def test_the_mounted_file_equals_the_source(mounted):
    assert os.listdir(mounted.mnt) == ["volume.img"]
    assert mounted.file.stat().st_size == mounted.source.stat().st_size
    subprocess.run(["cmp", str(mounted.source), str(mounted.file)], check=True)


def test_the_mount_is_read_only(mounted):
    with pytest.raises(OSError), open(mounted.file, "r+b"):
        pass
    with pytest.raises(OSError):
        (mounted.mnt / "new").write_bytes(b"x")


def test_random_reads_of_the_mounted_file_match_the_source(mounted):
    rnd = random.Random(5)
    size = mounted.source.stat().st_size
    with open(mounted.source, "rb") as a, open(mounted.file, "rb") as b:
        for _ in range(300):
            offset = rnd.randrange(0, size)
            length = rnd.choice([1, 4096, 100_000])
            a.seek(offset)
            b.seek(offset)
            assert a.read(length) == b.read(length)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_unmounts_cleanly_and_exits_zero(mounted, sig):
    assert stop(mounted, sig) == 0
    assert not os.path.ismount(mounted.mnt)


def _root_with_loop() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        return "needs losetup and mkfs.ext4"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control missing)"
    return None


@pytest.mark.root
def test_an_ext4_image_inside_the_fuse_file_loop_mounts_and_reads_a_file(tmp_path):
    reason = _root_with_loop()
    if reason:
        pytest.skip(reason)
    content = tmp_path / "content"
    (content / "docs").mkdir(parents=True)
    payload = random.Random(9).randbytes(200_000)
    (content / "docs" / "report.bin").write_bytes(payload)
    image = tmp_path / "ext4.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(content), str(image), "32M"],
        check=True,
        capture_output=True,
    )
    m = mount_file(image, tmp_path / "mnt")
    fsmnt = tmp_path / "fs"
    fsmnt.mkdir()
    loop = ""
    try:
        out = subprocess.run(
            ["losetup", "-r", "-f", "--show", str(m.file)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            pytest.skip(f"losetup failed here: {out.stderr.strip()}")
        loop = out.stdout.strip()
        subprocess.run(["mount", "-o", "ro", loop, str(fsmnt)], check=True, capture_output=True)
        try:
            assert (fsmnt / "docs" / "report.bin").read_bytes() == payload
        finally:
            subprocess.run(["umount", str(fsmnt)], check=True)
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        stop(m)
