"""An NBD client: fixed newstyle handshake, OPT_GO, structured replies, base:allocation.

The transport under the live-volume source (source/nbd.py) and the NBD restore target
(targets/nbd.py). Speaks the wire format of volpack.nbdwire; trusts no length the server sends
(every reply is checked against the request it answers). Raises the error family its caller gives;
never decides which blocks are used and never knows archives.
"""

from __future__ import annotations

import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass

from volpack import nbdwire as w
from volpack.errors import UsageError, VolpackError

DEFAULT_PORT = 10809
# Block-status requests stay under the protocol's 32-bit length (4 GiB), aligned to 1 MiB so a
# server's minimum block size (a power of two ≤ 64 KiB) divides them.
STATUS_CHUNK = (1 << 32) - (1 << 20)
# When the server states no maximum block size the protocol says 32 MiB is safe.
DEFAULT_MAX_BLOCK = 32 * 1024 * 1024
MAX_OPTION_REPLY = 64 * 1024
TIMEOUT = 60.0  # seconds a server may stay silent before the operation fails


@dataclass(frozen=True, slots=True)
class NbdAddress:
    """Where an export is: a TCP host and port, or a Unix socket; and the export name."""

    url: str
    export: str
    host: str = ""
    port: int = DEFAULT_PORT
    socket_path: str = ""


def is_nbd_url(text: str) -> bool:
    return text.startswith(("nbd://", "nbd+unix://"))


def parse_nbd_url(url: str) -> NbdAddress:
    """``nbd://HOST[:PORT]/EXPORT`` or ``nbd+unix:///EXPORT?socket=PATH`` (the NBD URI spec)."""
    parts = urllib.parse.urlsplit(url)
    export = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme == "nbd+unix":
        sock = query.get("socket", [""])[0]
        if not sock or parts.netloc:
            raise UsageError(
                f"{url}: an nbd+unix URL names a socket and no host; "
                "write nbd+unix:///EXPORT?socket=/path/to.sock"
            )
        return NbdAddress(url=url, export=export, socket_path=sock)
    if parts.scheme != "nbd" or not parts.hostname:
        raise UsageError(f"{url}: not an NBD URL; write nbd://HOST[:PORT]/EXPORT")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UsageError(
            f"{url}: the port is not a number from 1 to 65535; write nbd://HOST:PORT/EXPORT"
        ) from None
    return NbdAddress(url=url, export=export, host=parts.hostname, port=port)


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What OPT_GO settled: the export's size, flags and block sizes, and the meta context."""

    size: int
    tflags: int
    min_block: int
    preferred_block: int
    max_block: int
    structured: bool
    contexts: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return bool(self.tflags & w.TFLAG_READ_ONLY)

    def details(self) -> dict[str, object]:
        return {
            "server_size": self.size,
            "read_only": self.read_only,
            "block_size_min": self.min_block,
            "block_size_preferred": self.preferred_block,
            "block_size_max": self.max_block,
            "structured_replies": self.structured,
            "meta_contexts": list(self.contexts),
        }


