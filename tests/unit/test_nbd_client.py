"""The NBD client against a scripted server that misbehaves in ways real servers do not on cue:
replies outside the request, short replies, a wrong cookie, a disconnect mid-reply (each one is
one SourceError line, never bytes taken on trust); and replies out of order, which a client with
several requests in flight must file under their cookies."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from volpack import nbdwire as w
from volpack.errors import SourceError, TargetError
from volpack.source.nbd import NbdSource
from volpack.source.nbd_client import MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES, PIECE, NbdClient

SIZE = 1 << 20


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise ConnectionError
        data += part
    return data


def _handshake(conn: socket.socket, size: int = SIZE, tflags: int = w.TFLAG_HAS_FLAGS) -> None:
    conn.sendall(struct.pack(">QQH", w.NBDMAGIC, w.IHAVEOPT, w.FLAG_FIXED_NEWSTYLE))
    _recv(conn, 4)
    while True:
        _, opt, length = w.OPTION_HEADER.unpack(_recv(conn, w.OPTION_HEADER.size))
        _recv(conn, length)
        if opt == w.OPT_SET_META_CONTEXT:
            ctx = w.U32.pack(1) + w.BASE_ALLOCATION.encode()
            conn.sendall(w.OPTION_REPLY.pack(w.OPT_REPLY_MAGIC, opt, w.REP_META_CONTEXT, len(ctx)))
            conn.sendall(ctx)
        if opt == w.OPT_GO:
            info = w.U16.pack(w.INFO_EXPORT) + struct.pack(">QH", size, tflags)
            conn.sendall(w.OPTION_REPLY.pack(w.OPT_REPLY_MAGIC, opt, w.REP_INFO, len(info)) + info)
        conn.sendall(w.OPTION_REPLY.pack(w.OPT_REPLY_MAGIC, opt, w.REP_ACK, 0))
        if opt == w.OPT_GO:
            return


def _serve(tmp_path: Path, answer: Callable[[socket.socket, int, int, int], None]) -> str:
    """Listen on a private socket; answer the first READ with ``answer(conn, cookie, off, len)``."""
    path = tmp_path / "s.sock"
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(str(path))
    lsock.listen(1)

    def run() -> None:
        conn, _ = lsock.accept()
        try:
            _handshake(conn)
            while True:
                _, _, cmd, cookie, off, length = w.REQUEST.unpack(_recv(conn, w.REQUEST.size))
                if cmd == w.CMD_READ:
                    answer(conn, cookie, off, length)
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
            lsock.close()

    threading.Thread(target=run, daemon=True).start()
    return f"nbd+unix:///?socket={path}"


def _read_fails(url: str, match: str) -> None:
    src = NbdSource(url)
    try:
        with pytest.raises(SourceError, match=match):
            src.read_into(0, memoryview(bytearray(65536)))
    finally:
        src.close()


def _data_chunk(cookie: int, offset: int, data: bytes, flags: int = w.REPLY_FLAG_DONE) -> bytes:
    return (
        struct.pack(
            ">IHHQI",
            w.STRUCTURED_REPLY_MAGIC,
            flags,
            w.REPLY_TYPE_OFFSET_DATA,
            cookie,
            8 + len(data),
        )
        + w.U64.pack(offset)
        + data
    )


def test_a_data_chunk_outside_the_request_is_refused(tmp_path):
    url = _serve(tmp_path, lambda c, k, o, n: c.sendall(_data_chunk(k, o + n, b"x" * 16)))
    _read_fails(url, "outside")


def test_a_reply_covering_less_than_the_request_is_refused(tmp_path):
    url = _serve(tmp_path, lambda c, k, o, n: c.sendall(_data_chunk(k, o, b"x" * (n // 2))))
    _read_fails(url, "answered 32768 of the 65536 bytes")


def test_a_reply_to_another_request_is_refused(tmp_path):
    url = _serve(tmp_path, lambda c, k, o, n: c.sendall(_data_chunk(k + 7, o, b"x" * n)))
    _read_fails(url, "while waiting for request")


def test_a_server_closing_mid_reply_is_a_source_error(tmp_path):
    url = _serve(tmp_path, lambda c, k, o, n: c.sendall(_data_chunk(k, o, b"x" * n)[:1000]))
    _read_fails(url, "closed the connection")


def test_an_error_chunk_fails_the_read_with_the_servers_message(tmp_path):
    def answer(c: socket.socket, k: int, o: int, n: int) -> None:
        msg = b"disk on fire"
        body = w.U32.pack(w.EIO) + w.U16.pack(len(msg)) + msg
        c.sendall(
            struct.pack(
                ">IHHQI",
                w.STRUCTURED_REPLY_MAGIC,
                w.REPLY_FLAG_DONE,
                w.REPLY_TYPE_ERROR,
                k,
                len(body),
            )
            + body
        )

    _read_fails(_serve(tmp_path, answer), "error 5: disk on fire")


def _pattern(offset: int, length: int) -> bytes:
    """Bytes that tell where they belong: each 8-byte word is its own export offset."""
    words = np.arange(offset // 8, (offset + length) // 8, dtype=">u8")
    return words.tobytes()


def _batching_server(tmp_path: Path, size: int, seen: list[tuple[int, int]]) -> str:
    """Collect READ requests until none arrives for 0.3 s, then answer the batch in reverse
    order (a different cookie than the next expected one every time); record (requests, bytes)
    of each batch in ``seen``."""
    path = tmp_path / "b.sock"
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(str(path))
    lsock.listen(1)

    def run() -> None:
        conn, _ = lsock.accept()
        try:
            _handshake(conn, size)
            batch: list[tuple[int, int, int]] = []
            while True:
                conn.settimeout(0.3 if batch else None)
                try:
                    head = _recv(conn, w.REQUEST.size)
                except TimeoutError:
                    seen.append((len(batch), sum(n for _, _, n in batch)))
                    for cookie, off, n in reversed(batch):
                        conn.sendall(_data_chunk(cookie, off, _pattern(off, n)))
                    batch = []
                    continue
                _, _, cmd, cookie, off, length = w.REQUEST.unpack(head)
                if cmd != w.CMD_READ:
                    return
                batch.append((cookie, off, length))
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
            lsock.close()

    threading.Thread(target=run, daemon=True).start()
    return f"nbd+unix:///?socket={path}"


def test_a_read_keeps_several_requests_in_flight_and_files_replies_by_cookie(tmp_path):
    size = 8 << 20
    seen: list[tuple[int, int]] = []
    src = NbdSource(_batching_server(tmp_path, size, seen))
    try:
        buf = bytearray(size)
        src.read_into(0, memoryview(buf))
    finally:
        src.close()
    # Every piece (1 MiB) was sent before any reply came, and the replies, sent last piece
    # first, landed where their cookies said.
    assert seen == [(size // PIECE, size)]
    assert buf == _pattern(0, size)


def test_requests_in_flight_stay_within_their_count_and_byte_budget(tmp_path):
    size = 96 << 20
    seen: list[tuple[int, int]] = []
    src = NbdSource(_batching_server(tmp_path, size, seen))
    try:
        buf = bytearray(size)
        src.read_into(0, memoryview(buf))
    finally:
        src.close()
    assert buf == _pattern(0, size)
    assert MAX_IN_FLIGHT * PIECE == MAX_IN_FLIGHT_BYTES  # so both limits are reached here
    assert max(n for n, _ in seen) == MAX_IN_FLIGHT
    assert max(b for _, b in seen) == MAX_IN_FLIGHT_BYTES
    assert sum(b for _, b in seen) == size


def test_a_failed_write_sent_behind_is_raised_before_the_flush_is_sent(tmp_path):
    """Writes go out without waiting for their replies; a failure of the last one still fails
    the restore (in flush), and no FLUSH reaches the server before every reply is in."""
    path = tmp_path / "w.sock"
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(str(path))
    lsock.listen(1)
    seen: list[int] = []

    def run() -> None:
        conn, _ = lsock.accept()
        try:
            _handshake(conn, 8 << 20, w.TFLAG_HAS_FLAGS | w.TFLAG_SEND_FLUSH)
            while True:
                _, _, cmd, cookie, off, length = w.REQUEST.unpack(_recv(conn, w.REQUEST.size))
                seen.append(cmd)
                if cmd == w.CMD_WRITE:
                    _recv(conn, length)
                    error = w.EIO if off == 6 << 20 else 0
                    conn.sendall(w.SIMPLE_REPLY.pack(w.SIMPLE_REPLY_MAGIC, error, cookie))
                elif cmd == w.CMD_DISC:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
            lsock.close()

    threading.Thread(target=run, daemon=True).start()
    client = NbdClient(f"nbd+unix:///?socket={path}", TargetError, write=True)
    try:
        client.write_behind(memoryview(bytes(8 << 20)), 0)
        with pytest.raises(TargetError, match=f"a write of {PIECE} bytes at offset 6291456"):
            client.flush()
    finally:
        client.close()
    assert w.CMD_FLUSH not in seen
