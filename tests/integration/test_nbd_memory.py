"""The NBD server's memory stays bounded under clients that ask for large reads and never read.

`volpack serve` runs as a process on a real archive; raw-socket clients do the handshake, queue
many 32 MiB reads and then read nothing. The server's resident memory (VmRSS) must stay within
the cache plus the reply budget, the stalled clients must be dropped after --client-timeout, and
a libnbd client reading at the same time must get exact bytes. In-process servers check the
budget accounting, the backpressure and the reply framing of pieced reads.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from volpack.errors import CorruptArchive
from volpack.extents import Extents
from volpack.serve import nbd_proto as p
from volpack.serve.export import Export
from volpack.serve.nbd_conn import REPLY_PIECE
from volpack.serve.nbd_server import NbdServer

MiB = 1 << 20
BLOCK = 4096
SIZE = 256 * MiB  # every block used, each block different, so every frame decodes to new memory
BIG = 32 * MiB  # the largest read the server accepts
CACHE = 16 * MiB
BUDGET = 32 * MiB
CLIENT_TIMEOUT = 3.0
# RSS beyond the cache and the budget that the interpreter may take while serving (allocator
# slack, thread stacks, numpy temporaries); the unbounded server grew by 32 MiB per stalled client.
SLACK = 24 * MiB


def expected(offset: int, length: int) -> bytes:
    """Block i of the volume is the 8-byte little-endian number i, repeated."""
    first = offset // BLOCK
    last = (offset + length - 1) // BLOCK
    blocks = np.repeat(np.arange(first, last + 1, dtype="<u8"), BLOCK // 8).tobytes()
    at = offset - first * BLOCK
    return blocks[at : at + length]


def nbd_module():
    if "/usr/lib/python3/dist-packages" not in sys.path:
        sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import nbd
    except ImportError as exc:
        pytest.skip(f"python3-libnbd is not importable here: {exc}")
    return nbd


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    from volpack import backup

    work = tmp_path_factory.mktemp("mem")
    source = work / "pattern.img"
    with open(source, "wb") as f:
        for at in range(0, SIZE, 16 * MiB):
            f.write(expected(at, 16 * MiB))
    out = work / "pattern.vpk"
    backup(str(source), str(out), compress="zstd:1", allow_mounted=True)
    source.unlink()  # expected() is the oracle; the archive is a few MiB
    return out


# -- a raw client -------------------------------------------------------------------------------
def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(n - len(out), 1 << 20))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def option(s: socket.socket, opt: int, data: bytes = b"") -> None:
    s.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, opt, len(data)) + data)


def option_reply(s: socket.socket) -> tuple[int, bytes]:
    magic, _, rtype, length = p.OPTION_REPLY.unpack(recv_exact(s, p.OPTION_REPLY.size))
    assert magic == p.OPT_REPLY_MAGIC
    return rtype, recv_exact(s, length)


def handshake(s: socket.socket, name: str, structured: bool) -> dict[int, bytes]:
    """Fixed newstyle up to transmission; the NBD_REP_INFO payloads by info type."""
    magic, opt, _ = struct.unpack(">QQH", recv_exact(s, 18))
    assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
    s.sendall(p.U32.pack(p.CLIENT_FLAG_FIXED_NEWSTYLE | p.CLIENT_FLAG_NO_ZEROES))
    if structured:
        option(s, p.OPT_STRUCTURED_REPLY)
        assert option_reply(s)[0] == p.REP_ACK
    raw = name.encode()
    option(s, p.OPT_GO, p.U32.pack(len(raw)) + raw + p.U16.pack(1) + p.U16.pack(p.INFO_BLOCK_SIZE))
    infos = {}
    while True:
        rtype, data = option_reply(s)
        if rtype == p.REP_ACK:
            return infos
        assert rtype == p.REP_INFO, hex(rtype)
        infos[p.U16.unpack(data[:2])[0]] = data[2:]


def request(s: socket.socket, cmd: int, offset: int, length: int, cookie: int, flags: int = 0):
    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, flags, cmd, cookie, offset, length))


def drain_to_eof(s: socket.socket, timeout: float) -> int:
    """Read until the server closes; the number of bytes that came."""
    s.settimeout(timeout)
    got = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(1 << 20):
            got += len(chunk)
    return got


def stall(address: tuple[str, int], index: int, reads: int = 64) -> socket.socket:
    """A client that queues ``reads`` 32 MiB reads and then reads nothing."""
    s = socket.create_connection(address, timeout=30)
    handshake(s, "pattern", structured=index % 2 == 0)
    windows = SIZE // BIG
    for j in range(reads):
        request(s, p.CMD_READ, ((index + j) % windows) * BIG, BIG, cookie=j)
    return s


# -- the server process ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


class Sampler(threading.Thread):
    """The highest VmRSS of ``pid`` seen while running, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)


