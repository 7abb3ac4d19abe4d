"""The NBD server against real clients: nbdinfo, nbdcopy, qemu-img and the libnbd Python binding.

Volumes here are sparse files with a known used map, so these tests need no archive; the same
clients against real archives are in test_nbd_archives.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from volpack.errors import CorruptArchive
from volpack.extents import Extents
from volpack.serve.export import Export
from volpack.serve.nbd_server import NbdServer

MiB = 1 << 20


def _nbd_module():
    if "/usr/lib/python3/dist-packages" not in sys.path:
        sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import nbd
    except ImportError as exc:
        pytest.skip(f"python3-libnbd is not importable here: {exc}")
    return nbd


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")


class FileVolume:
    """A sparse file as a volume: reads with pread, used map given by the test."""

    def __init__(self, path: Path, used: Extents, damaged: Extents | None = None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self._used = used
        self.damaged = damaged or Extents.empty()

    def read(self, offset: int, length: int) -> bytes:
        if self.damaged.clip(offset, offset + length).total():
            raise CorruptArchive(f"frame at {offset}: checksum mismatch")
        return os.pread(self.fd, length, offset)

    def used_bytes(self) -> Extents:
        return self._used

    def close(self) -> None:
        os.close(self.fd)


def make_image(path: Path, size: int, runs: list[tuple[int, int]], seed: int = 1) -> Extents:
    """A sparse file of ``size`` bytes with random data in ``runs`` (and holes elsewhere)."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for start, end in runs:
            f.seek(start)
            f.write(rnd.randbytes(end - start))
    return Extents.from_pairs(runs)


# Holes at the start, in the middle and at the end; a size that is not a multiple of 4096.
RUNS = [
    (64 * 1024, 1 * MiB),
    (3 * MiB, 3 * MiB + 4096),
    (5 * MiB + 512, 9 * MiB),
    (12 * MiB, 13 * MiB),
]
SIZE = 16 * MiB + 1536


class Served:
    def __init__(self, server: NbdServer, thread: threading.Thread, path: Path, used: Extents):
        self.server = server
        self.thread = thread
        self.path = path
        self.used = used
        self.url = server.urls()[0]

    @property
    def port(self) -> int:
        return self.server.address[1]  # type: ignore[index]


def start(exports: list[Export], **kw) -> tuple[NbdServer, threading.Thread]:
    server = NbdServer(exports, port=0, **kw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def stop(server: NbdServer, thread: threading.Thread) -> None:
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive(), "serve_forever did not return after shutdown()"
    server.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    path = tmp_path / "src.img"
    used = make_image(path, SIZE, RUNS)
    vol = FileVolume(path, used)
    server, thread = start([Export.of("vol", vol, "test volume")])
    yield Served(server, thread, path, used)
    stop(server, thread)
    vol.close()


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


def test_nbdinfo_sees_the_size_and_a_read_only_export(served):
    need("nbdinfo")
    info = json.loads(run("nbdinfo", "--json", served.url).stdout)
    export = info["exports"][0]
    assert export["export-size"] == SIZE
    assert export["is_read_only"] is True
    assert export["can_multi_conn"] is True
    assert "base:allocation" in export["contexts"]
    assert info["protocol"] == "newstyle-fixed"


def test_nbdinfo_map_returns_exactly_the_used_map(served):
    need("nbdinfo")
    entries = json.loads(run("nbdinfo", "--map", "--json", served.url).stdout)
    data = [(e["offset"], e["offset"] + e["length"]) for e in entries if e["type"] == 0]
    holes = [(e["offset"], e["offset"] + e["length"]) for e in entries if e["type"] == 3]
    assert {e["type"] for e in entries} <= {0, 3}
    assert Extents.from_pairs(data) == served.used
    assert Extents.from_pairs(holes) == served.used.complement(0, SIZE)
    assert sum(e["length"] for e in entries) == SIZE


def test_nbdcopy_writes_an_image_equal_to_the_source(served, tmp_path):
    need("nbdcopy")
    out = tmp_path / "out.img"
    run("nbdcopy", served.url, str(out))
    run("cmp", str(served.path), str(out))


def test_nbdcopy_without_structured_replies_or_block_status_still_copies_exactly(tmp_path):
    need("nbdcopy")
    # An export that reports everything as data forces full reads of every byte.
    path = tmp_path / "src.img"
    make_image(path, SIZE, RUNS)
    vol = FileVolume(path, Extents.span(0, SIZE))
    server, thread = start([Export.of("all", vol)])
    try:
        out = tmp_path / "out.img"
        run("nbdcopy", "--connections=1", "--requests=1", server.urls()[0], str(out))
        run("cmp", str(path), str(out))
    finally:
        stop(server, thread)
        vol.close()


def test_qemu_img_convert_from_nbd_to_qcow2_equals_the_source(tmp_path):
    need("qemu-img")
    # qemu works in 512-byte sectors, so this image is sector-aligned.
    path = tmp_path / "src.img"
    used = make_image(path, 16 * MiB, RUNS)
    vol = FileVolume(path, used)
    server, thread = start([Export.of("vol", vol)])
    try:
        out = tmp_path / "out.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", server.urls()[0], str(out))
        run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(path), str(out))
    finally:
        stop(server, thread)
        vol.close()


