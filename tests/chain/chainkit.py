"""Helpers for the chain tests: the volpack CLI as a real subprocess, volume edits with real
system calls and tools (pwrite, ``fallocate --punch-hole``, truncate), and content checks."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

KiB, MiB = 1 << 10, 1 << 20


def vp(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """``python3 -m volpack ARGS`` (text output; ``stdin`` bytes piped in when given)."""
    if stdin is None:
        return subprocess.run(
            [sys.executable, "-m", "volpack", *args], capture_output=True, text=True, timeout=300
        )
    r = subprocess.run(
        [sys.executable, "-m", "volpack", *args], input=stdin, capture_output=True, timeout=300
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    )


def ok(*args: str) -> subprocess.CompletedProcess:
    r = vp(*args)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r


def sha(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pwrite(path: str | os.PathLike, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def punch(path: str | os.PathLike, offset: int, length: int) -> None:
    """Discard ``[offset, offset + length)`` the way a trim reaches an image file."""
    subprocess.run(
        ["fallocate", "--punch-hole", "--offset", str(offset), "--length", str(length), path],
        check=True,
    )


def make_volume(path: str | os.PathLike, size: int, seed: int) -> None:
    """A sparse volume of ``size`` bytes with random data at the start, middle and end."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
    for offset in (0, size // 3 + 4321, size - 70 * KiB):
        pwrite(path, offset, rng.randbytes(min(300 * KiB, size - offset)))


def generation_edits(path: str | os.PathLike, seed: int) -> None:
    """One deterministic day of changes: an unaligned write, a zero-write, a discard."""
    rng = random.Random(seed)
    size = os.path.getsize(path)
    pwrite(path, rng.randrange(size - 200 * KiB), rng.randbytes(rng.randrange(1, 200 * KiB)))
    pwrite(path, rng.randrange(size - 100 * KiB), bytes(rng.randrange(1, 100 * KiB)))
    punch(path, rng.randrange(size - MiB) // 4096 * 4096, 512 * KiB)


def backup(volume: str | os.PathLike, archive: str | os.PathLike, base: str | None = None) -> None:
    """A setup backup in this process (the library, not the CLI: cheaper where the CLI is not
    what a test is about): a full in 64 KiB blocks (small blocks keep these tests fast), or an incremental on ``base``."""
    import volpack

    volpack.backup(
        str(volume),
        str(archive),
        block_size=None if base else 64 * KiB,
        base=base,
        force=True,
        allow_mounted=True,
        threads=1,
    )
