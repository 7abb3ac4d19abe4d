"""A small QMP client: one Unix-socket connection to a running QEMU (or qemu-storage-daemon).

Greeting, ``qmp_capabilities``, then commands one at a time, each answered by the reply carrying
its id; asynchronous events in between are skipped (state is polled instead). Knows no block
semantics (that is source/fleece.py); every failure is one SourceError line naming the socket.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from volpack.errors import SourceError

GREETING_TIMEOUT = 10.0  # a monitor held by another client (libvirt, a running backup) is silent
COMMAND_TIMEOUT = 120.0
MAX_MESSAGE = 16 << 20


class QmpError(SourceError):
    """QEMU answered a command with an error (``klass`` is its error class)."""

    def __init__(self, message: str, klass: str) -> None:
        super().__init__(message)
        self.klass = klass


class Qmp:
    """One QMP monitor connection; safe to share between threads (commands are serialised)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._next_id = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(GREETING_TIMEOUT)
            try:
                self._sock.connect(path)
            except OSError as exc:
                raise SourceError(
                    f"qmp:{path}: cannot connect to the QMP monitor ({exc.strerror or exc}); "
                    "check that QEMU runs with -qmp unix:PATH,server=on,wait=off"
                ) from None
            self._file = self._sock.makefile("rb")
            try:
                greeting = self._read()
            except SourceError:
                raise SourceError(
                    f"qmp:{path}: the QMP monitor sent no greeting in {GREETING_TIMEOUT:.0f} s; "
                    "another client (libvirt, a backup still running) holds it"
                ) from None
            if "QMP" not in greeting:
                raise SourceError(f"qmp:{path}: not a QMP monitor (no greeting)")
            self._sock.settimeout(COMMAND_TIMEOUT)
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def _read(self) -> dict[str, Any]:
        try:
            line = self._file.readline(MAX_MESSAGE)
        except OSError as exc:
            raise SourceError(
                f"qmp:{self.path}: the QMP connection failed ({exc.strerror or 'timed out'})"
            ) from None
        if not line:
            raise SourceError(f"qmp:{self.path}: QEMU closed the QMP connection; is it running?")
        try:
            msg = json.loads(line)
        except ValueError:
            raise SourceError(f"qmp:{self.path}: QEMU sent a line that is not JSON") from None
        if not isinstance(msg, dict):
            raise SourceError(f"qmp:{self.path}: QEMU sent a message that is not an object")
        return msg

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command``; its ``return`` value, or QmpError with QEMU's description."""
        with self._lock:
            self._next_id += 1
            ident = f"volpack-{self._next_id}"
            msg: dict[str, Any] = {"execute": command, "id": ident}
            if arguments:
                msg["arguments"] = arguments
            try:
                self._sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError as exc:
                raise SourceError(
                    f"qmp:{self.path}: the QMP connection failed ({exc.strerror})"
                ) from None
            while True:
                reply = self._read()
                if "event" in reply or reply.get("id") != ident:
                    continue  # an event, or an answer to a client before us on this monitor
                if "error" in reply:
                    err = reply["error"]
                    raise QmpError(
                        f"qmp:{self.path}: {command} failed: {err.get('desc', err)}",
                        str(err.get("class", "")),
                    )
                return reply.get("return")

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
        self._sock.close()