def _random_reads(url: str, source: Path, count: int, structured: bool, seed: int) -> None:
    nbd = _nbd_module()
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(url)
    try:
        assert h.get_structured_replies_negotiated() is structured
        size = h.get_size()
        rnd = random.Random(seed)
        with open(source, "rb") as f:
            for _ in range(count):
                length = rnd.choice([1, 511, 4096, 65536, 300_000, 2 * MiB])
                offset = rnd.randrange(0, size - min(length, size) + 1)
                length = min(length, size - offset)
                got = h.pread(length, offset)
                f.seek(offset)
                assert got == f.read(length), f"bytes differ at [{offset}, {offset + length})"
    finally:
        h.shutdown()


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_random_reads_through_libnbd_match_the_source(served, structured):
    _random_reads(served.url, served.path, 1000, structured, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_ten_thousand_random_reads_through_libnbd_match_the_source(served, structured):
    _random_reads(served.url, served.path, 10_000, structured, seed=11)


def test_eight_clients_reading_at_once_all_get_the_right_bytes(served):
    _nbd_module()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            _random_reads(served.url, served.path, 150, seed % 2 == 0, seed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]


def test_block_status_with_req_one_reports_a_single_extent(served):
    nbd = _nbd_module()
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(served.url)
    seen: list[list[int]] = []

    def cb(metacontext, offset, entries, err):
        seen.append(list(entries))
        return 0

    h.block_status(4 * MiB, 0, cb, nbd.CMD_FLAG_REQ_ONE)
    h.block_status(2 * MiB, 64 * 1024 - 512, cb)
    h.shutdown()
    assert seen[0] == [64 * 1024, 3]  # the leading hole only
    assert seen[1] == [512, 3, 1 * MiB - 64 * 1024, 0, 2 * MiB - (1 * MiB - 64 * 1024) - 512, 3]


def test_list_names_every_export_and_the_empty_name_only_works_with_one(tmp_path):
    need("nbdinfo")
    path = tmp_path / "src.img"
    used = make_image(path, SIZE, RUNS)
    vols = [FileVolume(path, used), FileVolume(path, Extents.span(0, SIZE))]
    server, thread = start([Export.of("alpha", vols[0], "first"), Export.of("beta", vols[1])])
    try:
        port = server.address[1]  # type: ignore[index]
        listing = json.loads(run("nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{port}").stdout)
        assert sorted(e["export-name"] for e in listing["exports"]) == ["alpha", "beta"]
        out = subprocess.run(
            ["nbdinfo", f"nbd://127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode != 0  # no default export when there are two
        assert "export-size" in run("nbdinfo", f"nbd://127.0.0.1:{port}/beta").stdout
    finally:
        stop(server, thread)
        for v in vols:
            v.close()


def test_the_empty_export_name_reaches_a_single_export(served):
    need("nbdinfo")
    size = run("nbdinfo", "--size", f"nbd://127.0.0.1:{served.port}").stdout.strip()
    assert int(size) == SIZE


def test_unix_socket_export_copies_exactly(tmp_path):
    need("nbdcopy")
    path = tmp_path / "src.img"
    used = make_image(path, SIZE, RUNS)
    vol = FileVolume(path, used)
    sock = str(tmp_path / "nbd.sock")
    server = NbdServer([Export.of("vol", vol)], socket_path=sock)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = server.urls()[0]
        assert url.startswith("nbd+unix:///vol?socket=")
        out = tmp_path / "out.img"
        run("nbdcopy", url, str(out))
        run("cmp", str(path), str(out))
    finally:
        stop(server, thread)
        vol.close()
    assert not os.path.exists(sock), "the socket file is removed on close"


@pytest.mark.warns_log  # the server logs each failed read
def test_a_damaged_range_gives_eio_for_that_read_only(tmp_path):
    nbd = _nbd_module()
    path = tmp_path / "src.img"
    used = make_image(path, SIZE, RUNS)
    vol = FileVolume(path, used, damaged=Extents.span(6 * MiB, 6 * MiB + 4096))
    server, thread = start([Export.of("vol", vol)])
    try:
        for structured in (True, False):
            h = nbd.NBD()
            h.set_request_structured_replies(structured)
            h.connect_uri(server.urls()[0])
            with pytest.raises(nbd.Error) as info:
                h.pread(65536, 6 * MiB - 8192)
            assert info.value.errno == "EIO"
            # the same connection keeps working, and other ranges are intact
            with open(path, "rb") as f:
                f.seek(5 * MiB + 512)
                assert h.pread(65536, 5 * MiB + 512) == f.read(65536)
            h.shutdown()
    finally:
        stop(server, thread)
        vol.close()
