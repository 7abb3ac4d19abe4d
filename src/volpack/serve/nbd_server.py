"""The NBD server: listens on TCP or a Unix socket, one thread per client, read-only exports.

It owns sockets and threads only; the wire protocol is in nbd_proto/nbd_conn and the bytes come
from each export's volume. ``shutdown()`` is safe from a signal handler: it only sets a flag and
wakes the accept loop, which then stops accepting and lets in-flight requests finish.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Sequence

from volpack.errors import UsageError
from volpack.serve import nbd_proto as p
from volpack.serve.budget import ReplyBudget
from volpack.serve.export import Export
from volpack.serve.nbd_conn import Closed, Connection, Dropped

log = logging.getLogger("volpack")

DEFAULT_PORT = 10809
DEFAULT_CLIENT_TIMEOUT = 30.0
DEFAULT_REPLY_BUDGET = 256 << 20


class NbdServer:
    """Serve ``exports`` on ``host:port`` or on the Unix socket ``socket_path`` (not both).

    The "" export name reaches the only export when there is exactly one. ``port=0`` picks a free
    port (see ``address``). Clients that do not finish the handshake within ``handshake_timeout``
    seconds are dropped, and so are clients that take no reply bytes for ``client_timeout``
    seconds; beyond ``max_clients`` new connections are closed at once. Replies being read or
    waiting for their client hold at most ``reply_budget`` bytes across all connections (see
    docs/serve.md, "Memory"); a connection waits for its share.
    """

    def __init__(
        self,
        exports: Sequence[Export],
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        socket_path: str | None = None,
        handshake_timeout: float = 10.0,
        max_clients: int = 512,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
        reply_budget: int = DEFAULT_REPLY_BUDGET,
    ) -> None:
        if not exports:
            raise UsageError("nbd server: no archive to serve; name at least one")
        by_name: dict[str, Export] = {}
        for export in exports:
            if export.name in by_name:
                raise UsageError(
                    f"nbd export name {export.name!r} is used twice; give each archive its own --name"
                )
            if (
                not export.name
                or len(export.name.encode("utf-8")) > p.MAX_STRING
                or "\0" in export.name
            ):
                raise UsageError(f"nbd export name {export.name!r}: use 1..4096 bytes without NUL")
            by_name[export.name] = export
        self.exports = by_name
        self.default = exports[0] if len(exports) == 1 else None
        self.handshake_timeout = handshake_timeout
        self.max_clients = max_clients
        self.client_timeout = client_timeout
        self.budget = ReplyBudget(reply_budget)
        self.socket_path = socket_path
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[Connection, threading.Thread] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        try:
            self._listener = self._unix(socket_path) if socket_path else self._tcp(host, port)
        except BaseException:
            # No server comes of it, so nobody would ever close the wake-up pair.
            self._wake_r.close()
            self._wake_w.close()
            raise

    # -- listening -----------------------------------------------------------------------------
    @staticmethod
    def _tcp(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            return socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            hint = (
                "choose another with --listen HOST:PORT"
                if exc.errno == errno.EADDRINUSE
                else "check --listen"
            )
            raise UsageError(
                f"nbd server: cannot listen on {host}:{port}: {exc.strerror}; {hint}"
            ) from None

    @staticmethod
    def _unix(path: str) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise UsageError(
                    f"{path}: exists and is not a socket; choose another --socket path"
                )
            # A socket file nobody answers on is left over from a server that died: reuse it.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)
            else:
                raise UsageError(
                    f"{path}: another server is listening there; choose another --socket"
                )
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise UsageError(f"{path}: cannot listen on this Unix socket: {exc.strerror}") from None
        return sock

    @property
    def address(self) -> tuple[str, int] | str:
        """(host, port) for TCP, the socket path for Unix."""
        if self.socket_path:
            return self.socket_path
        host, port = self._listener.getsockname()[:2]
        return host, port

    def urls(self) -> list[str]:
        """One NBD URI per export (RFC-style ``nbd://`` / ``nbd+unix://`` as libnbd parses them)."""
        out = []
        for name in self.exports:
            quoted = urllib.parse.quote(name, safe="")
            if self.socket_path:
                sock = urllib.parse.quote(self.socket_path, safe="/")
                out.append(f"nbd+unix:///{quoted}?socket={sock}")
            else:
                host, port = self._listener.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                out.append(f"nbd://{shown}:{port}/{quoted}")
        return out

    # -- running -------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept clients until ``shutdown()``; then stop them and return."""
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._listener and not self._stopping.is_set():
                        self._accept()
        finally:
            sel.close()
            self._drop_backlog()
            self._stop_clients()

    def _drop_backlog(self) -> None:
        """Close connections still queued in the listen backlog, so no client waits forever."""
        self._listener.setblocking(False)
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.close()

    def shutdown(self) -> None:
        """Ask the server to stop (safe from signal handlers and other threads)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        self.shutdown()
        self._stop_clients()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        if self.socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def _accept(self) -> None:
        try:
            sock, peer = self._listener.accept()
        except OSError as exc:
            # EMFILE and friends: keep serving the clients we have.
            log.warning("nbd server: accept failed: %s", exc)
            return
        with self._lock:
            full = len(self._clients) >= self.max_clients
        if full:
            log.warning("nbd server: %d clients connected; refusing another", self.max_clients)
            sock.close()
            return
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(
            sock,
            self.exports,
            self.default,
            self.handshake_timeout,
            self._stopping.is_set,
            client_timeout=self.client_timeout,
            budget=self.budget,
        )
        thread = threading.Thread(
            target=self._run_client, args=(conn, peer), name=f"nbd-client-{peer}", daemon=True
        )
        with self._lock:
            self._clients[conn] = thread
        thread.start()

    def _run_client(self, conn: Connection, peer: object) -> None:
        log.debug("nbd: client %s connected", peer)
        try:
            conn.run()
        except Closed as exc:
            log.debug("nbd: client %s: %s", peer, exc)
        except Dropped as exc:
            log.warning("nbd: client %s dropped: %s", peer, exc)
        except p.ClientViolation as exc:
            log.info("nbd: client %s dropped: %s", peer, exc)
        except OSError as exc:
            log.debug("nbd: client %s: %s", peer, exc)
        except Exception:
            # A bug must not take the server down: drop this client, keep the traceback in the log.
            log.exception("nbd: client %s: internal error; connection closed", peer)
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._lock:
                self._clients.pop(conn, None)

    def _stop_clients(self, timeout: float = 5.0) -> None:
        with self._lock:
            clients = list(self._clients.items())
        for conn, _ in clients:
            # Clients in transmission finish their current request: we only stop reading.
            how = socket.SHUT_RD if conn.in_transmission else socket.SHUT_RDWR
            with contextlib.suppress(OSError):
                conn.sock.shutdown(how)
        deadline = time.monotonic() + timeout
        for _, thread in clients:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Whoever is still here is not reading its reply: cut it off rather than wait for the
        # client timeout.
        for conn, thread in clients:
            if thread.is_alive():
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        for _, thread in clients:
            thread.join(1.0)