class NbdClient:
    """One connection to one export. Requests are sent one at a time under a lock, so several
    threads may read at once; each read is split by the server's maximum block size."""

    def __init__(self, url: str, error: type[VolpackError], *, write: bool = False) -> None:
        self.addr = parse_nbd_url(url)
        self.url = url
        self._error = error
        self._lock = threading.Lock()
        self._cookie = 0
        self._meta_id = 0
        self._sock = self._connect()
        try:
            self.export = self._handshake(write)
        except BaseException:
            self._sock.close()
            raise

    # -- errors and raw I/O --------------------------------------------------------------------
    def _fail(self, problem: str) -> VolpackError:
        return self._error(f"{self.url}: {problem}")

    def _connect(self) -> socket.socket:
        a = self.addr
        s: socket.socket | None = None
        try:
            if a.socket_path:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(TIMEOUT)
                s.connect(a.socket_path)
            else:
                s = socket.create_connection((a.host, a.port), timeout=TIMEOUT)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            if s is not None:
                s.close()
            where = a.socket_path or f"{a.host}:{a.port}"
            raise self._fail(
                f"cannot connect to the NBD server at {where} ({exc.strerror or exc}); "
                "check that the server runs and the address is right"
            ) from None
        return s

    def _recv_into(self, view: memoryview, what: str) -> None:
        got = 0
        while got < len(view):
            try:
                n = self._sock.recv_into(view[got:])
            except TimeoutError:
                raise self._fail(
                    f"the server sent nothing for {TIMEOUT:.0f} s during {what}; check the server"
                ) from None
            except OSError as exc:
                raise self._fail(f"connection failed during {what} ({exc.strerror})") from None
            if n == 0:
                raise self._fail(
                    f"the server closed the connection during {what} after {got} of "
                    f"{len(view)} bytes; check the server"
                )
            got += n

    def _recv(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf), what)
        return bytes(buf)

    def _send(self, data: bytes | memoryview, what: str) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._fail(f"connection failed during {what} ({exc.strerror})") from None

    # -- handshake -----------------------------------------------------------------------------
    def _handshake(self, write: bool) -> ExportInfo:
        magic, opt_magic, hflags = struct.unpack(">QQH", self._recv(18, "the handshake"))
        if magic != w.NBDMAGIC or opt_magic != w.IHAVEOPT:
            raise self._fail("the server does not speak newstyle NBD; use an NBD server")
        if not hflags & w.FLAG_FIXED_NEWSTYLE:
            raise self._fail("the server lacks fixed newstyle negotiation; use a newer server")
        cflags = w.CLIENT_FLAG_FIXED_NEWSTYLE | (hflags & w.FLAG_NO_ZEROES)
        self._send(w.U32.pack(cflags), "the handshake")
        structured = self._option_ack(w.OPT_STRUCTURED_REPLY, b"")
        contexts: tuple[str, ...] = ()
        if structured and not write:
            contexts = self._set_meta_context(w.BASE_ALLOCATION)
        return self._go(structured, contexts)

    def _option(self, option: int, payload: bytes) -> None:
        self._send(w.OPTION_HEADER.pack(w.IHAVEOPT, option, len(payload)) + payload, "options")

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        magic, opt, rtype, length = w.OPTION_REPLY.unpack(
            self._recv(w.OPTION_REPLY.size, "option negotiation")
        )
        if magic != w.OPT_REPLY_MAGIC or opt != option:
            raise self._fail(f"the server answered option {option} with a malformed reply")
        if length > MAX_OPTION_REPLY:
            raise self._fail(
                f"option reply of {length} bytes is over the {MAX_OPTION_REPLY}-byte limit"
            )
        return rtype, self._recv(length, "option negotiation")

    def _option_ack(self, option: int, payload: bytes) -> bool:
        self._option(option, payload)
        rtype, _ = self._option_reply(option)
        return rtype == w.REP_ACK

    def _set_meta_context(self, name: str) -> tuple[str, ...]:
        export = self.addr.export.encode()
        query = name.encode()
        payload = w.U32.pack(len(export)) + export + w.U32.pack(1) + w.U32.pack(len(query)) + query
        self._option(w.OPT_SET_META_CONTEXT, payload)
        found: list[str] = []
        while True:
            rtype, data = self._option_reply(w.OPT_SET_META_CONTEXT)
            if rtype == w.REP_META_CONTEXT and len(data) >= 4:
                ctx = data[4:].decode("utf-8", "replace")
                if ctx == name:
                    self._meta_id = int(w.U32.unpack(data[:4])[0])
                    found.append(ctx)
            elif rtype == w.REP_ACK:
                return tuple(found)
            elif rtype & (1 << 31):
                return ()  # no meta contexts: every byte is data
            else:
                raise self._fail(f"unexpected reply {rtype} to SET_META_CONTEXT")

    def _go(self, structured: bool, contexts: tuple[str, ...]) -> ExportInfo:
        export = self.addr.export.encode()
        payload = w.U32.pack(len(export)) + export + w.U16.pack(1) + w.U16.pack(w.INFO_BLOCK_SIZE)
        self._option(w.OPT_GO, payload)
        size = tflags = -1
        blocks = (1, 4096, DEFAULT_MAX_BLOCK)
        while True:
            rtype, data = self._option_reply(w.OPT_GO)
            if rtype == w.REP_ACK:
                break
            if rtype == w.REP_INFO and len(data) >= 2:
                kind = w.U16.unpack(data[:2])[0]
                if kind == w.INFO_EXPORT and len(data) == 12:
                    size, tflags = struct.unpack(">QH", data[2:])
                elif kind == w.INFO_BLOCK_SIZE and len(data) == 14:
                    blocks = struct.unpack(">III", data[2:])
                continue
            if rtype == w.REP_ERR_UNKNOWN:
                raise self._fail(
                    f"the server has no export named {self.addr.export!r}; "
                    "check the export name (nbdinfo --list shows them)"
                )
            if rtype & (1 << 31):
                text = data.decode("utf-8", "replace")[:200]
                raise self._fail(
                    f"the server refused the export (NBD error 0x{rtype:08x}{': ' + text if text else ''})"
                )
        if size < 0:
            raise self._fail("the server finished OPT_GO without telling the export size")
        mn, pref, mx = blocks
        if not (mn >= 1 and mn & (mn - 1) == 0 and mx >= mn and pref >= mn):
            raise self._fail(f"the server's block sizes {mn}/{pref}/{mx} are not consistent")
        return ExportInfo(size, tflags, mn, pref, min(mx, DEFAULT_MAX_BLOCK), structured, contexts)

    # -- transmission --------------------------------------------------------------------------
    def _request(self, cmd: int, offset: int, length: int, flags: int = 0) -> int:
        self._cookie += 1
        self._send(
            w.REQUEST.pack(w.REQUEST_MAGIC, flags, cmd, self._cookie, offset, length),
            "a request",
        )
        return self._cookie

    def _reply_header(self, cookie: int, what: str) -> tuple[bool, int, int, int, int]:
        """(structured, flags or error, type, length, 0) of the next reply to ``cookie``."""
        head = self._recv(4, what)
        magic = w.U32.unpack(head)[0]
        if magic == w.SIMPLE_REPLY_MAGIC:
            error, got = struct.unpack(">IQ", self._recv(12, what))
            self._check_cookie(got, cookie)
            return False, error, 0, 0, 0
        if magic == w.STRUCTURED_REPLY_MAGIC and self.export.structured:
            flags, rtype, got, length = struct.unpack(">HHQI", self._recv(16, what))
            self._check_cookie(got, cookie)
            return True, flags, rtype, length, 0
        raise self._fail(f"reply magic 0x{magic:08x} is not an NBD reply during {what}")

    def _check_cookie(self, got: int, want: int) -> None:
        if got != want:
            raise self._fail(f"reply for request {got} while waiting for request {want}")

    def _error_chunk(self, length: int, what: str) -> VolpackError:
        if length < 6 or length > MAX_OPTION_REPLY:
            return self._fail(f"error reply of {length} bytes is malformed during {what}")
        body = self._recv(length, what)
        code, mlen = struct.unpack(">IH", body[:6])
        text = body[6 : 6 + mlen].decode("utf-8", "replace")
        return self._fail(f"the server failed {what} (error {code}{': ' + text if text else ''})")

    def _simple_error(self, code: int, what: str) -> VolpackError:
        return self._fail(f"the server failed {what} (error {code})")

    def pread(self, buf: memoryview, offset: int) -> None:
        """Fill ``buf`` with the export's bytes at ``offset``, in requests of at most max_block."""
        step = self.export.max_block
        with self._lock:
            for pos in range(0, len(buf), step):
                part = buf[pos : pos + step]
                self._read_one(part, offset + pos)

    def _read_one(self, buf: memoryview, offset: int) -> None:
        length = len(buf)
        what = f"a read of {length} bytes at offset {offset}"
        cookie = self._request(w.CMD_READ, offset, length)
        structured, flags, rtype, clen, _ = self._reply_header(cookie, what)
        if not structured:
            if flags:
                raise self._simple_error(flags, what)
            self._recv_into(buf, what)
            return
        covered = 0
        while True:
            if rtype == w.REPLY_TYPE_OFFSET_DATA:
                if clen < 8:
                    raise self._fail(f"a data chunk of {clen} bytes is too short during {what}")
                at = w.U64.unpack(self._recv(8, what))[0] - offset
                n = clen - 8
                if at < 0 or at + n > length:
                    raise self._fail(
                        f"the server sent {n} bytes at offset {offset + at}, outside {what}"
                    )
                self._recv_into(buf[at : at + n], what)
                covered += n
            elif rtype == w.REPLY_TYPE_OFFSET_HOLE:
                if clen != 12:
                    raise self._fail(f"a hole chunk of {clen} bytes is malformed during {what}")
                hoff, n = struct.unpack(">QI", self._recv(12, what))
                at = hoff - offset
                if at < 0 or at + n > length:
                    raise self._fail(f"the server sent a hole at {hoff}+{n}, outside {what}")
                buf[at : at + n] = bytes(n)
                covered += n
            elif rtype in (w.REPLY_TYPE_ERROR, w.REPLY_TYPE_ERROR_OFFSET):
                err = self._error_chunk(clen, what)
                self._drain(cookie, flags, what)
                raise err
            elif rtype == w.REPLY_TYPE_NONE:
                if clen:
                    raise self._fail(f"an empty chunk carries {clen} bytes during {what}")
            else:
                raise self._fail(f"unexpected reply chunk type {rtype} during {what}")
            if flags & w.REPLY_FLAG_DONE:
                break
            _, flags, rtype, clen, _ = self._reply_header(cookie, what)
        if covered != length:
            raise self._fail(f"the server answered {covered} of the {length} bytes of {what}")

    def _drain(self, cookie: int, flags: int, what: str) -> None:
        """Read the rest of a structured reply after an error chunk, so the stream stays in step."""
        while not flags & w.REPLY_FLAG_DONE:
            _, flags, _rtype, clen, _ = self._reply_header(cookie, what)
            if clen > DEFAULT_MAX_BLOCK + 8:
                raise self._fail(f"a reply chunk of {clen} bytes is oversize during {what}")
            self._recv(clen, what)

    # -- writing (restore targets) -------------------------------------------------------------
    def _command(
        self, cmd: int, offset: int, length: int, what: str, payload: memoryview | None = None
    ) -> None:
        """Send one command (with ``payload`` for WRITE) and wait for its reply: a simple reply,
        or structured chunks that may only be NONE or an error."""
        cookie = self._request(cmd, offset, length)
        if payload is not None:
            self._send(payload, what)
        while True:
            structured, flags, rtype, clen, _ = self._reply_header(cookie, what)
            if not structured:
                if flags:
                    raise self._simple_error(flags, what)
                return
            if rtype in (w.REPLY_TYPE_ERROR, w.REPLY_TYPE_ERROR_OFFSET):
                err = self._error_chunk(clen, what)
                self._drain(cookie, flags, what)
                raise err
            if rtype != w.REPLY_TYPE_NONE or clen:
                raise self._fail(f"unexpected reply chunk type {rtype} ({clen} bytes) to {what}")
            if flags & w.REPLY_FLAG_DONE:
                return

    def pwrite(self, data: memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` in requests of at most max_block."""
        step = self.export.max_block
        with self._lock:
            for pos in range(0, len(data), step):
                part = data[pos : pos + step]
                what = f"a write of {len(part)} bytes at offset {offset + pos}"
                self._command(w.CMD_WRITE, offset + pos, len(part), what, part)

    def zero(self, start: int, end: int) -> None:
        """Make ``[start, end)`` read as zeros: WRITE_ZEROES where the server offers it, else
        writes of zeros."""
        if end <= start:
            return
        if not self.export.tflags & w.TFLAG_SEND_WRITE_ZEROES:
            zeros = memoryview(bytes(min(self.export.max_block, end - start)))
            for pos in range(start, end, len(zeros)):
                self.pwrite(zeros[: min(len(zeros), end - pos)], pos)
            return
        with self._lock:
            for pos in range(start, end, STATUS_CHUNK):
                n = min(STATUS_CHUNK, end - pos)
                self._command(w.CMD_WRITE_ZEROES, pos, n, f"zeroing {n} bytes at offset {pos}")

    def flush(self) -> None:
        """FLUSH when the server asks for it; a server without the flag writes through."""
        if self.export.tflags & w.TFLAG_SEND_FLUSH:
            with self._lock:
                self._command(w.CMD_FLUSH, 0, 0, "the final flush")

    def block_status(self) -> list[tuple[int, int, int]] | None:
        """``(offset, length, flags)`` runs of base:allocation over the whole export, or None when
        the server offers no such context."""
        if w.BASE_ALLOCATION not in self.export.contexts:
            return None
        size = self.export.size
        runs: list[tuple[int, int, int]] = []
        pos = 0
        with self._lock:
            while pos < size:
                ask = min(size - pos, STATUS_CHUNK)
                got = self._status_one(pos, ask)
                for length, flags in got:
                    length = min(length, size - pos)
                    if length <= 0:
                        break
                    runs.append((pos, length, flags))
                    pos += length
        return runs

    def _status_one(self, offset: int, length: int) -> list[tuple[int, int]]:
        what = f"block status of {length} bytes at offset {offset}"
        cookie = self._request(w.CMD_BLOCK_STATUS, offset, length)
        out: list[tuple[int, int]] = []
        while True:
            structured, flags, rtype, clen, _ = self._reply_header(cookie, what)
            if not structured:
                raise (
                    self._simple_error(flags, what)
                    if flags
                    else self._fail(f"a simple reply to {what}")
                )
            if rtype == w.REPLY_TYPE_BLOCK_STATUS:
                if clen < 12 or (clen - 4) % 8 or clen > MAX_OPTION_REPLY * 16:
                    raise self._fail(f"a block-status chunk of {clen} bytes is malformed")
                body = self._recv(clen, what)
                if w.U32.unpack(body[:4])[0] == self._meta_id:
                    out += list(struct.iter_unpack(">II", body[4:]))
            elif rtype in (w.REPLY_TYPE_ERROR, w.REPLY_TYPE_ERROR_OFFSET):
                err = self._error_chunk(clen, what)
                self._drain(cookie, flags, what)
                raise err
            elif rtype == w.REPLY_TYPE_NONE and clen == 0:
                pass
            else:
                raise self._fail(f"unexpected reply chunk type {rtype} during {what}")
            if flags & w.REPLY_FLAG_DONE:
                break
        if not out or out[0][0] == 0:
            raise self._fail(f"the server described no bytes in {what}")
        return out

    def close(self) -> None:
        """Say goodbye with NBD_CMD_DISC (no reply), then close the socket."""
        if self._sock.fileno() < 0:
            return
        # Another thread may be stuck in a request to a dead server (after SIGINT): do not wait
        # for it longer than a moment; closing the socket ends its wait too.
        locked = self._lock.acquire(timeout=5)
        try:
            if locked:
                self._request(w.CMD_DISC, 0, 0)
            self._sock.shutdown(socket.SHUT_RDWR)
        except (OSError, VolpackError):
            pass  # the server already went away; nothing left to tell it
        finally:
            self._sock.close()
            if locked:
                self._lock.release()
