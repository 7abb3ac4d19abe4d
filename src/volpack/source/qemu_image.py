"""QEMU image formats volpack has no reader for (vmdk, vdi, vhdx, vpc, qed), read over NBD.

A file whose first bytes carry one of these formats' magic is named by ``qemu-img info``, then
served read-only by a private ``qemu-storage-daemon`` (``qemu-nbd`` where the daemon is not
installed) on a Unix socket in a private temporary directory and read as an NBD source. volpack
starts that server, stops it by PID on every exit path, and has the kernel stop it if volpack
itself dies. The pure-Python qcow2 reader stays the reader of qcow2; raw stays raw.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable

from volpack.errors import SourceError
from volpack.extents import Extents
from volpack.source.base import PhysicalMap, SourceInfo
from volpack.source.nbd import NbdSource
from volpack.source.probe import QEMU_FORMATS

START_TIMEOUT = 30.0


SERVERS = ("qemu-storage-daemon", "qemu-nbd")
_PACKAGE = {"qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils", SERVERS[0]: "qemu-system-common"}
_PR_SET_PDEATHSIG = 1


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SourceError(
            f"{name} is not installed; reading QEMU image formats needs {_PACKAGE[name]}"
        )
    return found


def default_server() -> str:
    """qemu-storage-daemon when installed (package qemu-system-common), else qemu-nbd."""
    return SERVERS[0] if shutil.which(SERVERS[0]) else SERVERS[1]


def _die_with_parent() -> Callable[[], None]:
    """A preexec function: the child gets SIGTERM when volpack dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so no private server outlives the backup that started it. The signal
    follows the *thread* that started the child: open the source from a thread that outlives it
    (the CLI opens sources in the main thread)."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: only prctl runs in the child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # volpack died before prctl took effect
            os._exit(1)

    return preexec


def server_argv(server: str, path: str, fmt: str, sock: str) -> list[str]:
    """The read-only private server of ``path`` as ``fmt`` on the Unix socket ``sock``."""
    if server == "qemu-nbd":
        # No -t: qemu-nbd also exits by itself when its one client disconnects.
        return [_tool("qemu-nbd"), "-r", "-f", fmt, "-k", sock, "--", path]
    # JSON options: a path with a comma needs no escaping. One connection is all volpack uses.
    node = {"driver": "file", "node-name": "file0", "filename": path, "read-only": True}
    fmt_node = {"driver": fmt, "node-name": "disk", "file": "file0", "read-only": True}
    nbd = {"addr": {"type": "unix", "path": sock}, "max-connections": 1}
    export = {"type": "nbd", "id": "disk", "node-name": "disk", "name": "", "writable": False}
    return [
        _tool(server),
        "--blockdev",
        json.dumps(node),
        "--blockdev",
        json.dumps(fmt_node),
        "--nbd-server",
        json.dumps(nbd),
        "--export",
        json.dumps(export),
    ]


def qemu_format(path: str) -> str:
    """The format ``qemu-img info`` names for ``path``."""
    r = subprocess.run(
        [_tool("qemu-img"), "info", "--output=json", path],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise SourceError(f"{path}: qemu-img cannot read the image ({last}); check the image")
    try:
        return str(json.loads(r.stdout)["format"])
    except (ValueError, KeyError, TypeError):
        raise SourceError(f"{path}: qemu-img info gave no format; check the image") from None


class QemuImageSource:
    """An image in a QEMU format, read through a private read-only NBD server (``server``:
    qemu-storage-daemon or qemu-nbd)."""

    def __init__(self, path: str, fmt: str, server: str | None = None) -> None:
        self.path = path
        self.fmt = fmt
        self._name = server or default_server()
        self._dir = tempfile.mkdtemp(prefix="volpack-qemu-nbd-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._nbd: NbdSource | None = None
        try:
            sock = os.path.join(self._dir, "nbd.sock")
            self._start(sock)
            url = f"nbd+unix:///?socket={urllib.parse.quote(sock)}"
            self._nbd = NbdSource(url)
        except BaseException:
            self.close()
            raise

    def _start(self, sock: str) -> None:
        argv = server_argv(self._name, os.path.abspath(self.path), self.fmt, sock)
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent(),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(sock):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                last = (err.strip().splitlines() or ["no message"])[-1]
                raise SourceError(
                    f"{self.path}: {self._name} could not serve the {self.fmt} image ({last})"
                )
            if time.monotonic() > deadline:
                raise SourceError(
                    f"{self.path}: {self._name} did not start in {START_TIMEOUT:.0f} s; "
                    "check the image"
                )
            time.sleep(0.01)

    @property
    def _src(self) -> NbdSource:
        assert self._nbd is not None
        return self._nbd

    @property
    def size(self) -> int:
        return self._src.size

    @property
    def info(self) -> SourceInfo:
        details: dict[str, object] = {"format": self.fmt, "reader": self._name}
        details["block_size_max"] = self._src.info.details["block_size_max"]
        return SourceInfo(self.fmt, os.path.abspath(self.path), details)

    def identity(self) -> tuple[object, ...]:
        st = os.stat(self.path)
        return (self._src.size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def data_extents(self) -> Extents:
        return self._src.data_extents()

    def physical_map(self) -> PhysicalMap:
        # Where the format keeps each cluster in the file is qemu's knowledge, not told over NBD.
        return PhysicalMap.unknown(self._src.size)

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._src.read_into(offset, buf)

    def close(self) -> None:
        """Disconnect, stop the server by its PID, remove the private directory."""
        try:
            if self._nbd is not None:
                self._nbd.close()
                self._nbd = None
        finally:
            proc, self._proc = self._proc, None
            if proc is not None:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                if proc.stderr is not None:
                    proc.stderr.close()
            shutil.rmtree(self._dir, ignore_errors=True)


def open_qemu_image(path: str) -> QemuImageSource | None:
    """The image through a private NBD server, or None when qemu-img names it raw or qcow2
    (volpack's own readers take those)."""
    fmt = qemu_format(path)
    if fmt not in QEMU_FORMATS:
        return None
    return QemuImageSource(path, fmt)
