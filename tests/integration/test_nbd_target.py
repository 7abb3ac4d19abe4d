"""Restoring into NBD exports: writable qemu-nbd of raw and qcow2 images and nbdkit, with
qemu-img compare as the oracle, and the device contract (--force, size checks, zeroing, flush)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.nbd_servers import nbdkit, need, qemu_nbd, url

MiB = 1 << 20


def volpack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A 64 MiB sparse raw volume (data runs, holes between them, data at the end) backed up."""
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        for at, n in ((1 * MiB, 3 * MiB), (40 * MiB + 4096, 65536), (64 * MiB - 8192, 8192)):
            f.seek(at)
            f.write(os.urandom(n))
    r = volpack("backup", str(src), "a.vpk", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path / "a.vpk"


def garbage(path: Path, size: int = 64 * MiB) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def same(a: Path, b: Path, fmt_b: str = "raw") -> bool:
    need("qemu-img")
    r = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", fmt_b, str(a), str(b)],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_restore_into_a_writable_qemu_nbd_export_equals_the_source(tmp_path, archive, fmt):
    target = garbage(tmp_path / "t.raw")
    if fmt == "qcow2":
        need("qemu-img")
        subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", str(target), str(tmp_path / "t.qcow2")],
            check=True,
        )
        target = tmp_path / "t.qcow2"
    sock = tmp_path / "w.sock"
    with qemu_nbd(target, sock, fmt, writable=True):
        r = volpack("restore", str(archive), url(sock), "--force", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert same(tmp_path / "src.raw", target, fmt)


def test_restore_into_an_export_without_force_is_refused_and_writes_nothing(tmp_path, archive):
    target = garbage(tmp_path / "t.raw")
    before = target.read_bytes()
    sock = tmp_path / "w.sock"
    with qemu_nbd(target, sock, "raw", writable=True):
        r = volpack("restore", str(archive), url(sock), cwd=tmp_path)
    assert r.returncode == 8
    assert "add --force" in r.stderr and r.stderr.count("\n") == 1
    assert target.read_bytes() == before


def test_a_read_only_export_is_refused_before_any_write(tmp_path, archive):
    target = garbage(tmp_path / "t.raw")
    sock = tmp_path / "w.sock"
    with qemu_nbd(target, sock, "raw"):
        r = volpack("restore", str(archive), url(sock), "--force", cwd=tmp_path)
    assert r.returncode == 8 and "read-only" in r.stderr, r.stderr


def test_a_smaller_export_is_refused_unless_allowed_and_holding_every_used_byte(tmp_path, archive):
    sock = tmp_path / "w.sock"
    with nbdkit(sock, "memory", "32M"):
        r = volpack("restore", str(archive), url(sock), "--force", cwd=tmp_path)
        assert r.returncode == 8 and "--allow-smaller" in r.stderr, r.stderr
        r = volpack("restore", str(archive), url(sock), "--force", "--allow-smaller", cwd=tmp_path)
        assert r.returncode == 8 and "highest used byte" in r.stderr, r.stderr
    # A volume whose used bytes all lie in the first 32 MiB fits with --allow-smaller.
    small = tmp_path / "small.raw"
    with open(small, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(MiB)
        f.write(os.urandom(MiB))
    assert volpack("backup", str(small), "s.vpk", cwd=tmp_path).returncode == 0
    with nbdkit(sock, "memory", "32M"):
        r = volpack("restore", "s.vpk", url(sock), "--force", "--allow-smaller", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        subprocess.run(["nbdcopy", url(sock), str(tmp_path / "back.raw")], check=True)
    assert (tmp_path / "back.raw").read_bytes() == small.read_bytes()[: 32 * MiB]


@pytest.mark.parametrize(
    "filters",
    [
        [],  # WRITE_ZEROES
        ["--filter=nozero"],  # no WRITE_ZEROES offered: zeros are written
        ["--filter=blocksize-policy"],  # writes split by a 64 KiB maximum
    ],
    ids=["write-zeroes", "no-write-zeroes", "max-64k"],
)
def test_unused_ranges_of_a_dirty_export_read_as_zeros_after_the_restore(
    tmp_path, archive, filters
):
    target = garbage(tmp_path / "t.raw")
    params = (
        ["blocksize-maximum=64K", "blocksize-error-policy=error"]
        if "--filter=blocksize-policy" in filters
        else []
    )
    sock = tmp_path / "w.sock"
    with nbdkit(sock, *filters, "file", str(target), *params):
        r = volpack("restore", str(archive), url(sock), "--force", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert same(tmp_path / "src.raw", target)


def test_assume_zeroed_skips_zeroing_and_a_fresh_export_still_equals_the_source(tmp_path, archive):
    sock = tmp_path / "w.sock"
    with nbdkit(sock, "memory", "64M"):
        r = volpack("restore", str(archive), url(sock), "--force", "--assume-zeroed", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        subprocess.run(["nbdcopy", url(sock), str(tmp_path / "back.raw")], check=True)
    assert same(tmp_path / "src.raw", tmp_path / "back.raw")


def test_write_errors_from_the_server_fail_the_restore_with_exit_8(tmp_path, archive):
    target = garbage(tmp_path / "t.raw", 64 * MiB)
    sock = tmp_path / "w.sock"
    with nbdkit(sock, "--filter=error", "file", str(target), "error-pwrite-rate=100%"):
        r = volpack("restore", str(archive), url(sock), "--force", cwd=tmp_path)
    assert r.returncode == 8, r.stderr
    assert "the server failed a write" in r.stderr and r.stderr.count("\n") == 1


def test_a_failed_zeroing_sent_without_waiting_still_fails_the_restore_with_exit_8(
    tmp_path, archive
):
    target = garbage(tmp_path / "t.raw", 64 * MiB)
    sock = tmp_path / "w.sock"
    with nbdkit(sock, "--filter=error", "file", str(target), "error-zero-rate=100%"):
        r = volpack("restore", str(archive), url(sock), "--force", cwd=tmp_path)
    assert r.returncode == 8, r.stderr
    assert "the server failed zeroing" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_restore_to_an_unreachable_export_is_exit_8(tmp_path, archive):
    r = volpack("restore", str(archive), url(tmp_path / "none.sock"), "--force", cwd=tmp_path)
    assert r.returncode == 8 and "cannot connect" in r.stderr


def test_a_unix_socket_client_holds_a_whole_write_piece_in_its_send_buffer(tmp_path):
    """A restore hands the server 2 MiB writes: with the default ~208 KiB send buffer the two
    sides woke each other every 208 KiB (the kernel caps the request at net.core.wmem_max)."""
    from volpack.errors import TargetError
    from volpack.source.nbd_client import PIECE, NbdClient

    with open("/proc/sys/net/core/wmem_max") as f:
        cap = int(f.read())
    sock = tmp_path / "w.sock"
    with nbdkit(sock, "memory", "8M"):
        client = NbdClient(url(sock), TargetError, write=True)
        try:
            got = client._conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        finally:
            client.close()
    # Linux reports twice the size asked for (bookkeeping included).
    assert got >= 2 * min(cap, 2 * PIECE), got
