"""The NBD server under hostile or broken clients, spoken to with raw sockets.

Every bad request must get its proper NBD error (or, when the framing is lost, a closed
connection), and the server must keep serving everybody else.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volpack.extents import Extents
from volpack.serve import nbd_proto as p
from volpack.serve.export import Export
from volpack.serve.nbd_server import NbdServer

MiB = 1 << 20
SIZE = 64 * MiB  # over the 32 MiB read limit, so EOVERFLOW is reachable
DATA = Extents.from_pairs([(0, 1 * MiB), (40 * MiB, 41 * MiB)])


class PatternVolume:
    """Byte i of the volume is (i * 7) % 251 inside the used map, zero elsewhere."""

    size = SIZE

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        for s, e in DATA.clip(offset, offset + length):
            out[s - offset : e - offset] = pattern(s, e - s)
        return bytes(out)

    def used_bytes(self) -> Extents:
        return DATA


def pattern(offset: int, length: int) -> bytes:
    return bytes(((offset + i) * 7) % 251 for i in range(length))


@pytest.fixture(scope="module")
def server() -> Iterator[NbdServer]:
    srv = NbdServer([Export.of("vol", PatternVolume())], port=0, handshake_timeout=1.0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(10)
    srv.close()


_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_client_sockets() -> Iterator[None]:
    """Tests drop connections mid-protocol on purpose; each is closed when its test ends."""
    yield
    while _opened:
        _opened.pop().close()


def connect(server: NbdServer) -> socket.socket:
    s = socket.create_connection(server.address, timeout=10)  # type: ignore[arg-type]
    _opened.append(s)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def send_option(s: socket.socket, option: int, data: bytes = b"") -> None:
    s.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, option, len(data)) + data)


def read_option_reply(s: socket.socket) -> tuple[int, int, bytes]:
    magic, option, rtype, length = p.OPTION_REPLY.unpack(recv_exact(s, p.OPTION_REPLY.size))
    assert magic == p.OPT_REPLY_MAGIC
    return option, rtype, recv_exact(s, length)


def greet(s: socket.socket) -> None:
    magic, opt, flags = struct.unpack(">QQH", recv_exact(s, 18))
    assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
    assert flags & p.FLAG_FIXED_NEWSTYLE
    s.sendall(p.U32.pack(p.CLIENT_FLAG_FIXED_NEWSTYLE | p.CLIENT_FLAG_NO_ZEROES))


def go(s: socket.socket, name: str = "vol") -> int:
    raw = name.encode()
    send_option(s, p.OPT_GO, p.U32.pack(len(raw)) + raw + p.U16.pack(0))
    tflags = None
    while True:
        _, rtype, data = read_option_reply(s)
        if rtype == p.REP_ACK:
            assert tflags is not None
            return tflags
        assert rtype == p.REP_INFO, hex(rtype)
        if p.U16.unpack(data[:2])[0] == p.INFO_EXPORT:
            size, tflags = struct.unpack(">QH", data[2:])
            assert size == SIZE


def session(server: NbdServer, structured: bool = False, meta: bool = False) -> socket.socket:
    s = connect(server)
    greet(s)
    if structured:
        send_option(s, p.OPT_STRUCTURED_REPLY)
        assert read_option_reply(s)[1] == p.REP_ACK
    if meta:
        q = p.BASE_ALLOCATION.encode()
        send_option(s, p.OPT_SET_META_CONTEXT, struct.pack(">I3sII", 3, b"vol", 1, len(q)) + q)
        assert read_option_reply(s)[1] == p.REP_META_CONTEXT
        assert read_option_reply(s)[1] == p.REP_ACK
    tflags = go(s)
    assert tflags & p.TFLAG_READ_ONLY
    return s


def request(s: socket.socket, cmd: int, offset: int, length: int, flags: int = 0, cookie: int = 1):
    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, flags, cmd, cookie, offset, length))


def simple_reply(s: socket.socket, cookie: int = 1) -> int:
    magic, error, got_cookie = p.SIMPLE_REPLY.unpack(recv_exact(s, p.SIMPLE_REPLY.size))
    assert magic == p.SIMPLE_REPLY_MAGIC and got_cookie == cookie
    return error


def structured_chunks(s: socket.socket, cookie: int = 1) -> list[tuple[int, bytes]]:
    chunks = []
    while True:
        magic, flags, rtype, got_cookie, length = p.CHUNK.unpack(recv_exact(s, p.CHUNK.size))
        assert magic == p.STRUCTURED_REPLY_MAGIC and got_cookie == cookie
        chunks.append((rtype, recv_exact(s, length)))
        if flags & p.REPLY_FLAG_DONE:
            return chunks


def assert_read_works(s: socket.socket, offset: int = 40 * MiB + 3, length: int = 5000) -> None:
    request(s, p.CMD_READ, offset, length, cookie=99)
    assert simple_reply(s, 99) == 0
    assert recv_exact(s, length) == pattern(offset, length)


def assert_server_alive(server: NbdServer) -> None:
    s = session(server)
    assert_read_works(s)
    request(s, p.CMD_DISC, 0, 0)
    s.close()


def assert_closed(s: socket.socket) -> None:
    s.settimeout(10)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass


# -- requests ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offset", "length"),
    [(SIZE - 512, 1024), (SIZE, 1), (2**64 - 1, 2), (2**64 - 4096, 8192), (0, 0)],
    ids=["straddles-end", "at-end", "u64-max", "wraps-around", "zero-length"],
)
def test_out_of_range_reads_get_einval_and_the_connection_goes_on(server, offset, length):
    s = session(server)
    request(s, p.CMD_READ, offset, length)
    assert simple_reply(s) == p.EINVAL
    assert_read_works(s)


def test_a_read_over_32_mib_gets_eoverflow_with_no_payload(server):
    s = session(server)
    request(s, p.CMD_READ, 0, 32 * MiB + 1)
    assert simple_reply(s) == p.EOVERFLOW
    assert_read_works(s)


def test_a_huge_length_gets_an_error_not_a_huge_allocation(server):
    s = session(server, structured=True)
    request(s, p.CMD_READ, 0, 2**32 - 1)
    [(rtype, body)] = structured_chunks(s)
    assert rtype == p.REPLY_TYPE_ERROR
    assert p.U32.unpack(body[:4])[0] == p.EINVAL


def test_writes_get_eperm_and_their_payload_is_skipped(server):
    s = session(server)
    request(s, p.CMD_WRITE, 0, 4096)
    s.sendall(b"\xaa" * 4096)
    assert simple_reply(s) == p.EPERM
    for cmd in (p.CMD_TRIM, p.CMD_WRITE_ZEROES):
        request(s, cmd, 0, 4096)
        assert simple_reply(s) == p.EPERM
    assert_read_works(s)


def test_a_write_over_the_payload_limit_closes_that_connection_only(server):
    s = session(server)
    request(s, p.CMD_WRITE, 0, 64 * MiB)
    assert_closed(s)
    assert_server_alive(server)


@pytest.mark.parametrize("cmd", [p.CMD_CACHE, 8, 42, 0xFFFF])
def test_unknown_commands_get_einval(server, cmd):
    s = session(server)
    request(s, cmd, 0, 512)
    assert simple_reply(s) == p.EINVAL
    assert_read_works(s)


def test_unknown_flags_get_einval(server):
    s = session(server)
    request(s, p.CMD_READ, 0, 512, flags=1 << 12)
    assert simple_reply(s) == p.EINVAL
    request(s, p.CMD_FLUSH, 0, 0, flags=p.CMD_FLAG_FUA)
    assert simple_reply(s) == p.EINVAL
    request(s, p.CMD_FLUSH, 0, 0)
    assert simple_reply(s) == 0
    assert_read_works(s)


def test_block_status_without_a_meta_context_is_einval(server):
    s = session(server, structured=True)
    request(s, p.CMD_BLOCK_STATUS, 0, 4096)
    [(rtype, body)] = structured_chunks(s)
    assert rtype == p.REPLY_TYPE_ERROR and p.U32.unpack(body[:4])[0] == p.EINVAL


def test_structured_read_sends_holes_and_data_that_reassemble_exactly(server):
    s = session(server, structured=True, meta=True)
    offset, length = 1 * MiB - 4096, 8 * MiB
    request(s, p.CMD_READ, offset, length)
    image = bytearray(b"\xee" * length)
    kinds = []
    for rtype, body in structured_chunks(s):
        kinds.append(rtype)
        if rtype == p.REPLY_TYPE_OFFSET_DATA:
            at = p.U64.unpack(body[:8])[0] - offset
            image[at : at + len(body) - 8] = body[8:]
        elif rtype == p.REPLY_TYPE_OFFSET_HOLE:
            at, n = struct.unpack(">QI", body)
            image[at - offset : at - offset + n] = bytes(n)
    assert kinds == [p.REPLY_TYPE_OFFSET_DATA, p.REPLY_TYPE_OFFSET_HOLE]
    assert bytes(image) == PatternVolume().read(offset, length)


def test_block_status_past_the_end_is_einval(server):
    s = session(server, structured=True, meta=True)
    request(s, p.CMD_BLOCK_STATUS, SIZE - 512, 4096)
    [(rtype, body)] = structured_chunks(s)
    assert rtype == p.REPLY_TYPE_ERROR and p.U32.unpack(body[:4])[0] == p.EINVAL


def test_a_bad_request_magic_drops_that_connection_only(server):
    s = session(server)
    s.sendall(b"\x00" * p.REQUEST.size)
    assert_closed(s)
    assert_server_alive(server)


# -- handshake ---------------------------------------------------------------------------------
def test_garbage_instead_of_client_flags_drops_the_client(server):
    s = connect(server)
    recv_exact(s, 18)
    s.sendall(b"\xff" * 64)
    assert_closed(s)
    assert_server_alive(server)


def test_garbage_instead_of_an_option_drops_the_client(server):
    s = connect(server)
    greet(s)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_closed(s)
    assert_server_alive(server)


def test_unknown_options_and_malformed_option_data_get_error_replies(server):
    s = connect(server)
    greet(s)
    send_option(s, 99)
    assert read_option_reply(s)[1] == p.REP_ERR_UNSUP
    send_option(s, p.OPT_GO, b"\x00\x00\x00\x10abc")  # name length beyond the data
    assert read_option_reply(s)[1] == p.REP_ERR_INVALID
    send_option(s, p.OPT_LIST, b"x")
    assert read_option_reply(s)[1] == p.REP_ERR_INVALID
    send_option(s, p.OPT_STARTTLS)
    assert read_option_reply(s)[1] == p.REP_ERR_POLICY
    send_option(s, p.OPT_SET_META_CONTEXT, struct.pack(">II", 0, 0))  # before structured
    assert read_option_reply(s)[1] == p.REP_ERR_INVALID
    send_option(s, p.OPT_INFO, struct.pack(">I4sH", 4, b"nope", 0))
    assert read_option_reply(s)[1] == p.REP_ERR_UNKNOWN
    send_option(s, 77, b"z" * (p.MAX_OPTION_DATA + 1))
    assert read_option_reply(s)[1] == p.REP_ERR_TOO_BIG
    assert go(s) & p.TFLAG_READ_ONLY  # the handshake still completes
    assert_read_works(s)


def test_abort_is_acknowledged_and_closes(server):
    s = connect(server)
    greet(s)
    send_option(s, p.OPT_ABORT)
    assert read_option_reply(s)[1] == p.REP_ACK
    assert_closed(s)


def test_export_name_option_for_an_unknown_export_drops_the_client(server):
    s = connect(server)
    greet(s)
    send_option(s, p.OPT_EXPORT_NAME, b"missing")
    assert_closed(s)
    assert_server_alive(server)


def test_export_name_option_enters_transmission(server):
    s = connect(server)
    greet(s)
    send_option(s, p.OPT_EXPORT_NAME, b"vol")
    size, tflags = struct.unpack(">QH", recv_exact(s, 10))  # no zeroes: we asked for none
    assert size == SIZE and tflags & p.TFLAG_READ_ONLY
    assert_read_works(s)


@pytest.mark.warns_log  # the server logs each client it drops
def test_a_hundred_idle_connections_neither_block_others_nor_stay_forever(server):
    idle = [connect(server) for _ in range(100)]
    try:
        started = time.monotonic()
        assert_server_alive(server)
        assert time.monotonic() - started < 5
        # handshake_timeout is 1 s in this module: all idle clients get hung up on.
        for s in idle:
            s.settimeout(10)
            greeting = recv_exact(s, 18)
            assert greeting.startswith(p.U64.pack(p.NBDMAGIC))
            assert_closed(s)
        assert time.monotonic() - started < 12
    finally:
        for s in idle:
            s.close()
    assert_server_alive(server)


@pytest.mark.warns_log  # the server logs each client it drops
def test_a_slow_trickling_handshake_is_dropped_at_the_deadline(server):
    s = connect(server)
    recv_exact(s, 18)
    started = time.monotonic()
    for byte in p.U32.pack(p.CLIENT_FLAG_FIXED_NEWSTYLE):
        s.sendall(bytes([byte]))
        time.sleep(0.3)
    assert_closed(s)
    assert time.monotonic() - started < 5


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(junk=st.binary(min_size=1, max_size=300), structured=st.booleans())
def test_fuzz_random_bytes_in_transmission_never_take_the_server_down(server, junk, structured):
    s = session(server, structured=structured)
    with contextlib.suppress(OSError):  # the server may have hung up already
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
    assert_closed(s)
    s.close()
    assert_server_alive(server)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(junk=st.binary(min_size=1, max_size=300))
def test_fuzz_random_bytes_in_the_handshake_never_take_the_server_down(server, junk):
    s = connect(server)
    recv_exact(s, 18)
    with contextlib.suppress(OSError):  # the server may have hung up already
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
    assert_closed(s)
    s.close()
    assert_server_alive(server)


def test_shutdown_stops_with_clients_connected_and_releases_the_port():
    srv = NbdServer([Export.of("vol", PatternVolume())], port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    busy = session(srv)
    assert_read_works(busy)
    idle = connect(srv)
    srv.shutdown()
    thread.join(10)
    assert not thread.is_alive()
    assert_closed(busy)
    assert_closed(idle)
    port = srv.address[1]  # type: ignore[index]
    srv.close()
    # the port is free again for the next server
    NbdServer([Export.of("vol", PatternVolume())], port=port).close()
    assert os.getpid()  # nothing leaked into this process that would stop the next test
