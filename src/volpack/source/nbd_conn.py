"""One NBD connection up to transmission: the address, the socket, and the fixed newstyle handshake.

Parses NBD URLs, connects, negotiates structured replies, meta contexts (``base:allocation`` and
the server's ``qemu:dirty-bitmap:*``) and OPT_GO, and hands the socket to the transmission code
(source/nbd_client.py). Speaks volpack.nbdwire; checks every length the server sends; raises the
error family its caller gives. Knows no volumes and no archives.
"""

from __future__ import annotations

import socket
import struct
import urllib.parse
from dataclasses import dataclass

from volpack import nbdwire as w
from volpack.errors import UsageError, VolpackError

DEFAULT_PORT = 10809
# When the server states no maximum block size the protocol says 32 MiB is safe.
DEFAULT_MAX_BLOCK = 32 * 1024 * 1024
MAX_OPTION_REPLY = 64 * 1024
MAX_CONTEXTS = 64  # meta contexts kept from one negotiation (a server may list many bitmaps)
TIMEOUT = 60.0  # seconds a server may stay silent before the operation fails
# Send buffer asked for on a Unix socket (the kernel caps it at net.core.wmem_max). With the
# default ~208 KiB a restore and the server hand off every 208 KiB of a 2 MiB write, each waking
# the other; qemu-nbd spent ≈30 % less CPU taking a restore with 4 MiB. TCP tunes its own.
UNIX_SNDBUF = 4 << 20


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
    """What OPT_GO settled: the export's size, flags and block sizes, and the meta contexts
    (name → the id the server tags its block-status chunks with)."""

    size: int
    tflags: int
    min_block: int
    preferred_block: int
    max_block: int
    structured: bool
    context_ids: tuple[tuple[str, int], ...]

    @property
    def read_only(self) -> bool:
        return bool(self.tflags & w.TFLAG_READ_ONLY)

    @property
    def contexts(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.context_ids)

    def context_id(self, name: str) -> int | None:
        return next((i for n, i in self.context_ids if n == name), None)

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