@pytest.fixture
def served(archive, tmp_path) -> Iterator[tuple[subprocess.Popen, tuple[str, int], Path]]:
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "volpack",
                "serve",
                str(archive),
                "--listen",
                f"127.0.0.1:{port}",
                "--cache-size",
                str(CACHE),
                "--reply-budget",
                str(BUDGET),
                "--client-timeout",
                str(CLIENT_TIMEOUT),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    address = ("127.0.0.1", port)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1) as s:
            recv_exact(s, 18)
            break
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "volpack serve did not start within 30 s"
        time.sleep(0.1)
    yield proc, address, log
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def good_reads(url: str, rounds: int) -> None:
    nbd = nbd_module()
    h = nbd.NBD()
    h.connect_uri(url)
    try:
        for k in range(rounds):
            offset = (k * 37 * MiB + 12345) % (SIZE - BIG)
            assert h.pread(BIG, offset) == expected(offset, BIG), offset
            assert h.pread(4096, SIZE - 4096) == expected(SIZE - 4096, 4096)
    finally:
        h.shutdown()


@pytest.mark.parametrize("stalled", [4, 32])
def test_stalled_clients_keep_server_memory_bounded_and_are_dropped_while_others_read(
    served, stalled
):
    proc, address, log = served
    url = f"nbd://{address[0]}:{address[1]}/pattern"
    good_reads(url, 1)  # warm: the interpreter, the tables and part of the cache are resident
    before = rss(proc.pid)
    sampler = Sampler(proc.pid)
    sampler.start()
    started = time.monotonic()
    clients = [stall(address, i) for i in range(stalled)]
    try:
        good_reads(url, 3)  # a well-behaved client is served while the others stall
        # Every stalled client is dropped once it has taken nothing for the client timeout.
        deadline = started + CLIENT_TIMEOUT + 30
        while log.read_text().count("took no reply bytes") < stalled:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        dropped_after = time.monotonic() - started
        for s in clients:
            got = drain_to_eof(s, 10)
            assert got < 64 * BIG  # hung up on, not served to the end
    finally:
        sampler.stop.set()
        sampler.join()
        for s in clients:
            s.close()
    assert dropped_after >= CLIENT_TIMEOUT
    grown = sampler.peak - before
    assert grown < CACHE + BUDGET + SLACK, (
        f"RSS grew by {grown / MiB:.0f} MiB from {before / MiB:.0f}"
    )
    assert proc.poll() is None
    good_reads(url, 1)
    assert "Traceback" not in log.read_text()


