"""Real NBD servers for the client tests: qemu-nbd and nbdkit on private Unix sockets.

Each server runs in the test's temporary directory and is stopped by its PID whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")


def url(sock: Path, export: str = "") -> str:
    return f"nbd+unix:///{export}?socket={sock}"


@contextlib.contextmanager
def server(argv: list[str], sock: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (which listens on ``sock``) until the block ends, then stop it by PID."""
    need(argv[0])
    sock.unlink(missing_ok=True)  # a stale socket would look like a ready server
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"{argv[0]} exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"{argv[0]} did not create {sock} in 20 s")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def qemu_nbd(
    image: Path, sock: Path, fmt: str, *, writable: bool = False, export: str = "", bitmap: str = ""
):
    argv = ["qemu-nbd", "-t", "-e", "8", "-k", str(sock), "-f", fmt]
    if not writable:
        argv.insert(1, "-r")
    if export:
        argv += ["-x", export]
    if bitmap:
        argv += ["-B", bitmap]
    return server([*argv, str(image)], sock)


def nbdkit(sock: Path, *args: str):
    return server(["nbdkit", "-f", "-U", str(sock), *args], sock)