class Conn:
    """A connected socket with exact reads and writes, each failure one line in ``error``."""

    def __init__(self, addr: NbdAddress, error: type[VolpackError]) -> None:
        self.addr = addr
        self.url = addr.url
        self.error = error
        self.sock = self._connect()

    def fail(self, problem: str) -> VolpackError:
        return self.error(f"{self.url}: {problem}")

    def _connect(self) -> socket.socket:
        a = self.addr
        s: socket.socket | None = None
        try:
            if a.socket_path:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)
                s.settimeout(TIMEOUT)
                s.connect(a.socket_path)
            else:
                s = socket.create_connection((a.host, a.port), timeout=TIMEOUT)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException as exc:
            # Any interruption (SIGINT arrives while connect waits) must not leak the socket.
            if s is not None:
                s.close()
            if not isinstance(exc, OSError):
                raise
            where = a.socket_path or f"{a.host}:{a.port}"
            raise self.fail(
                f"cannot connect to the NBD server at {where} ({exc.strerror or exc}); "
                "check that the server runs and the address is right"
            ) from None
        return s

    def recv_into(self, view: memoryview, what: str) -> None:
        got = 0
        while got < len(view):
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                raise self.fail(
                    f"the server sent nothing for {TIMEOUT:.0f} s during {what}; check the server"
                ) from None
            except OSError as exc:
                raise self.fail(f"connection failed during {what} ({exc.strerror})") from None
            if n == 0:
                raise self.fail(
                    f"the server closed the connection during {what} after {got} of "
                    f"{len(view)} bytes; check the server"
                )
            got += n

    def recv(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        self.recv_into(memoryview(buf), what)
        return bytes(buf)

    def send(self, data: bytes | memoryview, what: str) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self.fail(f"connection failed during {what} ({exc.strerror})") from None


def handshake(conn: Conn, write: bool) -> ExportInfo:
    """Negotiate up to transmission. A reading client asks for ``base:allocation`` and every
    ``qemu:dirty-bitmap:NAME`` the server lists for the export; a writing one for none."""
    magic, opt_magic, hflags = struct.unpack(">QQH", conn.recv(18, "the handshake"))
    if magic != w.NBDMAGIC or opt_magic != w.IHAVEOPT:
        raise conn.fail("the server does not speak newstyle NBD; use an NBD server")
    if not hflags & w.FLAG_FIXED_NEWSTYLE:
        raise conn.fail("the server lacks fixed newstyle negotiation; use a newer server")
    cflags = w.CLIENT_FLAG_FIXED_NEWSTYLE | (hflags & w.FLAG_NO_ZEROES)
    conn.send(w.U32.pack(cflags), "the handshake")
    structured = _option_ack(conn, w.OPT_STRUCTURED_REPLY, b"")
    contexts: tuple[tuple[str, int], ...] = ()
    if structured and not write:
        # Contexts can only be chosen before OPT_GO, and a server may take one client only, so
        # every dirty bitmap the server lists is asked for now: no second connection later.
        listed = _meta_contexts(conn, w.OPT_LIST_META_CONTEXT, (w.QEMU_DIRTY_BITMAP,))
        bitmaps = tuple(n for n, _ in listed if n.startswith(w.QEMU_DIRTY_BITMAP))
        contexts = _meta_contexts(conn, w.OPT_SET_META_CONTEXT, (w.BASE_ALLOCATION, *bitmaps))
    return _go(conn, structured, contexts)


def _option(conn: Conn, option: int, payload: bytes) -> None:
    conn.send(w.OPTION_HEADER.pack(w.IHAVEOPT, option, len(payload)) + payload, "options")


def _option_reply(conn: Conn, option: int) -> tuple[int, bytes]:
    magic, opt, rtype, length = w.OPTION_REPLY.unpack(
        conn.recv(w.OPTION_REPLY.size, "option negotiation")
    )
    if magic != w.OPT_REPLY_MAGIC or opt != option:
        raise conn.fail(f"the server answered option {option} with a malformed reply")
    if length > MAX_OPTION_REPLY:
        raise conn.fail(f"option reply of {length} bytes is over the {MAX_OPTION_REPLY}-byte limit")
    return rtype, conn.recv(length, "option negotiation")


def _option_ack(conn: Conn, option: int, payload: bytes) -> bool:
    _option(conn, option, payload)
    rtype, _ = _option_reply(conn, option)
    return rtype == w.REP_ACK


def _meta_contexts(
    conn: Conn, option: int, queries: tuple[str, ...]
) -> tuple[tuple[str, int], ...]:
    """LIST or SET meta contexts: the (name, id) pairs the server replies with; none when it
    refuses the option (an old server: every byte is then data)."""
    export = conn.addr.export.encode()
    payload = w.U32.pack(len(export)) + export + w.U32.pack(len(queries))
    for q in queries:
        payload += w.U32.pack(len(q.encode())) + q.encode()
    _option(conn, option, payload)
    found: list[tuple[str, int]] = []
    while True:
        rtype, data = _option_reply(conn, option)
        if rtype == w.REP_META_CONTEXT and len(data) >= 4:
            name = data[4:].decode("utf-8", "replace")
            if len(found) < MAX_CONTEXTS and (option == w.OPT_LIST_META_CONTEXT or name in queries):
                found.append((name, int(w.U32.unpack(data[:4])[0])))
        elif rtype == w.REP_ACK:
            return tuple(found)
        elif rtype & (1 << 31):
            return ()
        else:
            raise conn.fail(f"unexpected reply {rtype} to option {option}")


def _go(conn: Conn, structured: bool, contexts: tuple[tuple[str, int], ...]) -> ExportInfo:
    export = conn.addr.export.encode()
    payload = w.U32.pack(len(export)) + export + w.U16.pack(1) + w.U16.pack(w.INFO_BLOCK_SIZE)
    _option(conn, w.OPT_GO, payload)
    size = tflags = -1
    blocks = (1, 4096, DEFAULT_MAX_BLOCK)
    while True:
        rtype, data = _option_reply(conn, w.OPT_GO)
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
            raise conn.fail(
                f"the server has no export named {conn.addr.export!r}; "
                "check the export name (nbdinfo --list shows them)"
            )
        if rtype & (1 << 31):
            text = data.decode("utf-8", "replace")[:200]
            raise conn.fail(
                f"the server refused the export (NBD error 0x{rtype:08x}{': ' + text if text else ''})"
            )
    if size < 0:
        raise conn.fail("the server finished OPT_GO without telling the export size")
    mn, pref, mx = blocks
    if not (mn >= 1 and mn & (mn - 1) == 0 and mx >= mn and pref >= mn):
        raise conn.fail(f"the server's block sizes {mn}/{pref}/{mx} are not consistent")
    return ExportInfo(size, tflags, mn, pref, min(mx, DEFAULT_MAX_BLOCK), structured, contexts)
