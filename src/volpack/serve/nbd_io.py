"""Socket I/O of one NBD connection: exact receives, and sends that never wait on a client forever.

A send that cannot go on keeps its buffers (zero-copy slices of cached frames) only for a short
grace, then copies what is left of that piece and lets the frames go. A client that takes nothing
from its socket for the client timeout, or is still in the handshake at its deadline, is dropped.
Knows nothing of the NBD protocol.
"""

from __future__ import annotations

import math
import select
import socket
import time

from volpack.serve.budget import Hold

_IOV_MAX = 1024
# How long a blocked send may keep its frames pinned before it copies the rest of the piece:
# a client that reads keeps up within milliseconds, so only a slow one pays for the copy.
COPY_AFTER = 0.25
_DRAIN_CHUNK = 64 * 1024

Buffer = bytes | bytearray | memoryview


class Closed(ConnectionError):
    """The client went away (EOF, reset)."""


class Dropped(ConnectionError):
    """The server hangs up on the client: it stalled, or its reply cannot be completed."""


class ClientSocket:
    """Blocking socket I/O with a handshake ``deadline`` and a ``send_timeout`` for stalls."""

    def __init__(self, sock: socket.socket, send_timeout: float) -> None:
        self.sock = sock
        self.send_timeout = send_timeout
        self.deadline: float | None = None  # set during the handshake
        self.deadline_text = ""
        self._poll = select.poll()
        self._fd = sock.fileno()
        self._poll.register(self._fd, 0)

    def _wait(self, events: int, seconds: float) -> None:
        self._poll.modify(self._fd, events)
        self._poll.poll(max(1, math.ceil(seconds * 1000)))

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Dropped(self.deadline_text)
        return left

    # -- receiving ----------------------------------------------------------------------------
    def recv_exact(self, n: int, into: bytearray | None = None) -> bytearray:
        buf = into if into is not None else bytearray(n)
        view = memoryview(buf)[:n]
        got = 0
        while got < n:
            if self.deadline is None:
                k = self.sock.recv_into(view[got:], n - got)  # idle clients may wait forever
            else:
                self._wait(select.POLLIN, self._left(self.deadline))
                try:
                    k = self.sock.recv_into(view[got:], n - got, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
            if k == 0:
                raise Closed("client closed the connection")
            got += k
        return buf

    def drain(self, n: int) -> None:
        scratch = bytearray(min(n, _DRAIN_CHUNK))
        while n:
            k = min(n, len(scratch))
            self.recv_exact(k, scratch)
            n -= k

    # -- sending ------------------------------------------------------------------------------
    def sendv(self, bufs: list[Buffer], hold: Hold | None = None) -> None:
        """Send ``bufs`` in order, emptying the list.

        The list is emptied so that once this copies a piece for a slow client nothing else keeps
        the frames it pointed into; ``hold`` (the budget reserved for them) shrinks to the copy.
        """
        views = [memoryview(b).cast("B") for b in bufs if len(b)]
        bufs.clear()
        i = 0
        started = last_progress = time.monotonic()
        pinned = hold  # the reservation for the frames the views point into, until copied
        while True:
            try:
                sent = self.sock.sendmsg(views[i : i + _IOV_MAX], (), socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            i = _advance(views, i, sent)
            if i == len(views):
                return
            now = time.monotonic()
            if sent:
                last_progress = now
            if pinned is not None and now - started >= COPY_AFTER:
                rest = b"".join(views[i:])
                views, i = [memoryview(rest)], 0
                pinned.keep(len(rest))
                pinned = None
            if self.deadline is not None:
                left = self._left(self.deadline)
            else:
                left = last_progress + self.send_timeout - now
                if left <= 0:
                    unsent = sum(len(v) for v in views[i:])
                    raise Dropped(
                        f"took no reply bytes for {self.send_timeout:g} s "
                        f"({unsent} bytes of the reply unsent)"
                    )
            if pinned is not None:
                left = min(left, started + COPY_AFTER - now)
            self._wait(select.POLLOUT, left)


def _advance(views: list[memoryview], i: int, sent: int) -> int:
    """Drop ``sent`` bytes from the front of ``views[i:]``; the index of the first unsent view."""
    while sent:
        if sent >= len(views[i]):
            sent -= len(views[i])
            i += 1
        else:
            views[i] = views[i][sent:]
            sent = 0
    return i
