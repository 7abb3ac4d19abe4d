"""Real archives (made with volpack.backup) served over NBD and FUSE, read by real clients.

nbdinfo's map must equal the archive's used map; nbdcopy, qemu-img and random libnbd reads must
give back the source; `volpack serve` and `volpack mount` run as processes and stop on SIGTERM;
a corrupted frame gives EIO for the reads that touch it and correct bytes everywhere else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from volpack.extents import Extents
from volpack.serve.export import Export
from volpack.serve.nbd_server import NbdServer

MiB = 1 << 20
SIZE = 24 * MiB  # sector-aligned, so qemu-img sees the same size
# Holes at the start, middle and end; one run that is not block-aligned at its end.
RUNS = [
    (1 * MiB, 3 * MiB),
    (5 * MiB, 5 * MiB + 4096),
    (8 * MiB, 14 * MiB + 1000),
    (20 * MiB, 22 * MiB),
]


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")


def nbd_module():
    if "/usr/lib/python3/dist-packages" not in sys.path:
        sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import nbd
    except ImportError as exc:
        pytest.skip(f"python3-libnbd is not importable here: {exc}")
    return nbd


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "disk.img"
    rnd = random.Random(21)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for start, end in RUNS:
            f.seek(start)
            # Half random, half repetitive text: both compressible and incompressible frames.
            half = (end - start) // 2
            f.write(rnd.randbytes(half))
            f.write(
                (b"volpack serve test line\n" * ((end - start) // 24 + 1))[: end - start - half]
            )
    return path


@pytest.fixture(scope="module", params=["zstd:1", "none"], ids=["zstd", "uncompressed"])
def archive(request, source, tmp_path_factory) -> Path:
    from volpack import backup

    out = tmp_path_factory.mktemp("arc") / f"disk-{request.param.split(':')[0]}.vpk"
    # allow_mounted: the source is a temporary image file, so the mount check has nothing to say.
    backup(str(source), str(out), compress=request.param, frame_size=256 * 1024, allow_mounted=True)
    return out


class Served:
    def __init__(self, archive_path: Path) -> None:
        from volpack import open_archive

        self.archive = open_archive(str(archive_path))
        self.server = NbdServer([Export.of("disk", self.archive)], port=0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.urls()[0]

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.close()
        self.archive.close()


@pytest.fixture
def served(archive) -> Iterator[Served]:
    s = Served(archive)
    yield s
    s.close()


def test_nbdinfo_map_equals_the_archives_used_map(served):
    need("nbdinfo")
    info = json.loads(run("nbdinfo", "--json", served.url).stdout)
    assert info["exports"][0]["export-size"] == SIZE
    entries = json.loads(run("nbdinfo", "--map", "--json", served.url).stdout)
    data = Extents.from_pairs(
        [(e["offset"], e["offset"] + e["length"]) for e in entries if e["type"] == 0]
    )
    assert data == served.archive.used_bytes()
    assert sum(e["length"] for e in entries) == SIZE
    # the used map covers every byte the source holds
    assert data.contains(Extents.from_pairs(RUNS))


def test_nbdcopy_of_an_archive_equals_the_source(served, source, tmp_path):
    need("nbdcopy")
    out = tmp_path / "copy.img"
    run("nbdcopy", served.url, str(out))
    run("cmp", str(source), str(out))


def test_qemu_img_convert_of_an_archive_equals_the_source(served, source, tmp_path):
    need("qemu-img")
    out = tmp_path / "copy.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", served.url, str(out))
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(source), str(out))


def random_reads(url: str, source: Path, count: int, seed: int) -> None:
    nbd = nbd_module()
    rnd = random.Random(seed)
    for structured in (True, False):
        h = nbd.NBD()
        h.set_request_structured_replies(structured)
        h.connect_uri(url)
        try:
            with open(source, "rb") as f:
                for _ in range(count // 2):
                    length = rnd.choice([1, 4096, 4097, 65536, 262_144, 1 * MiB])
                    offset = rnd.randrange(0, SIZE - length + 1)
                    f.seek(offset)
                    assert h.pread(length, offset) == f.read(length), (offset, length)
        finally:
            h.shutdown()


def test_random_reads_of_an_archive_match_the_source(served, source):
    random_reads(served.url, source, 1000, seed=3)


@pytest.mark.slow
def test_ten_thousand_random_reads_of_an_archive_match_the_source(served, source):
    random_reads(served.url, source, 10_000, seed=4)


@pytest.mark.warns_log  # the server logs each failed read
def test_a_corrupted_frame_gives_eio_there_and_exact_bytes_elsewhere(archive, source, tmp_path):
    from volpack import open_archive

    nbd = nbd_module()
    damaged = tmp_path / "damaged.vpk"
    shutil.copyfile(archive, damaged)
    with open_archive(str(archive)) as a:
        offsets = a.trailer.index["offset"]
        assert len(offsets) > 2
        target = int(offsets[len(offsets) // 2]) + 200  # inside the payload of a middle frame
    with open(damaged, "r+b") as f:
        f.seek(target)
        byte = f.read(1)
        f.seek(target)
        f.write(bytes([byte[0] ^ 0xFF]))
    s = Served(damaged)
    try:
        h = nbd.NBD()
        h.connect_uri(s.url)
        failed = 0
        with open(source, "rb") as f:
            for offset in range(0, SIZE, 256 * 1024):
                f.seek(offset)
                want = f.read(256 * 1024)
                try:
                    got = h.pread(256 * 1024, offset)
                except nbd.Error as exc:
                    assert exc.errno == "EIO"
                    failed += 1
                    continue
                assert got == want, f"wrong bytes at {offset}"
        h.shutdown()
        assert 1 <= failed <= 2  # one frame spans at most two aligned 256 KiB reads
    finally:
        s.close()


# -- the CLI processes -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"{what}: exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError(f"{what}: not ready within {timeout} s")


def test_volpack_serve_exports_two_archives_by_name_and_stops_on_sigterm(archive, source, tmp_path):
    need("nbdinfo")
    need("nbdcopy")
    second = tmp_path / "other.vpk"
    shutil.copyfile(archive, second)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "volpack",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            str(archive),
            str(second),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"nbd://127.0.0.1:{port}"
        _wait_for(
            lambda: (
                subprocess.run(["nbdinfo", "--list", base], capture_output=True).returncode == 0
            ),
            proc,
            "volpack serve",
        )
        listing = json.loads(run("nbdinfo", "--list", "--json", base).stdout)
        names = sorted(e["export-name"] for e in listing["exports"])
        assert names == sorted([archive.stem, "other"])
        out = tmp_path / "copy.img"
        run("nbdcopy", f"{base}/other", str(out))
        run("cmp", str(source), str(out))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)  # reaps it and closes its pipes
    assert proc.returncode == 0, err
    assert f"{base}/other" in err  # the URLs are printed at start


def test_volpack_serve_on_a_unix_socket_with_a_given_name(archive, source, tmp_path):
    need("nbdcopy")
    sock = tmp_path / "vp.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "volpack",
            "serve",
            "--socket",
            str(sock),
            "--name",
            "root",
            str(archive),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"nbd+unix:///root?socket={sock}"
    try:
        _wait_for(sock.exists, proc, "volpack serve --socket")
        out = tmp_path / "copy.img"
        run("nbdcopy", url, str(out))
        run("cmp", str(source), str(out))
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not sock.exists()


def test_volpack_serve_refuses_a_missing_archive_with_a_one_line_error(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "volpack", "serve", str(tmp_path / "nope.vpk")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "nope.vpk" in res.stderr


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing")
def test_volpack_mount_exposes_the_volume_and_unmounts_on_sigterm(archive, source, tmp_path):
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"mfusepy/libfuse3 not usable: {exc}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "mount", str(archive), str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: os.path.ismount(mnt), proc, "volpack mount")
        assert os.listdir(mnt) == ["volume.img"]
        run("cmp", str(source), str(mnt / "volume.img"))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    assert proc.returncode == 0, err
    assert not os.path.ismount(mnt)


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing")
def test_the_nbdfuse_recipe_gives_a_file_equal_to_the_source(served, source, tmp_path):
    need("nbdfuse")
    mnt = tmp_path / "nbdfuse"
    mnt.mkdir()
    proc = subprocess.Popen(
        ["nbdfuse", "-r", str(mnt / "disk"), served.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (mnt / "disk").exists(), proc, "nbdfuse")
        run("cmp", str(source), str(mnt / "disk"))
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
