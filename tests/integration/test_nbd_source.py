"""Backing up live NBD exports: qemu-nbd (raw, qcow2) and nbdkit, with nbdcopy and nbdinfo as
the oracles for the bytes and the used map, and injected failures ending in exit 3, no archive."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.integration.nbd_servers import nbdkit, need, qemu_nbd, url

from volpack.errors import SourceError
from volpack.source import open_source

MiB = 1 << 20


def volpack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], cwd=cwd, capture_output=True, text=True
    )


def sparse_image(path: Path, size: int = 64 * MiB) -> Path:
    """A sparse raw image: random runs at known places, the rest holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for at, n in ((5 * MiB, 3 * MiB), (40 * MiB + 4096, 65536), (size - 8192, 8192)):
            f.seek(at)
            f.write(os.urandom(n))
    return path


def nbdcopy_to_file(src_url: str, out: Path) -> None:
    need("nbdcopy")
    subprocess.run(["nbdcopy", src_url, str(out)], check=True)


def backup_restore(tmp_path: Path, src_url: str) -> Path:
    r = volpack("backup", src_url, "a.vpk", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = volpack("restore", "a.vpk", "out.raw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path / "out.raw"


def nbdinfo_data(src_url: str) -> list[tuple[int, int]]:
    """nbdinfo --map's runs that are not both hole and zero, merged."""
    need("nbdinfo")
    out = subprocess.run(
        ["nbdinfo", "--map", "--json", src_url], check=True, capture_output=True, text=True
    ).stdout
    runs: list[tuple[int, int]] = []
    for e in json.loads(out):
        if e["type"] & 3 == 3:
            continue
        if runs and runs[-1][1] == e["offset"]:
            runs[-1] = (runs[-1][0], e["offset"] + e["length"])
        else:
            runs.append((e["offset"], e["offset"] + e["length"]))
    return runs


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_backup_of_a_qemu_nbd_export_restores_the_bytes_nbdcopy_reads(tmp_path, fmt):
    raw = sparse_image(tmp_path / "img.raw")
    image = raw
    if fmt == "qcow2":
        need("qemu-img")
        image = tmp_path / "img.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, image], check=True)
    sock = tmp_path / "s.sock"
    with qemu_nbd(image, sock, fmt):
        nbdcopy_to_file(url(sock), tmp_path / "copy.raw")
        out = backup_restore(tmp_path, url(sock))
        r = volpack("verify", "a.vpk", "--against", url(sock), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert filecmp.cmp(out, tmp_path / "copy.raw", shallow=False)
    assert filecmp.cmp(out, raw, shallow=False)


def test_used_map_of_an_export_is_what_nbdinfo_maps_as_not_hole_and_zero(tmp_path):
    image = sparse_image(tmp_path / "img.raw")
    sock = tmp_path / "s.sock"
    with qemu_nbd(image, sock, "raw"):
        src = open_source(url(sock))
        try:
            ext = src.data_extents()
            assert list(zip(ext.starts.tolist(), ext.ends.tolist(), strict=True)) == (
                nbdinfo_data(url(sock))
            )
            assert src.info.kind == "nbd"
            assert src.info.details["server_size"] == 64 * MiB
            assert src.info.details["meta_contexts"] == ["base:allocation"]
            assert src.identity() == (64 * MiB,)
            pmap = src.physical_map()
            assert pmap.devices == (url(sock),)
            assert (pmap.offsets == pmap.starts).all()
        finally:
            src.close()
        r = volpack("map", url(sock), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "used 3.1 MiB" in r.stdout


def test_backup_of_nbdkit_sparse_random_equals_nbdcopy(tmp_path):
    sock = tmp_path / "s.sock"
    with nbdkit(sock, "sparse-random", "size=96M", "seed=7", "percent=5"):
        nbdcopy_to_file(url(sock), tmp_path / "copy.raw")
        out = backup_restore(tmp_path, url(sock))
    assert filecmp.cmp(out, tmp_path / "copy.raw", shallow=False)


def test_backup_of_an_nbdkit_memory_export_written_by_nbdcopy_restores_it(tmp_path):
    image = sparse_image(tmp_path / "img.raw")
    sock = tmp_path / "s.sock"
    with nbdkit(sock, "memory", "64M"):
        subprocess.run(["nbdcopy", str(image), url(sock)], check=True)
        out = backup_restore(tmp_path, url(sock))
    assert filecmp.cmp(out, image, shallow=False)


def test_a_hole_the_server_does_not_call_zero_is_read_as_data_never_skipped(tmp_path):
    image = sparse_image(tmp_path / "img.raw")
    extents = tmp_path / "extents"
    # The server claims the whole export is a hole but not zero: its contents are undefined.
    extents.write_text(f"0 {64 * MiB} hole\n")
    sock = tmp_path / "s.sock"
    with nbdkit(sock, "--filter=extentlist", "file", str(image), f"extentlist={extents}"):
        src = open_source(url(sock))
        try:
            assert src.data_extents().total() == 64 * MiB
        finally:
            src.close()
        out = backup_restore(tmp_path, url(sock))
    assert filecmp.cmp(out, image, shallow=False)


def test_without_structured_replies_every_byte_is_data_and_simple_reads_work(tmp_path):
    image = sparse_image(tmp_path / "img.raw")
    sock = tmp_path / "s.sock"
    with nbdkit(sock, "--no-sr", "file", str(image)):
        src = open_source(url(sock))
        try:
            assert src.info.details["structured_replies"] is False
            assert src.data_extents().total() == 64 * MiB
        finally:
            src.close()
        out = backup_restore(tmp_path, url(sock))
    assert filecmp.cmp(out, image, shallow=False)


def test_reads_are_split_by_the_servers_maximum_block_size(tmp_path):
    image = sparse_image(tmp_path / "img.raw")
    sock = tmp_path / "s.sock"
    policy = ["blocksize-maximum=64K", "blocksize-error-policy=error"]
    with nbdkit(sock, "--filter=blocksize-policy", "file", str(image), *policy):
        src = open_source(url(sock))
        try:
            assert src.info.details["block_size_max"] == 65536
        finally:
            src.close()
        out = backup_restore(tmp_path, url(sock))
    assert filecmp.cmp(out, image, shallow=False)


def test_an_unreachable_server_is_one_line_and_exit_3(tmp_path):
    r = volpack("backup", url(tmp_path / "none.sock"), "a.vpk", cwd=tmp_path)
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "cannot connect to the NBD server" in r.stderr
    assert not (tmp_path / "a.vpk").exists()
    r = volpack("backup", "nbd://127.0.0.1:1/x", "a.vpk", cwd=tmp_path)
    assert r.returncode == 3 and "cannot connect" in r.stderr


def test_an_export_the_server_does_not_have_is_named_in_one_line(tmp_path):
    image = sparse_image(tmp_path / "img.raw", 4 * MiB)
    sock = tmp_path / "s.sock"
    with qemu_nbd(image, sock, "raw", export="disk0"):
        r = volpack("backup", url(sock, "disk9"), "a.vpk", cwd=tmp_path)
        assert r.returncode == 3, r.stderr
        assert "no export named 'disk9'" in r.stderr and r.stderr.count("\n") == 1
        out = backup_restore(tmp_path, url(sock, "disk0"))
    assert filecmp.cmp(out, image, shallow=False)


def test_read_errors_from_the_server_fail_the_backup_with_exit_3_and_no_archive(tmp_path):
    image = sparse_image(tmp_path / "img.raw")
    sock = tmp_path / "s.sock"
    with nbdkit(sock, "--filter=error", "file", str(image), "error-pread-rate=100%"):
        r = volpack("backup", url(sock), "a.vpk", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "the server failed a read" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "a.vpk").exists()
    assert not [p for p in tmp_path.iterdir() if "vpk" in p.name]


def test_a_server_killed_mid_backup_gives_exit_3_and_no_archive(tmp_path):
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(96 * MiB))  # at 400 ms a request, far longer than 1.5 s
    sock = tmp_path / "s.sock"
    with nbdkit(sock, "--filter=delay", "file", str(image), "rdelay=400ms") as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "volpack", "backup", url(sock), "a.vpk", "--detect", "all-used"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        assert proc.poll() is None, "the backup ended before the server was killed"
        os.kill(srv.pid, 9)
        srv.wait()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "closed the connection" in err or "connection failed" in err, err
    assert not [p for p in tmp_path.iterdir() if "vpk" in p.name]


def test_a_closed_source_sends_disconnect_and_the_server_sees_a_clean_close(tmp_path):
    image = sparse_image(tmp_path / "img.raw", 4 * MiB)
    sock = tmp_path / "s.sock"
    # qemu-nbd without -t exits after its one client disconnects.
    need("qemu-nbd")
    proc = subprocess.Popen(["qemu-nbd", "-r", "-k", str(sock), "-f", "raw", str(image)])
    try:
        while not sock.exists():
            time.sleep(0.02)
        src = open_source(url(sock))
        src.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait()


def test_a_bad_nbd_url_is_a_usage_error(tmp_path):
    with pytest.raises(SourceError):
        open_source(url(tmp_path / "missing.sock"))
    r = volpack("backup", "nbd+unix:///x", "a.vpk", cwd=tmp_path)
    assert r.returncode == 2 and "nbd+unix URL names a socket" in r.stderr