# -- in-process: accounting, backpressure, framing --------------------------------------------------
class FramedVolume:
    """An in-memory volume of ``expected()`` bytes that decodes 1 MiB frames like an archive,
    counting the frames it hands out; reads touching ``damaged`` fail like a bad checksum."""

    frame_size = MiB

    def __init__(self, size: int, damaged: tuple[int, int] | None = None) -> None:
        self.size = size
        self.damaged = damaged
        self.used = Extents.from_pairs([(0, size // 2), (size // 2 + 4 * MiB, size)])

    def used_bytes(self) -> Extents:
        return self.used

    def read(self, offset: int, length: int) -> bytes:
        if self.damaged and offset < self.damaged[1] and self.damaged[0] < offset + length:
            raise CorruptArchive(f"frame checksum mismatch at {self.damaged[0]}")
        out = bytearray(length)
        for s, e in self.used.clip(offset, offset + length):
            out[s - offset : e - offset] = expected(s, e - s)
        return bytes(out)


def volume_bytes(vol: FramedVolume, offset: int, length: int) -> bytes:
    out = bytearray(length)
    for s, e in vol.used.clip(offset, offset + length):
        out[s - offset : e - offset] = expected(s, e - s)
    return bytes(out)


@contextlib.contextmanager
def in_process(vol: FramedVolume, **kw: object) -> Iterator[NbdServer]:
    srv = NbdServer([Export.of("pattern", vol)], port=0, **kw)  # type: ignore[arg-type]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        thread.join(10)
        srv.close()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.warns_log  # the server logs the client it drops
def test_a_stalled_client_holds_at_most_one_piece_of_the_budget_and_returns_it_when_dropped():
    with in_process(FramedVolume(64 * MiB), client_timeout=1.5, reply_budget=16 * MiB) as srv:
        s = socket.create_connection(srv.address, timeout=10)  # type: ignore[arg-type]
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        handshake(s, "pattern", structured=False)
        for j in range(8):
            request(s, p.CMD_READ, j * MiB, BIG, cookie=j)
        wait_until(lambda: srv.budget.peak > 0, 5, "no reply started")
        time.sleep(0.8)  # past the grace after which a blocked piece is copied off its frames
        held = srv.budget.in_use
        assert 0 < held <= REPLY_PIECE + p.SIMPLE_REPLY.size
        assert srv.budget.peak <= 16 * MiB
        wait_until(lambda: srv.client_count() == 0, 10, "the stalled client was not dropped")
        assert srv.budget.in_use == 0
        assert drain_to_eof(s, 5) < 8 * BIG
        s.close()


def test_a_client_that_stops_reading_stops_being_read_from():
    """Backpressure: while a reply waits, the server takes no further requests, so the client's
    own sends fill up instead of the server's memory."""
    with in_process(FramedVolume(64 * MiB), client_timeout=10) as srv:
        s = socket.create_connection(srv.address, timeout=10)  # type: ignore[arg-type]
        handshake(s, "pattern", structured=True)
        s.setblocking(False)
        batch = b"".join(
            p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, j, 0, BIG) for j in range(1024)
        )
        sent = 0
        with pytest.raises(BlockingIOError):
            while sent < 1 << 30:  # 38 million requests: far more than any socket buffers
                sent += s.send(batch)
        assert sent < 64 * MiB
        assert srv.budget.in_use <= srv.budget.total
        s.close()


@pytest.mark.warns_log  # the server logs the clients it drops
def test_several_stalled_clients_never_take_more_than_the_budget_and_a_reader_still_gets_data():
    vol = FramedVolume(64 * MiB)
    with in_process(vol, client_timeout=2, reply_budget=8 * MiB) as srv:
        stalled = []
        for i in range(12):
            s = socket.create_connection(srv.address, timeout=10)  # type: ignore[arg-type]
            handshake(s, "pattern", structured=i % 2 == 0)
            for j in range(4):
                request(s, p.CMD_READ, (i + j) * MiB, BIG, cookie=j)
            stalled.append(s)
        nbd = nbd_module()
        h = nbd.NBD()
        h.connect_uri(srv.urls()[0])
        for offset in (0, 31 * MiB + 7, 40 * MiB - 3):
            assert h.pread(4 * MiB, offset) == volume_bytes(vol, offset, 4 * MiB)
        h.shutdown()
        assert srv.budget.peak <= 8 * MiB
        wait_until(lambda: srv.client_count() == 0, 20, "stalled clients were not dropped")
        assert srv.budget.in_use == 0
        for s in stalled:
            s.close()


def test_a_client_that_floods_options_without_reading_is_dropped_at_the_handshake_deadline(
    caplog,
):
    caplog.set_level(logging.WARNING, logger="volpack")
    with in_process(FramedVolume(8 * MiB), handshake_timeout=1.0) as srv:
        s = socket.create_connection(srv.address, timeout=10)  # type: ignore[arg-type]
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        recv_exact(s, 18)
        s.sendall(p.U32.pack(p.CLIENT_FLAG_FIXED_NEWSTYLE))
        started = time.monotonic()
        flood = p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_LIST, 0) * 20_000
        with contextlib.suppress(OSError):
            s.sendall(flood)
        wait_until(lambda: srv.client_count() == 0, 10, "the flooding client was not dropped")
        assert time.monotonic() - started < 5
        s.close()
    assert "dropped: handshake not finished within 1 s" in caplog.text


@pytest.mark.parametrize("mode", ["simple", "structured", "structured-df"])
def test_reads_many_pieces_long_arrive_exactly_in_every_reply_mode(mode):
    vol = FramedVolume(64 * MiB)
    offset, length = 32 * MiB - 3 * MiB - 5, BIG  # data, a 4 MiB unused run, data
    with in_process(vol, reply_budget=2 * MiB) as srv:
        s = socket.create_connection(srv.address, timeout=30)  # type: ignore[arg-type]
        handshake(s, "pattern", structured=mode != "simple")
        flags = p.CMD_FLAG_DF if mode == "structured-df" else 0
        request(s, p.CMD_READ, offset, length, cookie=7, flags=flags)
        image = bytearray(b"\xee" * length)
        kinds = []
        if mode == "simple":
            magic, error, cookie = p.SIMPLE_REPLY.unpack(recv_exact(s, p.SIMPLE_REPLY.size))
            assert (magic, error, cookie) == (p.SIMPLE_REPLY_MAGIC, 0, 7)
            image[:] = recv_exact(s, length)
        else:
            while True:
                magic, cflags, rtype, cookie, n = p.CHUNK.unpack(recv_exact(s, p.CHUNK.size))
                assert (magic, cookie) == (p.STRUCTURED_REPLY_MAGIC, 7)
                body = recv_exact(s, n)
                kinds.append(rtype)
                if rtype == p.REPLY_TYPE_OFFSET_DATA:
                    at = p.U64.unpack(body[:8])[0] - offset
                    image[at : at + n - 8] = body[8:]
                else:
                    assert rtype == p.REPLY_TYPE_OFFSET_HOLE
                    at, size = struct.unpack(">QI", body)
                    image[at - offset : at - offset + size] = bytes(size)
                if cflags & p.REPLY_FLAG_DONE:
                    break
        assert bytes(image) == volume_bytes(vol, offset, length)
        if mode == "structured-df":
            assert kinds == [p.REPLY_TYPE_OFFSET_DATA]
        if mode == "structured":
            # 28 MiB of data in pieces, one hole chunk for the 4 MiB unused run
            assert kinds.count(p.REPLY_TYPE_OFFSET_HOLE) == 1
            assert kinds.count(p.REPLY_TYPE_OFFSET_DATA) >= (BIG - 4 * MiB) // REPLY_PIECE
        assert srv.budget.in_use == 0
        s.close()


@pytest.mark.warns_log  # the server logs the failed read
def test_a_damaged_frame_past_the_first_piece_hangs_up_a_simple_reply_never_sending_wrong_bytes():
    vol = FramedVolume(64 * MiB, damaged=(5 * MiB, 5 * MiB + 1))
    with in_process(vol) as srv:
        s = socket.create_connection(srv.address, timeout=30)  # type: ignore[arg-type]
        handshake(s, "pattern", structured=False)
        # Damage in the first piece: the reply is EIO and the connection goes on.
        request(s, p.CMD_READ, 5 * MiB - 4096, 8192, cookie=1)
        assert p.SIMPLE_REPLY.unpack(recv_exact(s, p.SIMPLE_REPLY.size))[1] == p.EIO
        # Damage further in: the good pieces arrive, then the server hangs up.
        request(s, p.CMD_READ, 4 * MiB, 4 * MiB, cookie=2)
        magic, error, cookie = p.SIMPLE_REPLY.unpack(recv_exact(s, p.SIMPLE_REPLY.size))
        assert (error, cookie) == (0, 2)
        s.settimeout(10)
        got = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                got += chunk
        assert len(got) < 4 * MiB
        assert bytes(got) == volume_bytes(vol, 4 * MiB, len(got))
        s.close()


@pytest.mark.warns_log  # the server logs the failed read
def test_a_damaged_frame_past_the_first_piece_ends_a_structured_reply_with_an_error_chunk():
    vol = FramedVolume(64 * MiB, damaged=(5 * MiB, 5 * MiB + 1))
    with in_process(vol) as srv:
        s = socket.create_connection(srv.address, timeout=30)  # type: ignore[arg-type]
        handshake(s, "pattern", structured=True)
        request(s, p.CMD_READ, 4 * MiB, 4 * MiB, cookie=3)
        chunks = []
        while True:
            _, cflags, rtype, _, n = p.CHUNK.unpack(recv_exact(s, p.CHUNK.size))
            chunks.append((rtype, recv_exact(s, n)))
            if cflags & p.REPLY_FLAG_DONE:
                break
        rtype, body = chunks[-1]
        assert rtype == p.REPLY_TYPE_ERROR_OFFSET and p.U32.unpack(body[:4])[0] == p.EIO
        assert p.U64.unpack(body[-8:])[0] == 5 * MiB
        for rtype, body in chunks[:-1]:
            assert rtype == p.REPLY_TYPE_OFFSET_DATA
            at = p.U64.unpack(body[:8])[0]
            assert body[8:] == volume_bytes(vol, at, len(body) - 8)
        # the connection carries on
        request(s, p.CMD_READ, 0, 4096, cookie=4)
        _, cflags, rtype, _, n = p.CHUNK.unpack(recv_exact(s, p.CHUNK.size))
        assert rtype == p.REPLY_TYPE_OFFSET_DATA
        assert recv_exact(s, n)[8:] == volume_bytes(vol, 0, 4096)
        s.close()


def test_the_advertised_maximum_read_is_the_enforced_one():
    with in_process(FramedVolume(64 * MiB)) as srv:
        s = socket.create_connection(srv.address, timeout=30)  # type: ignore[arg-type]
        infos = handshake(s, "pattern", structured=False)
        minimum, preferred, maximum = struct.unpack(">III", infos[p.INFO_BLOCK_SIZE])
        assert (minimum, maximum) == (1, BIG)
        request(s, p.CMD_READ, 0, maximum + 1, cookie=1)
        assert p.SIMPLE_REPLY.unpack(recv_exact(s, p.SIMPLE_REPLY.size))[1] == p.EOVERFLOW
        request(s, p.CMD_READ, 0, maximum, cookie=2)
        assert p.SIMPLE_REPLY.unpack(recv_exact(s, p.SIMPLE_REPLY.size))[1] == 0
        assert recv_exact(s, maximum)[:4096] == expected(0, 4096)
        s.close()


def test_volpack_serve_log_names_the_client_timeout(served):
    proc, address, log = served
    s = stall(address, 0, reads=2)
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT + 20
        while "dropped" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        s.close()
    line = next(x for x in log.read_text().splitlines() if "dropped" in x)
    assert re.search(r"took no reply bytes for 3 s", line), line


def test_shutdown_cuts_off_a_client_that_is_not_reading_instead_of_waiting_for_it():
    vol = FramedVolume(64 * MiB)
    srv = NbdServer([Export.of("pattern", vol)], port=0, client_timeout=600)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    s = socket.create_connection(srv.address, timeout=10)  # type: ignore[arg-type]
    handshake(s, "pattern", structured=True)
    request(s, p.CMD_READ, 0, BIG, cookie=1)
    wait_until(lambda: srv.budget.peak > 0, 5, "no reply started")
    started = time.monotonic()
    srv.shutdown()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - started < 15  # the 5 s grace for requests in progress, then cut
    assert srv.client_count() == 0 and srv.budget.in_use == 0
    srv.close()
    s.close()


def test_a_finely_fragmented_map_is_answered_in_bounded_replies_that_add_up_exactly():
    vol = FramedVolume(64 * MiB)
    # 2 KiB used, 2 KiB unused, all the way: 32768 used runs, 65536 runs in all.
    starts = np.arange(0, 64 * MiB, 4096, dtype=np.int64)
    vol.used = Extents.from_arrays(starts, starts + 2048)
    with in_process(vol) as srv:
        s = socket.create_connection(srv.address, timeout=30)  # type: ignore[arg-type]
        recv_exact(s, 18)
        s.sendall(p.U32.pack(p.CLIENT_FLAG_FIXED_NEWSTYLE | p.CLIENT_FLAG_NO_ZEROES))
        option(s, p.OPT_STRUCTURED_REPLY)
        assert option_reply(s)[0] == p.REP_ACK
        q = p.BASE_ALLOCATION.encode()
        option(s, p.OPT_SET_META_CONTEXT, struct.pack(">I7sII", 7, b"pattern", 1, len(q)) + q)
        assert option_reply(s)[0] == p.REP_META_CONTEXT
        assert option_reply(s)[0] == p.REP_ACK
        option(s, p.OPT_GO, struct.pack(">I7sH", 7, b"pattern", 0))
        while option_reply(s)[0] != p.REP_ACK:
            pass
        request(s, p.CMD_BLOCK_STATUS, 0, 64 * MiB, cookie=1)
        _, cflags, rtype, _, n = p.CHUNK.unpack(recv_exact(s, p.CHUNK.size))
        assert rtype == p.REPLY_TYPE_BLOCK_STATUS and cflags & p.REPLY_FLAG_DONE
        desc = np.frombuffer(recv_exact(s, n)[4:], dtype=">u4").reshape(-1, 2)
        assert 0 < len(desc) <= REPLY_PIECE // 8  # a partial answer; the client asks on
        assert (desc[:, 0] == 2048).all()
        assert (desc[0::2, 1] == 0).all() and (desc[1::2, 1] == p.STATE_HOLE | p.STATE_ZERO).all()
        request(s, p.CMD_READ, 1000, BIG, cookie=2)
        image = bytearray(b"\xee" * BIG)
        while True:
            _, cflags, rtype, _, n = p.CHUNK.unpack(recv_exact(s, p.CHUNK.size))
            body = recv_exact(s, n)
            assert rtype == p.REPLY_TYPE_OFFSET_DATA  # holes of 2 KiB ride inside the data
            at = p.U64.unpack(body[:8])[0] - 1000
            assert len(body) - 8 <= REPLY_PIECE
            image[at : at + n - 8] = body[8:]
            if cflags & p.REPLY_FLAG_DONE:
                break
        assert bytes(image) == volume_bytes(vol, 1000, BIG)
        s.close()
